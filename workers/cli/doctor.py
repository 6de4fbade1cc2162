"""`ourvidz-worker doctor`: one line per check, saying what is wrong and where to look.

Each check names what it reached (the URL, with any password hidden) and gives up within a few
seconds: a refused port fails at once, a silent one after CHECK_TIMEOUT seconds."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from shared.decode.presets import load_presets
from shared.ops.logging import redact_text
from shared.ops.settings import Settings

CHECK_TIMEOUT = 3.0  # seconds a check waits for an answer


def _check_redis(settings: Settings) -> str:
    import redis

    url = redact_text(settings.effective_redis_url)
    # No retries here (the worker's client retries for minutes): a doctor says what it found, now.
    client = redis.Redis.from_url(settings.effective_redis_url, socket_connect_timeout=CHECK_TIMEOUT,
                                  socket_timeout=CHECK_TIMEOUT, retry=None, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RuntimeError(f"cannot reach Redis at {url}: {reason}") from None
    version = client.info("server")["redis_version"]
    if tuple(int(p) for p in version.split(".")[:2]) < (6, 2):
        raise RuntimeError(f"Redis {version} lacks BLMOVE; 6.2 or newer is needed")
    return f"Redis {version} answers"


def _check_storage(settings: Settings) -> str:
    from shared.deliver.storage import make_storage

    return make_storage(settings).check()


def _check_callback(settings: Settings) -> str:
    url = settings.callback_url
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"callbacks are appended to {path.resolve()}"
    # A GET is harmless: the function answers it (405/4xx) without touching any job.
    shown = redact_text(url)
    try:
        response = httpx.get(url, timeout=CHECK_TIMEOUT)
    except httpx.ConnectError as exc:
        raise RuntimeError(f"cannot connect to {shown}: {exc or 'connection refused'}") from None
    except httpx.TimeoutException:
        raise RuntimeError(f"{shown} did not answer within {CHECK_TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        raise RuntimeError(f"{shown}: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        raise RuntimeError(f"{shown} answered 404: a wrong CALLBACK_URL (or SUPABASE_URL), or the job-callback "
                           "function is not deployed there")
    signing = "signed" if settings.job_callback_secret else "unsigned (JOB_CALLBACK_SECRET not set)"
    return f"{shown} reachable (answered {response.status_code}); callbacks {signing}"


def _check_presets(settings: Settings) -> str:
    presets = load_presets(str(settings.presets_file))
    return f"{len(presets.types)} job types from {settings.presets_file}"


def _check_gpu(_settings: Settings) -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible (fine for the sim engine; real engines will run on CPU, slowly)"
    free, total = torch.cuda.mem_get_info()
    return f"{torch.cuda.get_device_name(0)}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"


def check_pod_budgets(pod_file: str, card_gb: float | None = None) -> str:
    """Do the workers' GPU budgets (plus per-process overhead) fit the card?"""
    import tomllib

    pod = tomllib.loads(Path(pod_file).read_text())
    budgets = {name: float(w["memory_gb"]) for name, w in pod["workers"].items()}
    overhead = float(pod.get("per_process_overhead_gb", 0.5)) * len(budgets)
    if card_gb is None:
        card_gb = float(pod["gpu_memory_gb"])
        try:
            import torch

            if torch.cuda.is_available():
                card_gb = torch.cuda.get_device_properties(0).total_memory / 2**30
        except ImportError:
            pass
    needed = sum(budgets.values()) + overhead
    listing = ", ".join(f"{n} {gb:g}" for n, gb in budgets.items())
    if needed > card_gb:
        raise RuntimeError(f"budgets {listing} GB + {overhead:g} GB overhead = {needed:g} GB exceed the {card_gb:.0f} GB card")
    return f"budgets {listing} GB + {overhead:g} GB overhead = {needed:g} of {card_gb:.0f} GB"


def run_checks(settings: Settings, model: list[str] | None = None, pod: str | None = None) -> int:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("redis", lambda: _check_redis(settings)),
        ("presets", lambda: _check_presets(settings)),
        ("storage", lambda: _check_storage(settings)),
        ("callback", lambda: _check_callback(settings)),
        ("gpu", lambda: _check_gpu(settings)),
    ]
    for path in model or []:
        checks.append((f"model {path}", lambda p=path: _check_model(p)))
    if pod:
        checks.append(("gpu budgets", lambda: check_pod_budgets(pod)))
    failures = 0
    for name, check in checks:
        try:
            print(f"ok    {name}: {check()}")
        except Exception as exc:  # each check says what is wrong in one line
            failures += 1
            print(f"FAIL  {name}: {redact_text(str(exc)) or type(exc).__name__}")
    print(f"contract {settings.contract}, worker id {settings.worker_id}")
    sys.stdout.flush()
    return 1 if failures else 0


def _check_model(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_dir():
        if not (p / "model_index.json").exists() and not (p / "config.json").exists():
            raise FileNotFoundError(f"{p} has neither model_index.json nor config.json")
        return f"{p} is a model directory"
    return f"{p} is a {p.stat().st_size / 2**30:.2f} GiB file"

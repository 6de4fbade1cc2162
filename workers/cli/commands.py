"""What each `ourvidz-worker` subcommand does (the parser is in workers/cli/main.py).

A command raises `UsageError` (exit 2) or `CommandFailed` (exit 1) with one line that says what is
wrong and what to do; workers/cli/errors.py prints it. Redis being away is said the same way.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from shared.decode.presets import load_presets
from shared.ops.logging import configure_logging, route_library_logs
from shared.ops.settings import Settings
from shared.source import keys
from workers.cli.errors import CommandFailed, UsageError, redis_problem
from workers.registry import build_worker, spec_for, tiny_model_builders

# Signals that arrived before the worker existed (cli.py notes them): honoured once it runs.
EARLY_STOP: list[int] = []


def load_settings(args, progress_bars: bool = False) -> Settings:
    overrides = {"worker_id": args.worker_id} if getattr(args, "worker_id", None) else {}
    settings = Settings(**overrides)  # a bad setting raises here: one line, exit 2 (cli_errors)
    configure_logging(settings.log_level, settings.secret_values(), settings.log_format, progress_bars)
    return settings


def redis_client(settings: Settings):
    from shared.source.queue import connect

    return connect(settings.effective_redis_url)


def _terse_level() -> str:
    """For commands that print their own answer: warnings and worse, or everything at LOG_LEVEL=DEBUG."""
    return "DEBUG" if os.environ.get("LOG_LEVEL", "").strip().upper() == "DEBUG" else "WARNING"


def wait_for_redis(settings: Settings):
    """Redis, once it answers: tried now, after a third of REDIS_WAIT_SECONDS and at its end, with
    one line per retry; then the run gives up (exit 1) and its supervisor may start it again."""
    import redis

    client = redis_client(settings)
    budget = settings.redis_wait_seconds
    for attempt, wait in enumerate((budget / 3, budget * 2 / 3, None), start=1):
        try:
            client.ping()
            return client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if wait is None:
                raise CommandFailed(f"{redis_problem(exc, settings.effective_redis_url)} "
                                    f"(gave up after {budget:g} s; REDIS_WAIT_SECONDS waits longer)") from None
            print(f"ourvidz-worker run: {redis_problem(exc, settings.effective_redis_url)}; retry {attempt} of 2 "
                  f"in {wait:.0f} s", file=sys.stderr, flush=True)
            time.sleep(wait)


def _queues(arg: str | None, spec) -> tuple[str, ...] | None:
    if not arg:
        return None
    queues = tuple(q.strip() for q in arg.split(",") if q.strip())
    allowed = set(spec.queues) | (set(keys.JOB_QUEUES) if spec.name == "sim" else set())
    for queue in queues:
        if queue not in allowed and not queue.startswith("bench:"):  # bench: queues are the benchmarks' own
            raise UsageError(f"--queues {queue}: run {spec.name} serves {', '.join(sorted(allowed))}")
    return queues


def _device(args, settings: Settings, spec) -> str:
    device = args.device or settings.device
    if device.startswith("cuda") and spec.name != "sim":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} but no CUDA GPU is visible here: use --device cpu (or DEVICE=cpu)")
    return device


def cmd_run(args) -> int:
    settings = load_settings(args)
    spec = spec_for(args.engine)
    queues = _queues(args.queues, spec)
    if args.model and spec.check_model is not None:
        spec.check_model(args.model)
    engine = spec.build(args.model, settings, vars(args))
    device = _device(args, settings, spec)
    route_library_logs(load=spec.libraries)
    client = wait_for_redis(settings)
    worker = build_worker(engine, settings, redis_client=client, queues=queues, device=device,
                          max_jobs=args.max_jobs, health_port=args.health_port)
    if EARLY_STOP:
        worker.stop(grace=0)
    code = worker.run()
    if worker.state == "failed":
        raise CommandFailed(f"the {spec.name} engine did not start: {worker.setup_error}")
    return code


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[x*]\s*(\d+)\s*", text.lower())
    if not match:
        raise UsageError(f"--size takes WIDTHxHEIGHT, e.g. 1024x1024 or 480x832; got {text!r}")
    return int(match[1]), int(match[2])


def cmd_submit(args) -> int:
    from shared.decode.contract import parse_job
    from shared.engine.errors import JobError
    from shared.source.producer import push, submission

    settings = load_settings(args)
    presets = load_presets(str(settings.presets_file))
    if args.type not in presets.types:
        raise UsageError(f"unknown job type {args.type!r}; valid types: {', '.join(presets.types)}")
    size = _size(args.size) if args.size else None
    payload = submission(settings.contract, args.type, args.prompt, num_images=args.num_images, seed=args.seed,
                         size=size, steps=args.steps, frames=args.frames, user_id=args.user_id,
                         reference_image_url=args.reference_image_url)
    try:  # the same rules a worker applies, before anything is queued
        job = parse_job(payload, presets, settings.preset_policy)
    except JobError as exc:
        raise UsageError(f"not queued: {exc.message}") from None
    if job.engine == "sdxl" and (job.width % 8 or job.height % 8):
        raise UsageError(f"not queued: SDXL needs sizes in multiples of 8, got {job.width}x{job.height}")
    client = redis_client(settings)
    queue = push(client, settings.contract, payload)
    print(json.dumps({"job_id": payload["id"], "queue": queue, "contract": settings.contract}), flush=True)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        record = client.get(keys.result(payload["id"]))
        if record:
            result = json.loads(record)
            print(json.dumps(result, indent=2))
            if result["status"] != "completed":
                raise CommandFailed(f"job {payload['id']} {result['status']}: {result.get('error_message')}")
            return 0
        time.sleep(0.2)
    raise CommandFailed(f"no result after {args.timeout:g} s; job {payload['id']} stays queued on {queue} and "
                        "will still run when a worker takes it (is one running? `ourvidz-worker queue` shows "
                        f"the workers; `ourvidz-worker cancel {payload['id']}` withdraws it)")


def cmd_queue(args) -> int:
    from shared.source.admin import queue_report

    settings = load_settings(args)
    print(json.dumps(queue_report(redis_client(settings), (*keys.JOB_QUEUES, keys.CHAT_QUEUE)), indent=2))
    return 0


def cmd_top(args) -> int:
    from workers.cli.top import print_once, read_fleet, watch

    settings = load_settings(args)
    client = redis_client(settings)
    client.ping()  # Redis away: one line now, not a blank screen

    def read():
        return read_fleet(client, settings.contract)

    if args.once:
        print_once(read)
        return 0
    try:
        watch(read, args.interval)
    except KeyboardInterrupt:  # Ctrl-C leaves, as q does
        pass
    return 0


def cmd_dlq(args) -> int:
    from shared.source.admin import dead_letters, drop_dead_letters, requeue_dead_letter

    settings = load_settings(args)
    client = redis_client(settings)
    if args.action == "list":
        records = dead_letters(client)
        if not records:
            print("no dead-lettered jobs", file=sys.stderr)
        for record in records:
            record["raw"] = record["raw"][:200]
            print(json.dumps(record))
        return 0
    if args.action == "purge":
        count = client.llen(keys.DEAD_LETTER)
        if not args.yes and not _confirmed(f"drop all {count} dead-lettered jobs for good?"):
            raise UsageError("dlq purge: nothing dropped (it asks for confirmation; --yes answers it)")
        print(json.dumps({"dropped": len(drop_dead_letters(client))}))
        return 0
    if args.action == "drop":
        if not args.job_ids:
            raise UsageError("dlq drop needs one or more JOB_IDs (`dlq list` shows them; `dlq purge` drops all)")
        dropped = drop_dead_letters(client, args.job_ids)
        print(json.dumps({"dropped": len(dropped)}))
        missing = [job_id for job_id in dict.fromkeys(args.job_ids) if job_id not in dropped]
        if missing:
            raise CommandFailed(f"not dead-lettered: {' '.join(missing)} (`dlq list` shows the dead-lettered jobs)")
        return 0
    if not args.job_ids and not args.all:
        raise UsageError("dlq requeue needs a JOB_ID or --all (`dlq list` shows them)")
    moved = (requeue_dead_letter(client, settings.contract) if args.all
             else sum(requeue_dead_letter(client, settings.contract, job_id) for job_id in args.job_ids))
    print(json.dumps({"requeued": moved}))
    if not args.all and moved < len(set(args.job_ids)):
        raise CommandFailed(f"no dead-lettered job {' '.join(args.job_ids)} (`dlq list` shows them)")
    return 0


def _confirmed(question: str) -> bool:
    """Ask at a terminal; anywhere else the answer is no (a script passes --yes)."""
    if not sys.stdin.isatty():
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)  # stdout keeps the JSON answer alone
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_cancel(args) -> int:
    from shared.deliver.delivery import Delivery
    from shared.deliver.outbox import CallbackSender
    from shared.engine.errors import JobError
    from shared.source.admin import find_in_flight, remove_queued
    from shared.source.queue import request_cancel

    settings = load_settings(args)
    client = redis_client(settings)
    request_cancel(client, args.job_id)  # a running job sees this between steps
    for queue in (*keys.JOB_QUEUES, keys.CHAT_QUEUE):
        if remove_queued(client, queue, args.job_id) is not None:
            # Still queued: no worker will ever see it, so report it here, the one way jobs are reported.
            delivery = Delivery(settings.contract, None, None, CallbackSender(settings, client), client,
                                settings.worker_id, settings.result_ttl_seconds)
            delivery.deliver(args.job_id, JobError("cancelled", "cancelled before it started"))
            client.delete(keys.cancel(args.job_id))
            print(json.dumps({"job_id": args.job_id, "cancelled": "queued", "queue": queue}))
            return 0
    held = find_in_flight(client, args.job_id)
    if held is not None:
        worker, running = held
        note = ("running: the worker stops it at its next step" if running else
                "claimed, not started: the worker reports it cancelled instead of starting it")
        print(json.dumps({"job_id": args.job_id, "cancelled": "requested", "worker": worker, "note": note}))
        return 0
    client.delete(keys.cancel(args.job_id))
    finished = client.get(keys.result(args.job_id))
    if finished:
        raise CommandFailed(f"job {args.job_id} already ended ({json.loads(finished)['status']}); nothing to cancel")
    raise CommandFailed(f"no job {args.job_id} is queued or running (`ourvidz-worker queue` shows what is)")


def cmd_doctor(args) -> int:
    from workers.cli.doctor import run_checks

    settings = load_settings(args)
    return run_checks(settings, model=args.model, pod=args.pod)


def cmd_make_tiny_model(args) -> int:
    builders = tiny_model_builders()
    target = builders.get(args.engine)
    if target is None:
        raise UsageError(f"no tiny model for {args.engine!r}; available: {', '.join(builders)} "
                         "(the sim engine needs no model)")
    configure_logging(_terse_level())
    route_library_logs(load=("torch",))  # its own handler gives way before the builder imports the libraries
    target(args.dir)
    print(json.dumps({"engine": args.engine, "dir": args.dir}))
    return 0


def cmd_fetch_models(args) -> int:
    from workers.cli.fetch_models import MODELS, FetchError, fetch_models

    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in only if m not in MODELS]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    configure_logging(_terse_level(), progress_bars=True)  # a person watches a download
    try:
        print(json.dumps(fetch_models(args.dest, only, args.sdxl, args.sdxl_sha256), indent=2))
    except FetchError as exc:
        raise CommandFailed(str(exc)) from None
    return 0


def cmd_bench(args) -> int:
    import importlib

    from workers.bench import BenchInputError
    from workers.cli.bench_options import BENCHMARKS, fill_device_defaults

    configure_logging(_terse_level())
    if args.what != "compare":  # which reads two files and imports no model library
        route_library_logs(load=("transformers", "diffusers"))  # their warnings as log lines, no progress bars
    if getattr(args, "model", "absent") is None and args.what in ("sdxl", "wan", "chat"):
        raise UsageError(f"bench {args.what} needs --model (a model, or a config folder with --random-weights)")
    if getattr(args, "model", None) and not Path(args.model).exists():
        raise UsageError(f"--model {args.model}: no such file or folder")
    if hasattr(args, "device"):  # picked as `run` picks it: --device, else DEVICE, else cuda, checked
        args.device = args.device or os.environ.get("DEVICE", "cuda")
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise UsageError(f"--device {args.device} but no CUDA GPU is visible here: use --device cpu "
                                 "(or DEVICE=cpu)")
        fill_device_defaults(args)
    benchmark = importlib.import_module(BENCHMARKS[args.what])
    try:
        report = benchmark.run_from_args(args)
    except BenchInputError as exc:  # e.g. `bench compare` given reports it cannot read
        raise UsageError(str(exc)) from None
    print(json.dumps(report, indent=2, default=str) if args.json else report["table"])
    return 0

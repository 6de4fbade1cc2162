"""`ourvidz-worker top`: the fleet as it runs, from Redis alone, against a running sim fleet: a
plain-text snapshot (`--once`), and the live view driven in a real pseudo-terminal (`q` leaves)."""

import os
import pty
import select
import subprocess
import sys
import time

from tests.conftest import TEST_REDIS_URL
from tests.helpers import running_worker, submit, wait_until
from workers.cli.main import main
from workers.sim import SimEngine


def snapshot(capsys) -> str:
    assert main(["top", "--once"]) == 0
    return capsys.readouterr().out


def test_once_shows_queues_workers_the_job_on_the_engine_and_the_latest_failures(make_settings, redis_client,
                                                                                   monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    settings = make_settings(contract="v1", worker_id="top-w1")
    bad = submit(redis_client, "v1", steps=999)  # refused in decode: a failure with its reason
    slow = submit(redis_client, "v1", seed=5)
    for seed in (6, 7):
        submit(redis_client, "v1", seed=seed)
    with running_worker(settings, engine=SimEngine(gpu_seconds=4.0)) as worker:
        def row_with_step():
            text = snapshot(capsys)
            row = next((line for line in text.splitlines() if "top-w1" in line), "")
            return (text, row) if slow["id"] in row and "/" in row.split(slow["id"])[1] else None

        # on the engine at its step (of its steps), as the keeper's heartbeat wrote it
        text, row = wait_until(row_with_step, 15)
        assert "sim" in row and "busy" in row
        queue_row = next(line for line in text.splitlines() if line.strip().startswith("sdxl_queue"))
        assert queue_row.split()[1].isdigit()  # claimed ahead or waiting, the depth is what Redis holds
        failure = next(line for line in text.splitlines() if bad["id"] in line)
        assert "invalid_parameter" in failure and "steps" in failure
        assert "dead letters 0" in text and "workers alive 1" in text
        worker.stop(grace=10)
    text = snapshot(capsys)
    assert "workers alive 0" in text  # a worker that left cleanly is no longer listed (its failure still is)
    assert not [line for line in text.splitlines() if "top-w1" in line and "invalid_parameter" not in line]


def test_live_view_in_a_pseudo_terminal_refreshes_and_leaves_on_q(make_settings, redis_client):
    settings = make_settings(contract="v1", worker_id="top-live")
    job = submit(redis_client, "v1", seed=9)
    with running_worker(settings, engine=SimEngine(gpu_seconds=6.0)):
        leader, follower = pty.openpty()
        env = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "LOG_LEVEL": "WARNING", "TERM": "xterm", "COLUMNS": "140",
               "LINES": "40"}
        top = subprocess.Popen([sys.executable, "-m", "workers.cli", "top", "--interval", "0.3"], stdin=follower,
                               stdout=follower, stderr=follower, env=env, close_fds=True)
        os.close(follower)
        seen, deadline = b"", time.monotonic() + 30
        try:
            while time.monotonic() < deadline and (seen.count(b"top-live") < 3 or job["id"].encode() not in seen):
                ready, _, _ = select.select([leader], [], [], 0.5)
                if ready:
                    seen += os.read(leader, 65536)
            assert seen.count(b"top-live") >= 3, seen[-2000:]  # drawn, then redrawn as it refreshes
            assert job["id"].encode() in seen, seen[-2000:]  # the job on the engine, once the beat wrote it
            assert b"\x1b[?1049h" in seen  # the alternate screen: the shell's screen comes back after
            os.write(leader, b"q")
            assert top.wait(timeout=10) == 0
        finally:
            if top.poll() is None:
                top.kill()
            os.close(leader)

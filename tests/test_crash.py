"""Real worker processes, killed and stopped the hard way: nothing may be lost or doubled."""

import os
import signal
import subprocess
import sys
import time

from shared.source import keys
from tests.backend_payloads import build_payload, push
from tests.conftest import TEST_REDIS_URL
from tests.helpers import wait_until


def start_worker(backend, worker_id, *, gpu_seconds, era="v1", extra_env=None, args=()):
    env = dict(os.environ)
    env.update({
        "REDIS_URL": TEST_REDIS_URL, "CONTRACT": era, "STORAGE_URL": "supabase", "SUPABASE_URL": backend.url,
        "SUPABASE_SERVICE_ROLE_KEY": "test-service-key", "JOB_CALLBACK_SECRET": "test-callback-secret",
        "LEASE_SECONDS": "1", "RETRY_BASE_SECONDS": "0.05", "LOG_LEVEL": "WARNING", "PREFETCH_JOBS": "2",
    })
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "workers.cli", "run", "sim", "--device", "cpu", "--worker-id", worker_id,
           "--gpu-seconds", str(gpu_seconds), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def push_jobs(client, era, n, steps=10):
    payloads = [build_payload(era, "sdxl_image_fast", f"job {i}", width=64, height=64, steps=steps) for i in range(n)]
    for p in payloads:
        push(client, era, p)
    return [p["id"] for p in payloads]


def test_kill_9_mid_job_another_worker_completes_everything_exactly_once(redis_client, backend):
    ids = push_jobs(redis_client, "v1", 3)
    victim = start_worker(backend, "victim", gpu_seconds=60)
    try:
        # Mid-job: its progress callback arrived and it holds jobs in its processing list.
        wait_until(lambda: any(c["status"] == "processing" for c in backend.callbacks), 30)
        assert redis_client.llen(keys.processing("victim", keys.SDXL_QUEUE)) >= 1
    finally:
        victim.kill()  # SIGKILL: no cleanup of any kind
        victim.wait()
    assert backend.terminal_callbacks() == []
    rescuer = start_worker(backend, "rescuer", gpu_seconds=0.05)
    try:
        backend.wait_for_terminal(3, timeout=60)
        time.sleep(1.5)  # room for any duplicate to show up
    finally:
        rescuer.send_signal(signal.SIGTERM)
        assert rescuer.wait(timeout=30) == 0
    for job_id in ids:
        terminal = backend.terminal_callbacks(job_id)
        assert [c["status"] for c in terminal] == ["completed"], job_id
    assert redis_client.llen(keys.processing("victim", keys.SDXL_QUEUE)) == 0
    assert redis_client.zscore(keys.LEASES, "victim") is None  # reaped: off the lease list, once


def test_sigterm_mid_batch_finishes_the_running_job_and_requeues_the_rest(redis_client, backend):
    ids = push_jobs(redis_client, "v2", 5, steps=20)
    worker = start_worker(backend, "graceful", gpu_seconds=1.5, era="v2", extra_env={"SHUTDOWN_GRACE_SECONDS": "20"})
    wait_until(lambda: any(c["status"] == "processing" for c in backend.callbacks), 30)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started < 20
    done = {c["job_id"] for c in backend.terminal_callbacks()}
    assert len(done) == 1 and all(c["status"] == "completed" for c in backend.terminal_callbacks())
    assert redis_client.llen(keys.SDXL_QUEUE) == 4  # the rest, back in the queue, unharmed
    assert redis_client.llen(keys.processing("graceful", keys.SDXL_QUEUE)) == 0
    # Order kept: what is left is claimed next in the original order.
    drain = start_worker(backend, "drain", gpu_seconds=0.01, era="v2", args=("--max-jobs", "4"))
    assert drain.wait(timeout=60) == 0
    assert sorted(c["job_id"] for c in backend.terminal_callbacks()) == sorted(ids)


def test_sigterm_with_no_grace_requeues_the_running_job_too(redis_client, backend):
    ids = push_jobs(redis_client, "v1", 2, steps=50)
    worker = start_worker(backend, "impatient", gpu_seconds=30, extra_env={"SHUTDOWN_GRACE_SECONDS": "0"})
    wait_until(lambda: any(c["status"] == "processing" for c in backend.callbacks), 30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert backend.terminal_callbacks() == []
    assert redis_client.llen(keys.SDXL_QUEUE) == 2
    assert redis_client.hgetall(keys.ATTEMPTS) in ({}, {i: "0" for i in ids})  # a shutdown costs no attempt

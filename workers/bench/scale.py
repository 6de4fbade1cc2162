"""`ourvidz-worker bench fleet --workers N`: a fleet of N sim worker processes on one Redis.

Each worker is a real `ourvidz-worker run sim` process (about 70 MB) serving a bench-only queue
against the local backend. The benchmark measures, from the Redis server's own counter
(`INFO stats total_commands_processed`, which counts every command a script runs too):
- idle: commands per second per worker while nothing is queued;
- jobs: throughput, commands per job, and queue-to-callback latency (p50/p95) for `--jobs` jobs.
Its own INFO and push commands are subtracted.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from shared.source import keys
from shared.source.producer import push, submission
from shared.source.queue import connect
from workers.bench.local_backend import LocalBackend

BENCH_KEY = "bench-service-key"


def _commands(client) -> int:
    return int(client.info("stats")["total_commands_processed"])


def _start(n: int, run_id: str, queue: str, backend: LocalBackend, redis_url: str, gpu_seconds: float):
    env = dict(os.environ, REDIS_URL=redis_url, CONTRACT="v1", STORAGE_URL="supabase", SUPABASE_URL=backend.url,
               SUPABASE_SERVICE_ROLE_KEY=BENCH_KEY, LOG_LEVEL="WARNING", PREFETCH_JOBS="1")
    env.pop("JOB_CALLBACK_SECRET", None)
    return [subprocess.Popen([sys.executable, "-m", "workers.cli", "run", "sim", "--device", "cpu", "--worker-id",
                              f"bench-{run_id}-{i}", "--queues", queue, "--gpu-seconds", str(gpu_seconds)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]


def run_scale_bench(workers: int = 4, jobs: int = 200, gpu_seconds: float = 0.2, idle_seconds: float = 20.0,
                    redis_url: str = "redis://127.0.0.1:6379/0", size: int = 256) -> dict[str, Any]:
    backend = LocalBackend(service_key=BENCH_KEY).start()
    client = connect(redis_url)
    run_id = uuid.uuid4().hex[:8]
    queue = f"bench:{run_id}:scale"
    prefix = f"bench-{run_id}-"
    procs = _start(workers, run_id, queue, backend, redis_url, gpu_seconds)
    try:
        deadline = time.monotonic() + 60 + workers * 2
        while sum(1 for w in client.zrange(keys.LEASES, 0, -1) if w.startswith(prefix)) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the {workers} workers did not all start (is the machine out of memory?)")
            time.sleep(0.5)
        time.sleep(2.0)  # past start-up: registration and the first claims are not idle cost

        before = _commands(client)
        time.sleep(idle_seconds)
        idle = (_commands(client) - before - 1) / idle_seconds / workers  # less our own second INFO

        pushed: dict[str, float] = {}
        before = _commands(client)
        for i in range(jobs):
            payload = submission("v1", "sdxl_image_fast", f"scale job {i}", seed=i, size=(size, size), steps=4)
            pushed[payload["id"]] = time.time()
            push(client, "v1", payload, queue=queue)
        limit = time.monotonic() + 120 + jobs * gpu_seconds * 2 / workers
        while len(backend.finished_at.keys() & pushed.keys()) < jobs and time.monotonic() < limit:
            time.sleep(0.1)
        finished = {j: t for j, t in backend.finished_at.items() if j in pushed}
        used = _commands(client) - before - jobs - 1  # less the pushes and our INFO
        wall = max(finished.values()) - min(pushed.values()) if finished else float("nan")
        latencies = sorted(finished[j] - pushed[j] for j in finished)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        client.delete(queue)
        backend.stop()
        client.close()
    report = {
        "workers": workers, "jobs": jobs, "jobs_completed": len(finished), "gpu_seconds_per_job": gpu_seconds,
        "idle_commands_per_worker_per_second": round(idle, 3),
        "throughput_jobs_per_second": round(len(finished) / wall, 2) if finished else 0.0,
        "commands_per_job": round(used / max(1, len(finished)), 2),
        "commands_per_second_under_load": round(used / wall, 1) if finished else 0.0,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(latencies[max(0, int(len(latencies) * 0.95) - 1)], 3) if latencies else None,
    }
    report["table"] = "\n".join([
        f"fleet of {workers} sim workers on one Redis: {jobs} jobs x {gpu_seconds:g} s simulated GPU",
        f"idle: {report['idle_commands_per_worker_per_second']:.2f} Redis commands/s per worker",
        f"jobs: {report['jobs_completed']}/{jobs} completed, {report['throughput_jobs_per_second']:.1f} jobs/s, "
        f"{report['commands_per_job']:.1f} commands/job, {report['commands_per_second_under_load']:.0f} commands/s",
        f"queue-to-callback latency: p50 {report['latency_p50_s']} s, p95 {report['latency_p95_s']} s",
    ])
    return report

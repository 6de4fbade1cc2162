"""Costs that must not grow with the fleet: Redis commands while idle and per job, no keyspace scans,
attempts charged only for GPU runs, and publishing that keeps a fast GPU busy."""

import time

from shared.source import keys
from shared.source.queue import JobQueue
from tests.backend_payloads import build_payload, push
from tests.conftest import TEST_REDIS_URL
from workers.bench.fleet import run_fleet_bench
from workers.registry import build_worker
from workers.sim import SimEngine


def commands(client) -> int:
    return int(client.info("stats")["total_commands_processed"])


def start_idle_workers(make_settings, n, first=0):
    import threading

    started = []
    for i in range(first, first + n):
        worker = build_worker(SimEngine(gpu_seconds=0.01), make_settings(worker_id=f"idle-{i}", lease_seconds=30.0),
                              install_signal_handlers=False)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
    deadline = time.monotonic() + 20
    while not all(w.state == "ready" for w, _ in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    return started


def idle_rate(client, workers: int, seconds: float) -> float:
    before = commands(client)
    time.sleep(seconds)
    return (commands(client) - before - 1) / seconds / workers


def test_an_idle_worker_costs_under_one_command_a_second_whatever_the_fleet_size(make_settings, redis_client):
    fleet = start_idle_workers(make_settings, 4)
    try:
        time.sleep(1.5)  # past registration and the first claims
        small = idle_rate(redis_client, 4, 10.5)
        fleet += start_idle_workers(make_settings, 12, first=4)
        time.sleep(1.5)
        large = idle_rate(redis_client, 16, 10.5)
    finally:
        for worker, _ in fleet:
            worker.stop(grace=1)
        for _, thread in fleet:
            thread.join(timeout=30)
    assert small <= 1.0 and large <= 1.0, (small, large)
    assert large <= 1.25 * small + 0.05, (small, large)  # per worker, the same at 4 and at 16


def test_starting_a_worker_and_reaping_a_dead_one_never_scans_the_keyspace(redis_client):
    pipe = redis_client.pipeline(transaction=False)
    for i in range(100_000):
        pipe.set(f"ourvidz:result:unrelated-{i}", "x")
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    push(redis_client, "v1", build_payload("v1", "sdxl_image_fast", "a fox"))
    stats = redis_client.info("commandstats")
    scans_before = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("scan", "keys"))
    dead = JobQueue(redis_client, "dead", keys.JOB_QUEUES, "v1", lease_seconds=0.2)
    dead.register()
    dead.claim(0)
    time.sleep(0.3)
    live = JobQueue(redis_client, "live", keys.JOB_QUEUES, "v1")
    live.register()
    assert live.reap_dead_workers() == 1
    stats = redis_client.info("commandstats")
    scans_after = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("scan", "keys"))
    assert scans_after == scans_before
    assert redis_client.llen(keys.SDXL_QUEUE) == 1 and redis_client.zscore(keys.LEASES, "dead") is None


def test_a_death_is_charged_only_to_the_jobs_on_the_engine(redis_client):
    for i in range(3):
        push(redis_client, "v2", build_payload("v2", "sdxl_image_fast", f"job {i}", job_id=f"job-{i}"))
    dying = JobQueue(redis_client, "dying", keys.JOB_QUEUES, "v2", lease_seconds=0.2)
    dying.register()
    on_gpu, _claimed_ahead, delivered = dying.claim(0), dying.claim(0), dying.claim(0)
    dying.on_engine([on_gpu, delivered])
    dying.off_engine([delivered])  # generated, being uploaded when the worker dies
    time.sleep(0.3)
    assert JobQueue(redis_client, "survivor", keys.JOB_QUEUES, "v2").reap_dead_workers() == 3
    charged = redis_client.hgetall(keys.ATTEMPTS)
    assert charged == {on_gpu.attempt_key: "1"}  # the claimed-ahead and the delivered one go back free
    assert not redis_client.exists(keys.running("dying"))


def test_a_job_that_keeps_killing_its_worker_still_reaches_the_dead_letter_list(redis_client):
    push(redis_client, "v1", build_payload("v1", "sdxl_image_fast", "poison", job_id="poison"))
    for death in range(3):
        worker = JobQueue(redis_client, f"victim-{death}", keys.JOB_QUEUES, "v1", lease_seconds=0.1, max_attempts=3)
        worker.register()
        claimed = worker.claim(0)
        assert claimed.attempts == death + 1 and not worker.over_attempts(claimed)
        worker.on_engine([claimed])  # and then the process dies on the GPU
        time.sleep(0.15)
        JobQueue(redis_client, "reaper", keys.JOB_QUEUES, "v1").reap_dead_workers()
    last = JobQueue(redis_client, "last", keys.JOB_QUEUES, "v1", max_attempts=3)
    assert last.over_attempts(last.claim(0))


def test_a_job_costs_at_most_fifteen_redis_commands(make_settings, redis_client, backend):
    jobs = 20
    for i in range(jobs):
        push(redis_client, "v1", build_payload("v1", "sdxl_image_fast", f"job {i}", width=64, height=64, steps=2))
    worker = build_worker(SimEngine(gpu_seconds=0.01), make_settings(lease_seconds=30.0), max_jobs=jobs,
                          install_signal_handlers=False)
    before = commands(redis_client)
    worker.run()
    used = commands(redis_client) - before - 1
    assert len(backend.terminal_callbacks()) == jobs
    assert used / jobs <= 15, used / jobs  # start-up and shut-down included


def test_publishing_keeps_a_fast_gpu_busy():
    """16 six-image jobs at 0.25 s of GPU per image against 500 ms uploads: within 1.10x the GPU time."""
    report = run_fleet_bench(jobs=16, gpu_seconds=0.25, upload_latency=0.5, callback_latency=0.05,
                             redis_url=TEST_REDIS_URL, size=1024, images=6, modes=("pipelined",))
    pipelined = report["pipelined"]
    assert pipelined["jobs_completed"] == 16
    assert pipelined["wall_seconds"] <= 1.10 * report["gpu_seconds_total"], report["table"]

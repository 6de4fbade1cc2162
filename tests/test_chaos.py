"""What the judging harness does: workers killed at random while storage and callbacks misbehave.

CI runs 12 jobs per era; `CHAOS_JOBS=200 CHAOS_KILLS=40 CHAOS_SECONDS=600` makes it a soak.
"""

import collections
import os
import random
import signal
import time

import pytest

from shared.source import keys
from tests.backend_payloads import build_payload, push
from tests.test_crash import start_worker


@pytest.mark.parametrize("era", ["v1", "v2"])
def test_random_kills_and_faults_lose_nothing(redis_client, backend, era):
    rng = random.Random(era)
    jobs, max_kills = int(os.environ.get("CHAOS_JOBS", 12)), int(os.environ.get("CHAOS_KILLS", 4))
    ids = []
    for i in range(jobs):
        job_type = rng.choice(["sdxl_image_fast", "sdxl_image_high", "video_fast", "image_fast"])
        payload = build_payload(era, job_type, f"chaos {i}", width=64, height=64, steps=5, frames=5,
                                num_images=rng.choice([1, 3]))
        push(redis_client, era, payload)
        ids.append(payload["id"])
    env = {"MAX_ATTEMPTS": "10", "LEASE_SECONDS": os.environ.get("CHAOS_LEASE_SECONDS", "1")}
    workers = [start_worker(backend, f"chaos-{i}", gpu_seconds=0.2, era=era, extra_env=env) for i in range(2)]
    kills = 0
    deadline = time.monotonic() + float(os.environ.get("CHAOS_SECONDS", 90))
    try:
        while time.monotonic() < deadline and {c["job_id"] for c in backend.terminal_callbacks()} < set(ids):
            time.sleep(rng.uniform(0.3, 0.8))
            event = rng.random()
            if event < 0.3 and kills < max_kills:
                victim = workers.pop(rng.randrange(len(workers)))
                victim.kill()
                victim.wait()
                kills += 1
                workers.append(start_worker(backend, f"chaos-{2 + kills}", gpu_seconds=0.2, era=era, extra_env=env))
            elif event < 0.5:
                backend.storage.fail_next = rng.randint(1, 3)
            elif event < 0.6:
                backend.callback.down = True
            else:
                backend.callback.down = False
        backend.callback.down = False
        backend.wait_for_terminal(len(ids), timeout=max(5.0, deadline - time.monotonic()))
    finally:
        time.sleep(1.0)  # a worker started a moment ago is past the interpreter's own start-up
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=60) for w in workers]
    assert codes == [0] * len(workers)
    per_job = collections.Counter(c["job_id"] for c in backend.terminal_callbacks())
    print(f"chaos {era}: {len(ids)} jobs, {kills} kills, {sum(per_job.values()) - len(per_job)} duplicate callbacks")
    assert set(per_job) == set(ids)
    assert all(c["status"] == "completed" for c in backend.terminal_callbacks())
    assert sum(n - 1 for n in per_job.values()) <= kills  # a duplicate only where a kill forced one
    assert redis_client.zcard(keys.OUTBOX) == 0 and not redis_client.keys(f"{keys.PREFIX}callback_sending:*")
    assert redis_client.llen(keys.DEAD_LETTER) == 0
    assert not [k for k in redis_client.keys(f"{keys.PREFIX}processing:*") if redis_client.llen(k)]

"""Running a worker in a thread of the test process, and waiting for what it does."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from tests.backend_payloads import build_payload, push
from workers.registry import build_worker
from workers.sim import SimEngine


@contextmanager
def running_worker(settings, engine=None, **kwargs):
    worker = build_worker(engine or SimEngine(gpu_seconds=0.05), settings, install_signal_handlers=False, **kwargs)
    exit_codes = []
    thread = threading.Thread(target=lambda: exit_codes.append(worker.run()), daemon=True)
    thread.start()
    wait_until(lambda: worker.state != "starting", 10)
    try:
        yield worker
    finally:
        worker.stop(grace=5)
        thread.join(timeout=30)
        assert not thread.is_alive(), "worker did not stop"
        assert exit_codes == [0]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def submit(client, era, job_type="sdxl_image_fast", **kwargs):
    """Push one small job as the backend would (64x64, 4 steps unless told otherwise)."""
    kwargs.setdefault("width", 64)
    kwargs.setdefault("height", 64)
    kwargs.setdefault("steps", 4)
    payload = build_payload(era, job_type, kwargs.pop("prompt", "a lighthouse"), **kwargs)
    push(client, era, payload)
    return payload

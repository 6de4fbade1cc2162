"""What a worker shows of itself to `ourvidz-worker top`: its status in Redis, and its failures.

The status (engine, state, the jobs on its engine with their step, the share of the last minute
its engine was busy, jobs done and failed) is written with the keeper's heartbeat, and only when
it changed: an idle worker costs no command for it. A failed job is added to the fleet's list of
latest failures as it is reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

import redis

from shared.runtime.task import Task
from shared.source import keys

BUSY_WINDOW = 60.0  # seconds over which the engine's busy share is measured


class StatusBoard:
    def __init__(self, client: redis.Redis, worker_id: str, engine: str):
        self.redis, self.worker_id, self.engine = client, worker_id, engine
        self._lock = threading.Lock()
        self._spans: deque[tuple[float, float]] = deque()  # (start, end) of recent engine runs
        self._running_since: float | None = None
        self._on_engine: dict[str, Task] = {}  # the batch context's own map, read only
        self._published: str | None = None

    # ------------------------------------------------------------- from the GPU loop

    def batch_started(self, at: float, tasks: dict[str, Task]) -> None:
        with self._lock:
            self._running_since, self._on_engine = at, tasks

    def batch_ended(self, at: float) -> None:
        with self._lock:
            if self._running_since is not None:
                self._spans.append((self._running_since, at))
            self._running_since, self._on_engine = None, {}
            while self._spans and self._spans[0][1] < at - BUSY_WINDOW:
                self._spans.popleft()

    # --------------------------------------------------------------------- reading

    def busy_share(self, now: float | None = None) -> float:
        """The share of the last minute the engine was running, the run in progress included."""
        now = time.monotonic() if now is None else now
        since = now - BUSY_WINDOW
        with self._lock:
            spans = [*self._spans, *([(self._running_since, now)] if self._running_since is not None else [])]
        busy = sum(max(0.0, min(end, now) - max(start, since)) for start, end in spans)
        return round(min(1.0, busy / BUSY_WINDOW), 2)

    def snapshot(self, state: str, counts: dict[str, int]) -> dict[str, Any]:
        with self._lock:
            tasks = list(self._on_engine.values())
        jobs = [{"id": t.job_id, "step": t.step, "steps": t.total_steps} for t in tasks]
        return {"engine": self.engine, "state": state, "jobs": jobs, "busy": self.busy_share(),
                "completed": counts.get("completed", 0), "failed": counts.get("failed", 0)}

    # ------------------------------------------------------------------ publishing

    def publish(self, state: str, counts: dict[str, int]) -> None:
        """Write the status if it changed since it was last written (raises RedisError)."""
        text = json.dumps(self.snapshot(state, counts), sort_keys=True)
        if text != self._published:
            self.redis.hset(keys.WORKER_STATUS, self.worker_id, text)
            self._published = text

    def failed(self, job_id: str, error_type: str, message: str) -> None:
        """Add a failed job to the fleet's latest failures (raises RedisError)."""
        record = json.dumps({"job_id": job_id, "worker": self.worker_id, "error_type": error_type,
                             "message": message[:300], "at": time.time()})
        self.redis.pipeline().lpush(keys.FAILURES, record).ltrim(keys.FAILURES, 0, keys.FAILURES_KEPT - 1).execute()

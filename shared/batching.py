"""Which ready tasks run together, and what the engine sees of the runtime while they run.

`next_batch`: the first task in line, plus compatible ones (an equal `engine.batch_key`) up to
`engine.max_batch_images` counted in `engine.cost`. A batch waits at most the batch window for
company, and never when it is already full. `BatchContext`: the stop checks and progress
reports the engine calls between steps.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from shared.errors import JobError

if TYPE_CHECKING:  # the runtime imports this module; only the type is needed here
    from shared.runtime import Worker
    from shared.task import Task

PROGRESS_INTERVAL = 2.0  # at most one progress report per job this often
CANCEL_POLL_INTERVAL = 1.0  # cancellation flags of a running batch are read this often


def next_batch(worker: Worker) -> list[Task] | None:
    """Block until there is work; None when the worker is stopping or has nothing more to do."""
    engine, cond, ready = worker.engine, worker._cond, worker._ready
    with cond:
        while not ready:
            if worker.stopping.is_set() or (worker._claimer_done and worker._preparing == 0 and not worker.accepts_local):
                return None
            cond.wait(0.5)
        if worker.stopping.is_set():
            return None
        first = ready.popleft()
        batch, cost = [first], engine.cost(first.input)
        key = engine.batch_key(first.input)
        if key is None:
            return batch
        wait_ms = engine.batch_wait_ms if engine.batch_wait_ms is not None else worker.settings.batch_wait_ms
        window_end = time.monotonic() + wait_ms / 1000
        while cost < engine.max_batch_images:
            taken = _take_compatible(worker, key, engine.max_batch_images - cost)
            for task in taken:
                batch.append(task)
                cost += engine.cost(task.input)
            remaining = window_end - time.monotonic()
            if cost >= engine.max_batch_images or remaining <= 0 or worker.stopping.is_set():
                break
            if not taken:
                cond.wait(remaining)
        return batch


def _take_compatible(worker: Worker, key, budget: int) -> list[Task]:
    taken = []
    for task in list(worker._ready):
        cost = worker.engine.cost(task.input)
        if cost <= budget and worker.engine.batch_key(task.input) == key:
            worker._ready.remove(task)
            taken.append(task)
            budget -= cost
    return taken


class BatchContext:
    """What the engine sees of the runtime during `run`: stop checks and progress, per input id.

    Cancellation flags of the whole batch are read with one MGET at most every
    CANCEL_POLL_INTERVAL, not one read per job per step: a long video costs a few commands.
    """

    def __init__(self, worker: Worker, deadline: float, tasks: dict[str, Task]):
        self.worker, self.deadline, self.tasks = worker, deadline, tasks
        self.cancelled: set[str] = set()
        self._polled = float("-inf")

    def held_ids(self) -> list[str]:
        """The batch's jobs held in a queue (only those can be cancelled there)."""
        return [job_id for job_id, task in self.tasks.items() if task.claimed is not None]

    def polled(self, cancelled: set[str]) -> None:
        self.cancelled |= cancelled
        self._polled = time.monotonic()

    def poll_cancels(self) -> None:
        if time.monotonic() - self._polled >= CANCEL_POLL_INTERVAL:
            self.polled(self.worker.cancelled_among(self.held_ids()))

    def check(self, item: Any) -> None:
        worker, now = self.worker, time.monotonic()
        if worker.stopping.is_set() and now >= worker.stop_deadline:
            raise JobError("shutdown", "worker shut down before the job finished", retryable=True)
        if now > self.deadline:
            raise JobError("timeout", f"job ran past JOB_TIMEOUT_SECONDS={worker.settings.job_timeout_seconds:g}")
        self.poll_cancels()
        if item.id in self.cancelled:
            raise JobError("cancelled", "cancelled by request")

    def progress(self, item: Any, step: int, total: int) -> None:
        task, now = self.tasks.get(item.id), time.monotonic()
        if task is None or now - task.last_progress < PROGRESS_INTERVAL:
            return
        task.last_progress = now
        meta = {"job_type": getattr(task.job, "type", None), "progress": round(step / max(total, 1), 4),
                "step": step, "total_steps": total}
        sent = self.worker.pipeline.progress(task, meta)
        if sent is not None:
            task.progress_sent.append(sent)

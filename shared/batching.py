"""Which ready tasks run together, and what the engine sees of the runtime while they run.

`next_batch`: the first task in line, plus compatible ones (an equal `engine.batch_key`) up to
`engine.max_batch_images` counted in `engine.cost`. A batch waits at most the batch window for
company, and never when it is already full. `BatchContext`: the stop checks and progress
reports the engine calls between steps; `ContinuousContext` adds the joining and leaving of
inputs between steps, for a continuous engine.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis

from shared import keys
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


def _take_compatible(worker: Worker, key, budget: int, in_line: bool = False) -> list[Task]:
    """Ready tasks with this batch key, up to `budget` in cost. `in_line`: only from the head of
    the line, stopping at the first task of another kind (so a continuous run that keeps
    admitting never starves a different model waiting behind it)."""
    taken = []
    for task in list(worker._ready):
        cost = worker.engine.cost(task.input)
        if cost <= budget and worker.engine.batch_key(task.input) == key:
            worker._ready.remove(task)
            taken.append(task)
            budget -= cost
        elif in_line:
            break
    return taken


def job_type_of(task: Task) -> str:
    """The job type a task is measured under (chat requests by their kind: chat, enhance, generate)."""
    job = task.job
    return str(getattr(job, "kind", None) or getattr(job, "type", None) or "unknown")


class BatchContext:
    """What the engine sees of the runtime during `run`: stop checks and progress, per input id.

    Cancellation flags of the whole batch are read with one MGET at most every
    CANCEL_POLL_INTERVAL, not one read per job per step: a long video costs a few commands.
    """

    def __init__(self, worker: Worker):
        self.worker = worker
        self.tasks: dict[str, Task] = {}
        self.cancelled: set[str] = set()
        self._polled = float("-inf")

    def begin(self, tasks: list[Task]) -> list[Task]:
        """Put `tasks` on the engine: the ones that may run, checked, stamped and reported started.
        One Redis round trip first: which were cancelled while they waited (they never start), and
        the held ones marked as on the engine (a death from here on is charged to them)."""
        worker = self.worker
        for task in tasks:
            self.tasks[task.job_id] = task
        claims = [task.claimed for task in tasks if task.claimed is not None]
        if claims:
            held = [task.job_id for task in tasks if task.claimed is not None]
            try:
                pipe = worker.redis.pipeline(transaction=False)
                pipe.mget([keys.cancel(job_id) for job_id in held])
                worker.queue.on_engine(claims, pipe)
                flags = pipe.execute()[0]
                self.cancelled |= {job_id for job_id, flag in zip(held, flags, strict=True) if flag}
                self._polled = time.monotonic()
            except redis.RedisError as exc:  # bookkeeping only: the batch goes on
                worker.log.warning("redis_bookkeeping_failed", error=str(exc))
        live, now = [], time.monotonic()
        for task in tasks:
            task.started_at = task.last_progress = now  # the start report counts toward the throttle
            try:
                self.check(task.input)
            except JobError as exc:
                self.finish(task.input, exc)
                continue
            live.append(task)
            worker.metrics.stage_seconds.labels("wait_for_gpu").observe(now - task.prepared_at)
            sent = worker.pipeline.started(task)
            if sent is not None:
                task.progress_sent.append(sent)
        return live

    def finish(self, item: Any, outcome: Any) -> None:
        """Off the engine (a death while it is delivered costs it nothing) and on to delivery."""
        task = self.tasks[item.id]
        if task.claimed is not None:
            self.worker._redis_quietly(lambda: self.worker.queue.off_engine([task.claimed]))
        self.worker._submit_post(task, outcome)

    def poll_cancels(self) -> None:
        if time.monotonic() - self._polled >= CANCEL_POLL_INTERVAL:
            held = [job_id for job_id, task in self.tasks.items() if task.claimed is not None]
            self.cancelled |= self.worker.cancelled_among(held)
            self._polled = time.monotonic()

    def check(self, item: Any) -> None:
        worker, now, task = self.worker, time.monotonic(), self.tasks.get(item.id)
        if worker.stopping.is_set() and now >= worker.stop_deadline:
            raise JobError("shutdown", "worker shut down before the job finished", retryable=True)
        timeout = worker.settings.job_timeout_seconds
        if task is not None and task.started_at is not None and now > task.started_at + timeout:
            raise JobError("timeout", f"job ran past JOB_TIMEOUT_SECONDS={timeout:g}")
        self.poll_cancels()
        if item.id in self.cancelled or (task is not None and task.cancel_requested):
            raise JobError("cancelled", "cancelled by request")
        if task is not None and task.deadline is not None and now > task.deadline:
            raise JobError("cancelled", "the caller's deadline passed")

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

    def emit(self, item: Any, output: Any) -> None:
        task = self.tasks.get(item.id)
        if task is not None and task.stream is not None:
            task.stream(output)

    def admit(self, budget: int) -> list[Any]:
        return []  # a batch is fixed once it starts


class ContinuousContext(BatchContext):
    """For a continuous engine: inputs join between steps (`admit`) and leave when done (`finish`).

    A finished input leaves `tasks` too, so a run that goes on for hours under steady load keeps
    only what is on the engine (and reads only their cancellation flags). The keeper's hung-engine
    watchdog watches the oldest input still on the engine, since the run itself may go on for as
    long as work keeps arriving.
    """

    def __init__(self, worker: Worker, key):
        super().__init__(worker)
        self.key = key

    def admit(self, budget: int) -> list[Any]:
        worker = self.worker
        if budget <= 0 or worker.stopping.is_set() or self.key is None:
            return []
        with worker._cond:
            if not worker._ready:
                return []
            taken = _take_compatible(worker, self.key, budget, in_line=True)
        live = self.begin(taken) if taken else []
        return [task.input for task in live]

    def finish(self, item: Any, outcome: Any) -> None:
        task = self.tasks[item.id]
        if task.started_at is not None:
            self.worker.metrics.generation_seconds.labels(job_type_of(task)).observe(
                time.monotonic() - task.started_at)
        super().finish(item, outcome)
        del self.tasks[item.id]
        self.cancelled.discard(item.id)
        running = [t.started_at for t in self.tasks.values() if t.started_at is not None]
        self.worker.keeper.batch_started = min(running, default=time.monotonic())

    def unfinished(self) -> list[Task]:
        return list(self.tasks.values())

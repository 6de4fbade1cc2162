"""What the engine sees of the runtime while a batch runs, and the GPU loop's watchdog clock.

`BatchContext`: the stop checks and progress reports the engine calls between steps;
`ContinuousContext` adds the joining and leaving of inputs between steps, for a continuous
engine. Which tasks form a batch is the ready line's (shared/runtime/line.py `take_batch`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from shared.engine.contract import Engine
from shared.engine.errors import JobError
from shared.ops.metrics import WorkerMetrics
from shared.ops.retry import quietly
from shared.ops.settings import Settings
from shared.runtime.handoff import Handoff
from shared.runtime.line import ReadyLine, StopSignal
from shared.runtime.stages import Stages
from shared.runtime.task import Task
from shared.source.queue import JobQueue

PROGRESS_INTERVAL = 2.0  # at most one progress report per job this often
CANCEL_POLL_INTERVAL = 1.0  # cancellation flags of a running batch are read this often


class BatchClock:
    """When the input that has been on the engine longest started: the hung-engine watchdog's
    clock (shared/runtime/keeper.py reads it). Only the GPU loop sets it."""

    def __init__(self):
        self._started: float | None = None

    @property
    def started(self) -> float | None:
        return self._started

    def start(self, at: float) -> None:
        self._started = at

    def stop(self) -> None:
        self._started = None


@dataclass(frozen=True)
class GpuSide:
    """What a batch context works with: the GPU loop's collaborators, given rather than reached for."""

    engine: Engine
    queue: JobQueue
    stages: Stages
    line: ReadyLine
    handoff: Handoff
    clock: BatchClock
    stop: StopSignal
    settings: Settings
    metrics: WorkerMetrics
    log: Any


def job_type_of(task: Task) -> str:
    """The job type a task is measured under (chat requests by their kind: chat, enhance, generate)."""
    job = task.job
    return str(getattr(job, "kind", None) or getattr(job, "type", None) or "unknown")


class BatchContext:
    """What the engine sees of the runtime during `run`: stop checks and progress, per input id.

    Cancellation flags of the whole batch are read with one MGET at most every
    CANCEL_POLL_INTERVAL, not one read per job per step: a long video costs a few commands.
    """

    def __init__(self, gpu: GpuSide):
        self.gpu = gpu
        self.tasks: dict[str, Task] = {}
        self.cancelled: set[str] = set()
        self._polled = float("-inf")

    def begin(self, tasks: list[Task]) -> list[Task]:
        """Put `tasks` on the engine: the ones that may run, checked, stamped and reported started.
        One Redis round trip first: which were cancelled while they waited (they never start), and
        the held ones marked as on the engine (a death from here on is charged to them)."""
        gpu = self.gpu
        for task in tasks:
            self.tasks[task.job_id] = task
        claims = [task.claimed for task in tasks if task.claimed is not None]
        if claims:
            held = [task.job_id for task in tasks if task.claimed is not None]
            try:
                self.cancelled |= gpu.queue.on_engine(claims, held)
                self._polled = time.monotonic()
            except redis.RedisError as exc:  # bookkeeping only: the batch goes on
                gpu.log.warning("redis_bookkeeping_failed", error=str(exc))
        live, now = [], time.monotonic()
        for task in tasks:
            task.started_at = task.last_progress = now  # the start report counts toward the throttle
            try:
                self.check(task.input)
            except JobError as exc:
                self.finish(task.input, exc)
                continue
            live.append(task)
            gpu.metrics.stage_seconds.labels("wait_for_gpu").observe(now - task.prepared_at)
            sent = gpu.stages.started(task)
            if sent is not None:
                task.progress_sent.append(sent)
        return live

    def finish(self, item: Any, outcome: Any) -> None:
        """Off the engine (a death while it is delivered costs it nothing) and on to delivery."""
        task = self.tasks[item.id]
        if task.claimed is not None:
            quietly(self.gpu.log, lambda: self.gpu.queue.off_engine([task.claimed]))
        self.gpu.handoff.hand_off(task, outcome)

    def poll_cancels(self) -> None:
        if time.monotonic() - self._polled >= CANCEL_POLL_INTERVAL:
            held = [job_id for job_id, task in self.tasks.items() if task.claimed is not None]
            self.cancelled |= self.gpu.queue.cancelled_among(held)
            self._polled = time.monotonic()

    def check(self, item: Any) -> None:
        gpu, now, task = self.gpu, time.monotonic(), self.tasks.get(item.id)
        if gpu.stop.overdue(now):
            raise JobError("shutdown", "worker shut down before the job finished", retryable=True)
        timeout = gpu.settings.job_timeout_seconds
        if task is not None and task.started_at is not None and now > task.started_at + timeout:
            raise JobError("timeout", f"job ran past JOB_TIMEOUT_SECONDS={timeout:g}")
        self.poll_cancels()
        if item.id in self.cancelled or (task is not None and task.cancel_requested):
            raise JobError("cancelled", "cancelled by request")
        if task is not None and task.deadline is not None and now > task.deadline:
            raise JobError("cancelled", "the caller's deadline passed")

    def progress(self, item: Any, step: int, total: int) -> None:
        task, now = self.tasks.get(item.id), time.monotonic()
        if task is not None:
            task.step, task.total_steps = step, total  # what `top` shows; reports are throttled below
        if task is None or now - task.last_progress < PROGRESS_INTERVAL:
            return
        task.last_progress = now
        meta = {"job_type": getattr(task.job, "type", None), "progress": round(step / max(total, 1), 4),
                "step": step, "total_steps": total}
        sent = self.gpu.stages.progress(task, meta)
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
    only what is on the engine (and reads only their cancellation flags). The hung-engine
    watchdog's clock follows the oldest input still on the engine, since the run itself may go on
    for as long as work keeps arriving.
    """

    def __init__(self, gpu: GpuSide, key):
        super().__init__(gpu)
        self.key = key

    def admit(self, budget: int) -> list[Any]:
        gpu = self.gpu
        if budget <= 0 or gpu.stop.is_set() or self.key is None:
            return []
        taken = gpu.line.take_compatible(gpu.engine, self.key, budget)
        live = self.begin(taken) if taken else []
        return [task.input for task in live]

    def finish(self, item: Any, outcome: Any) -> None:
        task = self.tasks[item.id]
        if task.started_at is not None:
            self.gpu.metrics.generation_seconds.labels(job_type_of(task)).observe(
                time.monotonic() - task.started_at)
        super().finish(item, outcome)
        del self.tasks[item.id]
        self.cancelled.discard(item.id)
        running = [t.started_at for t in self.tasks.values() if t.started_at is not None]
        self.gpu.clock.start(min(running, default=time.monotonic()))

    def unfinished(self) -> list[Task]:
        return list(self.tasks.values())

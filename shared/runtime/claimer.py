"""Sources and decode, ahead of the GPU: claim raw elements from Redis and turn them into ready tasks.

The claimer keeps at most `max_batch_images + PREFETCH_JOBS` tasks claimed and decoded ahead of
the GPU. Decoding (shared/decode/decoder.py through the engine's stages) parses the payload, fetches
references and rewrites prompts; anything unusable is answered here and never reaches the GPU:
a payload without an id goes to the dead-letter list, every other failure gets its report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from shared.engine.errors import BadPayload, JobError
from shared.ops.failures import as_job_error
from shared.ops.metrics import WorkerMetrics
from shared.ops.retry import retry_redis
from shared.runtime.handoff import Handoff
from shared.runtime.line import ReadyLine, StopSignal
from shared.runtime.stages import Stages
from shared.runtime.task import Task
from shared.source.element import element_job_id
from shared.source.queue import Claimed, JobQueue

# An idle worker blocks this long per claim: one command per CLAIM_BLOCK_SECONDS, and the
# longest a stopping worker waits for its claimer to notice.
CLAIM_BLOCK_SECONDS = 5.0


class Claimer:
    def __init__(self, *, queue: JobQueue, stages: Stages, line: ReadyLine, handoff: Handoff, stop: StopSignal,
                 capacity: int, max_attempts: int, metrics: WorkerMetrics, log: Any,
                 count: Callable[[str], None], max_jobs: int | None = None):
        self.queue, self.stages, self.line, self.handoff, self.stop = queue, stages, line, handoff, stop
        self.capacity = capacity  # tasks claimed ahead of the GPU, waiting or being prepared
        self.max_attempts = max_attempts
        self.metrics, self.log, self.count = metrics, log, count
        self.max_jobs = max_jobs  # stop claiming after this many (None: never)
        self.claims = 0

    def run(self) -> None:
        backoff = 0.5
        try:
            while not self.stop.is_set():
                if self.max_jobs is not None and self.claims >= self.max_jobs:
                    return
                if not self.line.wait_for_room(self.capacity):
                    return
                try:
                    claimed = self.queue.claim(block_seconds=CLAIM_BLOCK_SECONDS)
                    backoff = 0.5
                except Exception as exc:
                    if self.stop.is_set():  # the claim was cut short on purpose
                        return
                    if not isinstance(exc, redis.RedisError):
                        raise
                    self.log.warning("claim_failed", error=str(exc), retry_in=backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
                if claimed is None:
                    continue
                if self.stop.is_set():
                    retry_redis(self.log, lambda c=claimed: self.queue.requeue(c))
                    return
                self.claims += 1
                with self.line.preparing():
                    self.admit(claimed)
        finally:
            self.line.done_feeding()

    def admit(self, claimed: Claimed) -> None:
        """Decode one claimed element; anything unusable is answered right here."""
        task = Task(job_id="", claimed=claimed)
        log = self.log.bind(queue=claimed.queue, attempt=claimed.attempts)
        try:
            task.job = self.stages.parse(claimed.raw)
            task.job_id = task.job.id
        except Exception as exc:
            self._unreadable(task, exc, log)
            return
        log = log.bind(job_id=task.job_id)
        if self.queue.over_attempts(claimed):
            reason = f"gave up after {claimed.attempts - 1} attempts (MAX_ATTEMPTS={self.max_attempts})"
            log.error("dead_letter", reason=reason)
            self.handoff.hand_off(task, JobError("max_attempts_exceeded", reason), dead_letter=reason)
            return
        started = time.monotonic()
        try:
            task.plan = self.stages.plan(task.job)
        except Exception as exc:
            self._failed(task, exc, "preparation", log)
            return
        self.metrics.stage_seconds.labels("prepare").observe(time.monotonic() - started)
        task.prepared_at = time.monotonic()
        log.info("job_claimed", job_type=getattr(task.job, "type", None))
        self.line.put(task)

    def _unreadable(self, task: Task, exc: Exception, log) -> None:
        """The one rule for an element that cannot be read, whatever reading it raised: a failed
        report under the job id its top level carries, or the dead-letter list when it carries none.
        The payload is at fault either way: one log line with the reason, never a traceback."""
        claimed = task.claimed
        if isinstance(exc, JobError):
            error = exc
        else:  # a RecursionError, OverflowError... raised by a value no rule above names
            error = BadPayload(f"payload could not be read ({type(exc).__name__}: {str(exc)[:200]})",
                               error_type="bad_payload")
        job_id = error.job_id or element_job_id(claimed.raw)
        if job_id is None:
            # No id to report to: the dead-letter list is where an operator looks.
            log.error("bad_payload_dead_lettered", error=error.message)
            retry_redis(self.log, lambda: self.queue.dead_letter(claimed, error.message))
            self.count("dead_lettered")
            return
        task.job_id = job_id
        self.handoff.hand_off(task, error)  # the worker logs it once, as job_failed with the id and the reason

    def _failed(self, task: Task, exc: Exception, stage: str, log) -> None:
        """A job that cannot reach the GPU: its report goes out now (a JobError as raised; anything
        else as an internal error, retried only if another try can succeed)."""
        if not isinstance(exc, JobError):
            log.exception(f"{stage}_failed")
        self.handoff.hand_off(task, as_job_error(exc, stage))

"""Sources and decode, ahead of the GPU: claim raw elements from Redis and turn them into ready tasks.

The claimer keeps at most `max_batch_images + PREFETCH_JOBS` tasks claimed and decoded ahead of
the GPU. Decoding (shared/decode.py through the engine's pipeline) parses the payload, fetches
references and rewrites prompts; anything unusable is answered here and never reaches the GPU:
a payload without an id goes to the dead-letter list, every other failure gets its report.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis

from shared.errors import BadPayload, JobError
from shared.failures import as_job_error
from shared.job import element_job_id
from shared.keeper import retry_redis
from shared.queue import Claimed
from shared.task import Task

if TYPE_CHECKING:
    from shared.runtime import Worker

# An idle worker blocks this long per claim: one command per CLAIM_BLOCK_SECONDS, and the
# longest a stopping worker waits for its claimer to notice.
CLAIM_BLOCK_SECONDS = 5.0


class Claimer:
    def __init__(self, worker: Worker):
        self.worker = worker

    def run(self) -> None:
        w = self.worker
        backoff = 0.5
        capacity = w.engine.max_batch_images + w.settings.prefetch_jobs
        try:
            while w.claims_enabled and not w.stopping.is_set():
                if w.max_jobs is not None and w._claims >= w.max_jobs:
                    return
                with w._cond:
                    while len(w._ready) + w._preparing >= capacity and not w.stopping.is_set():
                        w._cond.wait(0.5)
                    if w.stopping.is_set():
                        return
                try:
                    claimed = w.queue.claim(block_seconds=CLAIM_BLOCK_SECONDS)
                    backoff = 0.5
                except Exception as exc:
                    if w.stopping.is_set():  # the claim was cut short on purpose
                        return
                    if not isinstance(exc, redis.RedisError):
                        raise
                    w.log.warning("claim_failed", error=str(exc), retry_in=backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
                if claimed is None:
                    continue
                if w.stopping.is_set():
                    retry_redis(w.log, lambda c=claimed: w.queue.requeue(c))
                    return
                w._claims += 1
                with w._cond:
                    w._preparing += 1
                try:
                    self.admit(claimed)
                finally:
                    with w._cond:
                        w._preparing -= 1
                        w._cond.notify_all()
        finally:
            with w._cond:
                w._claimer_done = True
                w._cond.notify_all()

    def admit(self, claimed: Claimed) -> None:
        """Decode one claimed element; anything unusable is answered right here."""
        w = self.worker
        task = Task(job_id="", claimed=claimed)
        log = w.log.bind(queue=claimed.queue, attempt=claimed.attempts)
        try:
            task.job = w.pipeline.parse(claimed.raw)
            task.job_id = task.job.id
        except Exception as exc:
            self._unreadable(task, exc, log)
            return
        log = log.bind(job_id=task.job_id)
        if w.queue.over_attempts(claimed):
            reason = f"gave up after {claimed.attempts - 1} attempts (MAX_ATTEMPTS={w.settings.max_attempts})"
            log.error("dead_letter", reason=reason)
            w._submit_post(task, JobError("max_attempts_exceeded", reason), dead_letter=reason)
            return
        started = time.monotonic()
        try:
            task.plan = w.pipeline.plan(task.job)
        except Exception as exc:
            self._failed(task, exc, "preparation", log)
            return
        w.metrics.stage_seconds.labels("prepare").observe(time.monotonic() - started)
        task.prepared_at = time.monotonic()
        log.info("job_claimed", job_type=getattr(task.job, "type", None))
        w._enqueue(task)

    def _unreadable(self, task: Task, exc: Exception, log) -> None:
        """The one rule for an element that cannot be read, whatever reading it raised: a failed
        report under the job id its top level carries, or the dead-letter list when it carries none.
        The payload is at fault either way: one log line with the reason, never a traceback."""
        w, claimed = self.worker, task.claimed
        if isinstance(exc, JobError):
            error = exc
        else:  # a RecursionError, OverflowError... raised by a value no rule above names
            error = BadPayload(f"payload could not be read ({type(exc).__name__}: {str(exc)[:200]})",
                               error_type="bad_payload")
        job_id = error.job_id or element_job_id(claimed.raw)
        if job_id is None:
            # No id to report to: the dead-letter list is where an operator looks.
            log.error("bad_payload_dead_lettered", error=error.message)
            retry_redis(w.log, lambda: w.queue.dead_letter(claimed, error.message))
            w._count("dead_lettered")
            return
        task.job_id = job_id
        w._submit_post(task, error)  # runtime logs it once, as job_failed with the id and the reason

    def _failed(self, task: Task, exc: Exception, stage: str, log) -> None:
        """A job that cannot reach the GPU: its report goes out now (a JobError as raised; anything
        else as an internal error, retried only if another try can succeed)."""
        if not isinstance(exc, JobError):
            log.exception(f"{stage}_failed")
        self.worker._submit_post(task, as_job_error(exc, stage))

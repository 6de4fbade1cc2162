"""The worker loop around an engine: claim ahead, batch, run, publish behind, never lose a job.

Threads, and why each exists:
- main ("gpu"): takes ready jobs, groups compatible ones, calls `engine.run`. Nothing else runs
  here, so the next batch starts the moment the previous one leaves the GPU.
- claimer: claims from Redis, parses, and runs `engine.prepare` (reference downloads) ahead of
  the GPU, keeping a small buffer of ready jobs.
- post pool (POST_WORKERS threads): encodes, uploads and calls back behind the GPU, then lets go
  of the job in Redis. Bounded, so a slow store slows the GPU loop instead of filling memory.
- keeper: renews the lease, returns dead workers' jobs, re-sends the callback outbox, and ends a
  process whose engine hangs past its timeout (its jobs are then reclaimed by another worker).
- health: /health and /metrics.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import keys
from shared.announce import announce_in_background
from shared.callback import CANCELLED, COMPLETED, FAILED, PROCESSING, Asset, build_callback
from shared.contract import BadPayload, Job, JobError, load_presets, parse_job
from shared.engine import Engine, JobResult
from shared.failures import as_job_error
from shared.gpu import apply_memory_budget
from shared.http import HealthServer, json_response
from shared.logging import get_logger
from shared.metrics import WorkerMetrics
from shared.outbox import CallbackSender
from shared.publish import job_metadata, publish
from shared.queue import Claimed, JobQueue, connect, is_cancelled
from shared.settings import Settings
from shared.storage import BucketPolicy, Storage, Uploader, make_storage

PROGRESS_INTERVAL = 2.0  # at most one `processing` callback per job this often
CANCEL_POLL_INTERVAL = 0.5
WATCHDOG_GRACE = 60.0  # past timeout + this, an engine that never checks in is presumed hung


@dataclass
class Task:
    claimed: Claimed
    job_id: str
    job: Job | None = None
    prepared_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    last_progress: float = 0.0
    progress_sent: list[Future] = field(default_factory=list)  # awaited before the terminal callback


class _BatchContext:
    """What the engine sees of the runtime during `run`: stop checks and progress."""

    def __init__(self, worker: Worker, deadline: float):
        self.worker = worker
        self.deadline = deadline
        self._cancel_checked: dict[str, tuple[float, bool]] = {}
        self.tasks: dict[str, Task] = {}

    def check(self, job: Job) -> None:
        worker = self.worker
        now = time.monotonic()
        if worker.stopping.is_set() and now >= worker.stop_deadline:
            raise JobError("shutdown", "worker shut down before the job finished", retryable=True)
        if now > self.deadline:
            raise JobError("timeout", f"job ran past JOB_TIMEOUT_SECONDS={worker.settings.job_timeout_seconds:g}")
        checked_at, cancelled = self._cancel_checked.get(job.id, (0.0, False))
        if now - checked_at >= CANCEL_POLL_INTERVAL:
            cancelled = worker.job_cancelled(job.id)
            self._cancel_checked[job.id] = (now, cancelled)
        if cancelled:
            raise JobError("cancelled", "cancelled by request")

    def progress(self, job: Job, step: int, total: int) -> None:
        task = self.tasks.get(job.id)
        now = time.monotonic()
        if task is None or now - task.last_progress < PROGRESS_INTERVAL:
            return
        task.last_progress = now
        meta = {"job_type": job.type, "progress": round(step / max(total, 1), 4), "step": step, "total_steps": total}
        self.worker.send_processing(task, meta)


class Worker:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        redis_client: redis.Redis | None = None,
        storage: Storage | None = None,
        sender: CallbackSender | None = None,
        device: str = "cpu",
        max_jobs: int | None = None,
        queues: tuple[str, ...] | None = None,
        health_port: int | None = None,
        install_signal_handlers: bool = True,
    ):
        self.engine = engine
        self.settings = settings
        self.era = settings.contract
        self.device = device
        self.max_jobs = max_jobs
        self.worker_id = settings.worker_id
        self.redis = redis_client or connect(settings.effective_redis_url)
        self.queue = JobQueue(
            self.redis, self.worker_id, queues or engine.queues, self.era, settings.lease_seconds, settings.max_attempts
        )
        self.presets = load_presets(str(settings.presets_file))
        self.policy = BucketPolicy(self.presets)
        self.uploader = Uploader(
            storage or make_storage(settings), self.policy, settings.storage_retries, settings.retry_base_seconds
        )
        self.sender = sender or CallbackSender(settings, self.redis)
        self.metrics = WorkerMetrics(self.worker_id, engine.name, self._queue_depths)
        self.log = get_logger(worker_id=self.worker_id, engine=engine.name)
        self.health_port = health_port if health_port is not None else settings.health_port
        self.install_signal_handlers = install_signal_handlers

        self.state = "starting"
        self.stopping = threading.Event()
        self.stop_deadline = float("inf")
        self._ready: deque[Task] = deque()
        self._cond = threading.Condition()
        self._preparing = 0
        self._claims = 0
        self._claimer_done = False
        self._batch_started: float | None = None
        self._counts = {"completed": 0, "failed": 0, "cancelled": 0, "retried": 0, "dead_lettered": 0}
        self.post_pool = ThreadPoolExecutor(settings.post_workers, thread_name_prefix="post")
        self.progress_pool = ThreadPoolExecutor(2, thread_name_prefix="progress")
        self._deferred: list[Callable[[], Any]] = []  # acknowledgements Redis refused; the keeper retries them
        self._post_slots = threading.BoundedSemaphore(settings.post_workers * 2)
        self._keeper_stop = threading.Event()
        self.http: HealthServer | None = None

    # ----------------------------------------------------------------------- lifecycle

    def run(self) -> int:
        """Serve until stopped (SIGTERM/SIGINT) or until `max_jobs` jobs are done. Returns an exit code."""
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if self.health_port is not None:
            self.http = HealthServer({"/health": self._health, "/metrics": self._metrics}, port=self.health_port).start()
            self.log.info("health_server", port=self.http.port)
        if self.stopping.is_set():  # stopped before it started: nothing claimed, nothing to do
            self._close()
            return 0
        try:
            apply_memory_budget(self.settings.gpu_memory_gb, self.device)
            self.engine.setup(self.device)
        except Exception:
            self.state = "failed"
            self.log.exception("engine_setup_failed")
            self._close()
            return 1
        recovered = self.queue.register()
        if recovered:
            self.log.warning("recovered_own_jobs", count=recovered)
        keeper = threading.Thread(target=self._keeper_loop, name="keeper", daemon=True)
        claimer = threading.Thread(target=self._claimer_loop, name="claimer", daemon=True)
        keeper.start()
        claimer.start()
        self.state = "ready"
        if self.http is not None and self.engine.announce_function:
            announce_in_background(self.settings, self.engine.announce_function, self.http.port)
        self.log.info("worker_ready", era=self.era, **{**self.engine.describe(), "queues": list(self.queue.queues)})
        try:
            self._gpu_loop()
        finally:
            self._shutdown(claimer, keeper)
        return 0

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let the running batch finish within `grace` seconds, then requeue it."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.stop_deadline = min(self.stop_deadline, time.monotonic() + grace)
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()

    def _on_signal(self, signum, _frame) -> None:
        if self.stopping.is_set():  # a second signal: stop now, requeueing the running batch
            self.stop(grace=0)
            return
        self.log.info("stopping", signal=signal.Signals(signum).name, grace=self.settings.shutdown_grace_seconds)
        self.stop()

    def _shutdown(self, claimer: threading.Thread, keeper: threading.Thread) -> None:
        self.state = "stopping"
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()
        claimer.join(timeout=30)
        with self._cond:
            leftovers = list(self._ready)
            self._ready.clear()
        for task in leftovers:  # claimed but never started: next in line for another worker
            self._retry_redis(lambda t=task: self.queue.requeue(t.claimed))
        if leftovers:
            self.log.info("requeued_on_shutdown", count=len(leftovers))
        self.post_pool.shutdown(wait=True)
        self.progress_pool.shutdown(wait=True)
        try:
            self._run_deferred()
        except redis.RedisError:  # still held in Redis: a reaper returns them once our lease lapses
            self.log.error("acks_left_undone", count=len(self._deferred))
        self._keeper_stop.set()
        keeper.join(timeout=10)
        try:
            self.queue.deregister()
        except redis.RedisError:
            self.log.warning("deregister_failed")
        self._close()
        self.log.info("worker_stopped", **self._counts)

    def _close(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None

    # ---------------------------------------------------------------------- the GPU loop

    def _gpu_loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _next_batch(self) -> list[Task] | None:
        with self._cond:
            while not self._ready:
                if self.stopping.is_set() or (self._claimer_done and self._preparing == 0):
                    return None
                self._cond.wait(0.5)
            if self.stopping.is_set():
                return None
            first = self._ready.popleft()
            batch, cost = [first], self.engine.cost(first.job)
            key = self.engine.batch_key(first.job)
            if key is None:
                return batch
            # Gather compatible jobs: those already waiting, then any arriving within the window.
            window_end = time.monotonic() + self.settings.batch_wait_ms / 1000
            while cost < self.engine.max_batch_images:
                taken = self._take_compatible(key, self.engine.max_batch_images - cost)
                for task in taken:
                    batch.append(task)
                    cost += self.engine.cost(task.job)
                remaining = window_end - time.monotonic()
                if cost >= self.engine.max_batch_images or remaining <= 0 or self.stopping.is_set():
                    break
                if not taken:
                    self._cond.wait(remaining)
            return batch

    def _take_compatible(self, key, budget: int) -> list[Task]:
        taken = []
        for task in list(self._ready):
            cost = self.engine.cost(task.job)
            if cost <= budget and self.engine.batch_key(task.job) == key:
                self._ready.remove(task)
                taken.append(task)
                budget -= cost
        return taken

    def _run_batch(self, batch: list[Task]) -> None:
        self.state = "busy"
        self.metrics.busy.set(1)
        started = time.monotonic()
        self._batch_started = started
        ctx = _BatchContext(self, deadline=started + self.settings.job_timeout_seconds)
        live: list[Task] = []
        for task in batch:
            try:
                ctx.check(task.job)
            except JobError as exc:
                self._submit_post(task, exc)
                continue
            task.started_at = started
            task.last_progress = started  # the start callback below counts toward the throttle
            ctx.tasks[task.job_id] = task
            live.append(task)
            self.metrics.stage_seconds.labels("wait_for_gpu").observe(started - task.prepared_at)
            self.send_processing(task, {"job_type": task.job.type, "progress": 0.0})
        if live:
            self.metrics.batch_images.observe(sum(self.engine.cost(t.job) for t in live))
            outcomes = self._call_engine(live, ctx)
            self.metrics.stage_seconds.labels("gpu").observe(time.monotonic() - started)
            for task, outcome in zip(live, outcomes, strict=True):
                self._submit_post(task, outcome)
        self._batch_started = None
        self.metrics.busy.set(0)
        self.state = "ready"

    def _call_engine(self, live: list[Task], ctx: _BatchContext) -> list[JobResult | JobError]:
        try:
            outcomes = self.engine.run([t.job for t in live], ctx)
            if len(outcomes) != len(live):
                raise RuntimeError(f"engine returned {len(outcomes)} results for {len(live)} jobs")
            return outcomes
        except JobError as exc:
            return [exc] * len(live)
        except Exception as exc:  # a device fault is retried elsewhere; a bug fails the jobs now
            self.log.exception("engine_error", job_ids=[t.job_id for t in live])
            return [as_job_error(exc, "generation")] * len(live)

    # ------------------------------------------------------------------------- claiming

    def _claimer_loop(self) -> None:
        backoff = 0.5
        capacity = self.engine.max_batch_images + self.settings.prefetch_jobs
        try:
            while not self.stopping.is_set():
                if self.max_jobs is not None and self._claims >= self.max_jobs:
                    return
                with self._cond:
                    while len(self._ready) + self._preparing >= capacity and not self.stopping.is_set():
                        self._cond.wait(0.5)
                    if self.stopping.is_set():
                        return
                try:
                    claimed = self.queue.claim(block_seconds=1.0)
                    backoff = 0.5
                except redis.RedisError as exc:
                    self.log.warning("claim_failed", error=str(exc), retry_in=backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
                if claimed is None:
                    continue
                if self.stopping.is_set():
                    self._retry_redis(lambda c=claimed: self.queue.requeue(c))
                    return
                self._claims += 1
                with self._cond:
                    self._preparing += 1
                try:
                    self._admit(claimed)
                finally:
                    with self._cond:
                        self._preparing -= 1
                        self._cond.notify_all()
        finally:
            with self._cond:
                self._claimer_done = True
                self._cond.notify_all()

    def _admit(self, claimed: Claimed) -> None:
        """Parse and prepare one claimed element; anything unusable is answered right here."""
        job_id = claimed.attempt_key if not claimed.attempt_key.startswith("raw:") else None
        log = self.log.bind(job_id=job_id, queue=claimed.queue, attempt=claimed.attempts)
        if self.queue.over_attempts(claimed):
            reason = f"gave up after {claimed.attempts - 1} attempts (MAX_ATTEMPTS={self.settings.max_attempts})"
            log.error("dead_letter", reason=reason)
            task = Task(claimed=claimed, job_id=job_id or "")
            if job_id is None:
                self._retry_redis(lambda: self.queue.dead_letter(claimed, reason))
                self._count("dead_lettered", None)
            else:
                self._submit_post(task, JobError("max_attempts_exceeded", reason), dead_letter=reason)
            return
        try:
            job = parse_job(claimed.raw, self.presets, self.settings.preset_policy)
        except BadPayload as exc:
            if exc.job_id is None:
                reason = exc.message
                log.error("bad_payload_dead_lettered", error=reason)
                self._retry_redis(lambda: self.queue.dead_letter(claimed, reason))
                self._count("dead_lettered", None)
                return
            self._submit_post(Task(claimed=claimed, job_id=exc.job_id), exc)
            return
        except JobError as exc:
            self._submit_post(Task(claimed=claimed, job_id=exc.job_id or job_id or ""), exc)
            return
        task = Task(claimed=claimed, job_id=job.id, job=job)
        if self.engine.job_types is not None and job.type not in self.engine.job_types:
            self._submit_post(task, JobError("unsupported_job_type", f"the {self.engine.name} worker does not run {job.type}"))
            return
        if self.job_cancelled(job.id):
            self._submit_post(task, JobError("cancelled", "cancelled before it started"))
            return
        started = time.monotonic()
        try:
            task.job = self.engine.prepare(job)
        except JobError as exc:
            self._submit_post(task, exc)
            return
        except Exception as exc:
            log.exception("prepare_failed")
            self._submit_post(task, as_job_error(exc, "preparation"))
            return
        self.metrics.stage_seconds.labels("prepare").observe(time.monotonic() - started)
        task.prepared_at = time.monotonic()
        log.info("job_claimed", job_type=job.type, num_images=job.num_images)
        with self._cond:
            self._ready.append(task)
            self._cond.notify_all()

    # ---------------------------------------------------------------- behind the GPU

    def _submit_post(self, task: Task, outcome: JobResult | JobError, dead_letter: str | None = None) -> None:
        self._post_slots.acquire()  # blocks when uploads fall behind: back-pressure, not memory
        def work():
            try:
                self._finish(task, outcome, dead_letter)
            finally:
                self._post_slots.release()
        self.post_pool.submit(work)

    def _finish(self, task: Task, outcome: JobResult | JobError, dead_letter: str | None = None) -> None:
        log = self.log.bind(job_id=task.job_id)
        try:
            if isinstance(outcome, JobResult):
                if self.job_cancelled(task.job_id):
                    raise JobError("cancelled", "cancelled by request")
                started = time.monotonic()
                assets = publish(outcome, self.era, self.uploader, self.policy)
                self.metrics.stage_seconds.labels("publish").observe(time.monotonic() - started)
                meta = job_metadata(outcome.job, outcome)
                meta["generation_time"] = round(time.monotonic() - (task.started_at or task.prepared_at), 3)
                self._terminal(task, COMPLETED, assets=assets, metadata=meta)
                log.info("job_completed", assets=len(assets), generation_time=meta["generation_time"])
                return
            self._fail(task, outcome, dead_letter)
        except JobError as exc:
            self._fail(task, exc, dead_letter)
        except Exception as exc:
            log.exception("publish_error")
            self._fail(task, as_job_error(exc, "publishing"), dead_letter)

    def _fail(self, task: Task, error: JobError, dead_letter: str | None) -> None:
        log = self.log.bind(job_id=task.job_id, error_type=error.error_type)
        if error.error_type == "cancelled":
            log.info("job_cancelled")
            self._terminal(task, CANCELLED, error_message=error.message, metadata={"error_type": "cancelled"})
            return
        if error.error_type == "shutdown":
            log.info("job_requeued_on_shutdown")
            self._retry_redis(lambda: self.queue.requeue(task.claimed))
            return
        if error.retryable and dead_letter is None:
            if task.claimed.attempts < self.settings.max_attempts:
                log.warning("job_retry", error=error.message, attempt=task.claimed.attempts)
                self._retry_redis(lambda: self.queue.requeue(task.claimed, count_attempt=True))
                self._count("retried", None)
                return
            dead_letter = f"{error.message} (after {task.claimed.attempts} attempts)"
        log.warning("job_failed", error=error.message)
        meta = job_metadata(task.job) if task.job is not None else {}
        meta.update({"error_type": error.error_type})
        self._terminal(task, FAILED, error_message=error.message, metadata=meta, dead_letter=dead_letter)

    def _terminal(
        self,
        task: Task,
        status: str,
        *,
        assets: list[Asset] | None = None,
        error_message: str | None = None,
        metadata: dict[str, Any] | None = None,
        dead_letter: str | None = None,
    ) -> None:
        """The one terminal callback of a job, then let go of it in Redis."""
        if not self._retry_redis(lambda: self.queue.still_held(task.claimed)):
            # A reaper took it back while we were presumed dead: the worker that has it now reports.
            self.log.warning("job_reclaimed_elsewhere", job_id=task.job_id)
            return
        # A late `processing` landing after the terminal callback would undo it (v1 applies every
        # callback), so the job's progress callbacks finish first.
        for sent in task.progress_sent:
            try:
                sent.result(timeout=self.settings.callback_timeout_seconds + 1)
            except Exception:  # noqa: S110 - a lost progress update is harmless
                pass
        body = build_callback(self.era, task.job_id, status, assets, error_message, metadata)
        started = time.monotonic()
        delivery = self.sender.deliver(body)
        self.metrics.stage_seconds.labels("callback").observe(time.monotonic() - started)
        member = self.sender.outbox_entry(body) if delivery == "undelivered" else None
        record = {"status": body["status"], "assets": body["assets"], "error_message": error_message,
                  "metadata": body["metadata"], "worker_id": self.worker_id, "finished_at": time.time(),
                  "callback": delivery}
        def let_go() -> None:
            if dead_letter is not None:
                self.queue.dead_letter(task.claimed, dead_letter, outbox_member=member)
                self.redis.set(keys.result(task.job_id), json.dumps(record), ex=self.settings.result_ttl_seconds)
            else:
                self.queue.finish(task.claimed, record, self.settings.result_ttl_seconds, member)
            self.redis.delete(keys.cancel(task.job_id))

        try:
            self._retry_redis(let_go)
        except redis.RedisError:
            # The callback went out but Redis is away: keep the job held (our lease protects it)
            # and let the keeper acknowledge it once Redis answers again.
            self.log.error("ack_deferred", job_id=task.job_id)
            with self._cond:
                self._deferred.append(let_go)
        self._count(body["status"] if status != CANCELLED else "cancelled", dead_letter)
        self.metrics.stage_seconds.labels("total").observe(time.time() - task.claimed.claimed_at)

    def send_processing(self, task: Task, metadata: dict[str, Any]) -> None:
        """Best-effort progress, off the GPU thread, on its own pool so it never waits behind uploads."""
        body = build_callback(self.era, task.job_id, PROCESSING, metadata=metadata)
        task.progress_sent.append(self.progress_pool.submit(self.sender.send_progress, body))

    # ------------------------------------------------------------------------ keeper

    def _keeper_loop(self) -> None:
        interval = max(0.2, self.settings.lease_seconds / 3)
        while not self._keeper_stop.wait(interval):
            try:
                self.queue.heartbeat()
                self._run_deferred()
                returned = self.queue.reap_dead_workers()
                if returned:
                    self.log.warning("reclaimed_dead_worker_jobs", count=returned)
                self.sender.flush_outbox()
            except redis.RedisError as exc:
                self.log.warning("keeper_redis_error", error=str(exc))
            except Exception:
                self.log.exception("keeper_error")
            started = self._batch_started
            if started is not None and time.monotonic() - started > self.settings.job_timeout_seconds + WATCHDOG_GRACE:
                # The engine never returned to check its deadline (a hung kernel). Exiting lets
                # the lease lapse so another worker retries the job; attempts bound the retries.
                self.log.critical("engine_hung_exiting", seconds=round(time.monotonic() - started))
                os._exit(70)

    def _run_deferred(self) -> None:
        with self._cond:
            pending, self._deferred = self._deferred, []
        for index, let_go in enumerate(pending):
            try:
                let_go()
            except redis.RedisError:
                with self._cond:
                    self._deferred.extend(pending[index:])
                raise

    # ----------------------------------------------------------------------- helpers

    def job_cancelled(self, job_id: str) -> bool:
        try:
            return is_cancelled(self.redis, job_id)
        except redis.RedisError:
            return False

    redis_retry_attempts = 8  # about 30 s of backoff

    def _retry_redis(self, call: Callable[[], Any]) -> Any:
        """Redis blips must not strand a finished job: retry with backoff before giving up."""
        attempts = self.redis_retry_attempts
        delay = 0.25
        for attempt in range(attempts):
            try:
                return call()
            except redis.RedisError as exc:
                if attempt == attempts - 1:
                    raise
                self.log.warning("redis_retry", error=str(exc), retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, 15.0)

    def _count(self, outcome: str, dead_letter: str | None) -> None:
        with self._cond:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1
            if dead_letter is not None and outcome != "dead_lettered":
                self._counts["dead_lettered"] += 1
        self.metrics.jobs.labels(outcome).inc()

    def _queue_depths(self) -> dict[str, int]:
        return {q: self.redis.llen(q) for q in self.queue.queues}

    def _health(self):
        status = 200 if self.state in ("ready", "busy") else 503
        body = {"status": self.state, "worker_id": self.worker_id, "engine": self.engine.name,
                "contract": self.era, **self._counts}
        return json_response(status, body)

    def _metrics(self):
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

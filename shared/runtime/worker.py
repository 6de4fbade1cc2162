"""The one worker runtime: sources in, decode ahead, the engine on the GPU thread, deliver behind.

```
Redis queues ─claim─▶ decode ─▶ ready ─▶ engine.run (GPU thread) ─▶ deliver ─▶ ack
local submit (HTTP) ──────────┘                                  └─▶ reply
```
Threads, and why each exists:
- main ("gpu"): takes ready tasks, groups compatible ones, calls `engine.run`. Nothing else
  runs here, so the next batch starts the moment the previous one leaves the GPU.
- claimer (shared/runtime/claimer.py): claims raw elements from Redis and decodes them (parse,
  references, enhancement, the engine's input) ahead of the GPU, into the ready line.
- post pool (shared/runtime/handoff.py, POST_WORKERS threads): delivers behind the GPU, then lets go of
  the job. Bounded, so a slow store slows the GPU loop instead of filling memory.
- keeper (shared/runtime/keeper.py): lease, reaping, outbox, deferred acks, the hung-engine watchdog.
- http: /health, /metrics and any engine routes (uvicorn); the chat API submits here too.
Each piece of shared state has one owner: the ready line (shared/runtime/line.py) holds the tasks
waiting for the GPU and picks batches; the GPU loop's clock (shared/runtime/batching.py) is what the
watchdog reads; outcomes go out through the stages' `report` (shared/deliver/delivery.py for images and
videos).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import redis

from shared.decode.decoder import Plan
from shared.deliver.announce import announce_in_background
from shared.deliver.outbox import CallbackSender
from shared.engine.contract import Engine
from shared.engine.errors import JobError
from shared.ops.compile_cache import use_compile_cache
from shared.ops.failures import as_job_error
from shared.ops.gpu import apply_memory_budget
from shared.ops.http import ConnectionLimits, HttpServer, worker_app
from shared.ops.logging import get_logger
from shared.ops.metrics import WorkerMetrics
from shared.ops.retry import quietly, retry_redis
from shared.ops.settings import Settings
from shared.runtime.batching import BatchClock, BatchContext, ContinuousContext, GpuSide, job_type_of
from shared.runtime.claimer import Claimer
from shared.runtime.handoff import Handoff
from shared.runtime.keeper import Keeper
from shared.runtime.line import ReadyLine, StopSignal
from shared.runtime.stages import Stages
from shared.runtime.status import StatusBoard
from shared.runtime.task import Task
from shared.source.admin import element_age
from shared.source.queue import JobQueue, claim_client_for


class Worker:
    def __init__(self, engine: Engine, settings: Settings, stages: Stages, *, redis_client: redis.Redis,
                 queues: tuple[str, ...], outbox: CallbackSender | None = None, device: str = "cpu",
                 max_jobs: int | None = None, health_port: int | None = None, install_signal_handlers: bool = True,
                 announce_function: str | None = None, add_routes: Callable[[Any, Worker], None] | None = None,
                 max_body_bytes: int = 1024 * 1024, metrics: WorkerMetrics | None = None,
                 claim_from_queues: bool = True, serves_local: bool = False):
        self.engine, self.settings, self.stages = engine, settings, stages
        self.era, self.device, self.max_jobs = settings.contract, device, max_jobs
        self.worker_id = settings.worker_id
        self.redis = redis_client
        self.queue = JobQueue(redis_client, self.worker_id, queues, self.era, settings.lease_seconds,
                              settings.max_attempts, claim_client=claim_client_for(redis_client))
        # Made by the registry before the stages (which count into it); bound to this worker's view here.
        self.metrics = metrics or WorkerMetrics(self.worker_id, engine.name)
        self.metrics.watch_queues(self.scrape_view)
        self.metrics.engine_rows.set_function(lambda: engine.rows)
        self.log = get_logger(worker_id=self.worker_id, engine=engine.name)
        self.health_port = health_port if health_port is not None else settings.health_port
        self.install_signal_handlers = install_signal_handlers
        self.announce_function = announce_function
        self.add_routes = add_routes
        self.max_body_bytes = max_body_bytes
        # An HTTP source of jobs (the chat API) keeps the GPU loop serving when the queues are fed
        # out; routes that only pass work on (WAN's /generate) do not.
        self.accepts_local = serves_local
        self.claim_from_queues = claim_from_queues  # False: serve local submissions only (CHAT_CONSUME_QUEUE=false)

        self.state = "starting"
        self.setup_error: str | None = None
        self.stop_signal = StopSignal()
        self.line = ReadyLine(self.stop_signal)
        self.clock = BatchClock()
        self._counts_lock = threading.Lock()
        self._counts = {"completed": 0, "failed": 0, "cancelled": 0, "retried": 0, "dead_lettered": 0}
        # Deliveries run side by side: by default enough for two full batches while the next one
        # runs, so a fast GPU never waits on the store (each job also uploads its objects in parallel).
        self.handoff = Handoff(settings.post_workers or max(4, 2 * engine.max_batch_images), self._finish)
        self.board = StatusBoard(redis_client, self.worker_id, engine.name)  # what `top` shows of this worker
        self.keeper = Keeper(self.queue, settings, self.log, outbox, self.clock,
                             on_beat=lambda: self.board.publish(self.state, self.counts))
        self.gpu_side = GpuSide(engine, self.queue, stages, self.line, self.handoff, self.clock, self.stop_signal,
                                settings, self.metrics, self.log)
        self.http: HttpServer | None = None

    # ----------------------------------------------------------------------- lifecycle

    def run(self) -> int:
        """Serve until stopped (SIGTERM/SIGINT) or until `max_jobs` jobs are done. Returns an exit code."""
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if self.health_port is not None:
            app = worker_app(self.health, self.metrics.render, self.max_body_bytes)
            if self.add_routes is not None:
                self.add_routes(app, self)
            limits = ConnectionLimits(self.settings.http_header_timeout_seconds,
                                      self.settings.http_body_timeout_seconds, self.settings.http_max_connections)
            self.http = HttpServer(app, port=self.health_port, limits=limits).start()
            self.log.info("http_listening", port=self.http.port)
        if self.stop_signal.is_set():  # stopped before it started: nothing claimed, nothing to do
            self._close()
            return 0
        try:
            apply_memory_budget(self.settings.gpu_memory_gb, self.device)
            use_compile_cache(self.settings.compile_cache_dir)
            self.engine.setup(self.device)
        except Exception as exc:
            self.state = "failed"
            self.setup_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400]
            # One line; the traceback only when asked for (LOG_LEVEL=DEBUG).
            self.log.error("engine_setup_failed", error=self.setup_error,
                           exc_info=logging.getLogger().isEnabledFor(logging.DEBUG))
            self._close()
            return 1
        recovered = self.queue.register()
        if recovered:
            self.log.warning("recovered_own_jobs", count=recovered)
        self.keeper.start()
        claimer = threading.Thread(target=self._claimer().run, name="claimer", daemon=True)
        if self.claim_from_queues:
            claimer.start()
        else:
            self.line.done_feeding()
        self.state = "ready"
        quietly(self.log, lambda: self.board.publish(self.state, self.counts))
        if self.http is not None and self.announce_function:
            announce_in_background(self.settings, self.announce_function, self.http.port)
        self.log.info("worker_ready", era=self.era, **{**self.engine.describe(), "queues": list(self.queue.queues)})
        try:
            self._gpu_loop()
        finally:
            self._shutdown(claimer)
        return 0

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let the running batch finish within `grace` seconds, then requeue it."""
        self.stop_signal.request(self.settings.shutdown_grace_seconds if grace is None else grace)
        self.line.wake()
        self.queue.interrupt_claims()  # a claimer blocked on an empty queue stops waiting now

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_signal.is_set():  # a second signal: stop now, requeueing the running batch
            self.stop(grace=0)
            return
        self.log.info("stopping", signal=signal.Signals(signum).name, grace=self.settings.shutdown_grace_seconds)
        self.stop()

    def _shutdown(self, claimer: threading.Thread) -> None:
        self.state = "stopping"
        self.stop_signal.request(self.settings.shutdown_grace_seconds)
        self.line.wake()
        if claimer.is_alive():
            claimer.join(timeout=30)
        leftovers = self.line.drain()
        for task in leftovers:  # decoded but never started: next in line for another worker
            self._give_back(task, JobError("shutdown", "worker shut down before the job started", retryable=True))
        if leftovers:
            self.log.info("requeued_on_shutdown", count=len(leftovers))
        self.handoff.close()  # every job in hand is delivered before the lease ends
        close = getattr(self.stages, "close", None)
        if close is not None:
            close()
        self.keeper.stop()  # only now: a job still being delivered keeps its lease until here
        try:
            if not self.keeper.pending_acks():  # else those elements wait for a reaper, not a requeue
                self.queue.return_orphans()
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

    def _claimer(self) -> Claimer:
        return Claimer(queue=self.queue, stages=self.stages, line=self.line, handoff=self.handoff,
                       stop=self.stop_signal, capacity=self.engine.max_batch_images + self.settings.prefetch_jobs,
                       max_attempts=self.settings.max_attempts, metrics=self.metrics, log=self.log,
                       count=self._count, max_jobs=self.max_jobs)

    def _gpu_loop(self) -> None:
        engine = self.engine
        wait_ms = engine.batch_wait_ms if engine.batch_wait_ms is not None else self.settings.batch_wait_ms
        while True:
            batch = self.line.take_batch(engine, wait_ms, serves_local=self.accepts_local)
            if batch is None:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[Task]) -> None:
        self.state = "busy"
        self.metrics.busy.set(1)
        started = time.monotonic()
        self.clock.start(started)
        continuous = self.engine.continuous
        ctx = (ContinuousContext(self.gpu_side, self.engine.batch_key(batch[0].input)) if continuous
               else BatchContext(self.gpu_side))
        self.board.batch_started(started, ctx.tasks)
        live = ctx.begin(batch)
        if live:
            self.metrics.batch_images.observe(sum(self.engine.cost(t.input) for t in live))
            if continuous:
                self._run_continuous(live, ctx)
            else:
                outcomes = self._call_engine(live, ctx)
                # Off the engine in one command: a death while they are delivered costs them nothing.
                claims = [t.claimed for t in live if t.claimed is not None]
                quietly(self.log, lambda: self.queue.off_engine(claims))
                for task, outcome in zip(live, outcomes, strict=True):
                    self.handoff.hand_off(task, outcome)
            spent = time.monotonic() - started
            self.metrics.stage_seconds.labels("gpu").observe(spent)
            self.metrics.gpu_busy.inc(spent)
            if not continuous:  # a continuous run observes each job as it leaves (ContinuousContext.finish)
                for task in live:
                    self.metrics.generation_seconds.labels(job_type_of(task)).observe(spent)
        self.clock.stop()
        self.board.batch_ended(time.monotonic())
        self.metrics.busy.set(0)
        self.state = "ready"

    def _call_engine(self, live: list[Task], ctx: BatchContext) -> list[Any]:
        try:
            outcomes = self.engine.run([t.input for t in live], ctx)
            if len(outcomes) != len(live):
                raise RuntimeError(f"engine returned {len(outcomes)} results for {len(live)} inputs")
            return outcomes
        except JobError as exc:
            return [exc] * len(live)
        except Exception as exc:  # a device fault is retried elsewhere; a bug fails the jobs now
            self.log.exception("engine_error", job_ids=[t.job_id for t in live])
            return [as_job_error(exc, "generation")] * len(live)

    def _run_continuous(self, live: list[Task], ctx: ContinuousContext) -> None:
        """One run while work keeps arriving; each input is delivered as it finishes (ctx.finish)."""
        try:
            self.engine.run([t.input for t in live], ctx)
            error = JobError("internal_error", "the engine returned without finishing this input")
        except JobError as exc:
            error = exc
        except Exception as exc:
            self.log.exception("engine_error", job_ids=[t.job_id for t in ctx.unfinished()])
            error = as_job_error(exc, "generation")
        for task in ctx.unfinished():
            ctx.finish(task.input, error)

    # ------------------------------------------------------------------ sources, decode

    def submit(self, plan: Plan, stream: Callable[[Any], None] | None = None,
               deadline: float | None = None) -> Task:
        """A local source (the chat HTTP API): run `plan` with the queued work. `task.future` gets
        the outcome; `stream`, if given, each partial output the engine emits (it must not block);
        past `deadline` (time.monotonic()) the task is cancelled at the engine's next check."""
        if self.state not in ("ready", "busy"):
            raise RuntimeError(f"worker is {self.state}")
        task = Task(job_id=plan.input.id, job=plan.job, plan=plan, future=Future(), stream=stream,
                    deadline=deadline)
        self.line.put(task)
        return task

    def cancel_local(self, task: Task) -> None:
        """A local caller gave up: the task stops at the engine's next check (or never starts)."""
        task.cancel_requested = True

    # ---------------------------------------------------------------- behind the GPU

    def _finish(self, task: Task, outcome: Any, dead_letter: str | None = None) -> None:
        try:
            if isinstance(outcome, JobError):
                self._fail(task, outcome, dead_letter)
            else:
                self._report(task, outcome)
        except JobError as exc:  # publishing failed: storage refused or away
            self._fail(task, exc, dead_letter)
        except Exception as exc:
            self.log.exception("delivery_error", job_id=task.job_id)
            self._fail(task, as_job_error(exc, "publishing"), dead_letter)

    def _fail(self, task: Task, error: JobError, dead_letter: str | None) -> None:
        log = self.log.bind(job_id=task.job_id, error_type=error.error_type)
        if task.claimed is not None and error.error_type != "cancelled":
            if error.retryable and dead_letter is None:
                if error.error_type == "shutdown" or task.claimed.attempts < self.settings.max_attempts:
                    self._give_back(task, error)
                    return
                dead_letter = f"{error.message} (after {task.claimed.attempts} attempts)"
        log.warning("job_failed", error=error.message) if error.error_type != "cancelled" else log.info("job_cancelled")
        self._report(task, error, dead_letter)

    def _give_back(self, task: Task, error: JobError) -> None:
        """Return a held job to its queue: at shutdown without charge, after a transient failure with."""
        charge = error.error_type != "shutdown"
        self.log.warning("job_retry" if charge else "job_requeued_on_shutdown", job_id=task.job_id,
                         error=error.message, attempt=task.claimed.attempts)
        retry_redis(self.log, lambda: self.queue.requeue(task.claimed, count_attempt=charge))
        if charge:
            self._count("retried")

    def _report(self, task: Task, outcome: Any, dead_letter: str | None = None) -> None:
        """The one terminal report of a job; it leaves its source in the same step (shared/runtime/keeper.py)."""
        claimed = task.claimed
        # A late progress report landing after the terminal one would undo it (v1 applies every
        # callback), so the job's progress reports finish first.
        for sent in task.progress_sent:
            try:
                sent.result(timeout=self.settings.callback_timeout_seconds + 1)
            except Exception:  # noqa: S110 - a lost progress update is harmless
                pass
        release = self.keeper.releaser(task, dead_letter) if claimed is not None else None
        body = self.stages.report(task, outcome, release)
        if body is None:
            # A reaper took it back while we were presumed dead: the worker that has it now reports.
            self.log.warning("job_reclaimed_elsewhere", job_id=task.job_id)
            return
        status = "cancelled" if isinstance(outcome, JobError) and outcome.error_type == "cancelled" else (
            body.get("status", "failed"))
        self._count(status, dead_letter)
        if status == "failed" and isinstance(outcome, JobError):
            quietly(self.log, lambda: self.board.failed(task.job_id, outcome.error_type, outcome.message))
        if claimed is not None:
            self.metrics.stage_seconds.labels("total").observe(time.time() - claimed.claimed_at)
            self.log.info("job_reported", job_id=task.job_id, status=status)

    # ----------------------------------------------------------------------- helpers

    def _count(self, outcome: str, dead_letter: str | None = None) -> None:
        with self._counts_lock:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1
            if dead_letter is not None and outcome != "dead_lettered":
                self._counts["dead_lettered"] += 1
        if outcome in ("retried", "dead_lettered") or dead_letter is not None:  # delivery counts the rest
            self.metrics.jobs.labels("dead_lettered" if dead_letter is not None else outcome).inc()

    def scrape_view(self) -> dict[str, Any]:
        """What /metrics reports from Redis, read in one round trip (see shared/ops/metrics.py)."""
        view = self.queue.scrape_view()
        ages = {q: element_age(raw) for q, raw in view.pop("next_in_line").items()}
        return {**view, "oldest_age": {q: age for q, age in ages.items() if age is not None}}

    def health(self) -> tuple[int, dict[str, Any]]:
        """What /health answers: 200 only while ready or busy."""
        healthy = self.state in ("ready", "busy")
        return (200 if healthy else 503), {"status": self.state, "healthy": healthy, "worker_id": self.worker_id,
                                           "engine": self.engine.name, "worker": self.engine.name,
                                           "contract": self.era, **self.counts}

    @property
    def counts(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._counts)

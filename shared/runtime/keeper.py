"""The keeper thread: everything that keeps a worker's hold on its jobs honest while it works.

Every LEASE_SECONDS/3 it renews the lease, retries acknowledgements Redis refused earlier,
returns dead workers' jobs to their queues and re-sends the callback outbox. It also ends a
process whose engine hangs past its timeout: the lease then lapses and another worker retries
the job (attempts bound the retries). It stops only after the last job in hand is delivered.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from shared.deliver.outbox import CallbackSender
from shared.ops.retry import REDIS_RETRY_ATTEMPTS, retry_redis
from shared.ops.settings import Settings
from shared.runtime.batching import BatchClock
from shared.runtime.task import Task
from shared.source.queue import JobQueue

WATCHDOG_GRACE = 60.0  # past timeout + this, an engine that never checks in is presumed hung


class Keeper:
    def __init__(self, queue: JobQueue, settings: Settings, log: Any, outbox: CallbackSender | None,
                 clock: BatchClock, on_beat: Callable[[], None] | None = None):
        self.queue, self.settings, self.log = queue, settings, log
        self.on_beat = on_beat  # with each heartbeat (the worker's status, written when it changed)
        self.outbox = outbox
        self.clock = clock  # the GPU loop's: when the input on the engine longest started
        self.redis_retry_attempts = REDIS_RETRY_ATTEMPTS  # tries before an acknowledgement is deferred
        self._deferred: list[Callable[[], Any]] = []  # acknowledgements Redis refused; retried here
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        try:
            self.run_deferred()
        except redis.RedisError:  # still held in Redis: a reaper returns them once our lease lapses
            self.log.error("acks_left_undone", count=len(self._deferred))
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def releaser(self, task: Task, dead_letter: str | None):
        """How a finished job leaves its queue, before its callback goes out (shared/deliver/delivery.py,
        `Release`): handed over with its result (or dead-lettered) in one atomic step."""
        claimed, log = task.claimed, self.log
        ttl = self.settings.result_ttl_seconds

        def release(record: dict[str, Any] | None, entry: str | None):
            cancelled = bool(record) and record.get("metadata", {}).get("error_type") == "cancelled"

            def hand_over(callback_entry: str | None) -> bool:
                until = self.outbox.sending_deadline() if self.outbox is not None else None
                return self.queue.handover(claimed, task.job_id or None, record, callback_entry, ttl, dead_letter,
                                             clear_cancel=cancelled, sending_until=until)

            try:
                held = retry_redis(log, lambda: hand_over(entry), self.redis_retry_attempts)
                return self._settler(entry) if held else None
            except redis.RedisError:
                # Redis is away: the callback goes out now; the job stays held (our lease protects
                # it) and is let go of once Redis answers, with the callback in the outbox if it
                # could not be delivered.
                log.error("ack_deferred", job_id=task.job_id)

                def after_sending(delivery: str) -> None:
                    def let_go() -> None:
                        if hand_over(entry):
                            self._settler(entry)(delivery)

                    with self._lock:
                        self._deferred.append(let_go)

                return after_sending

        return release

    def _settler(self, entry: str | None) -> Callable[[str], None]:
        """After the callback went out: done with the parked entry, or into the outbox with it."""

        def settle(delivery: str) -> None:
            if entry is None or self.outbox is None:
                return
            try:
                self.outbox.settle(entry, delivery)
            except redis.RedisError:  # the entry stays parked; reaping or shutdown returns it to the outbox
                self.log.warning("callback_settle_failed")

        return settle

    def pending_acks(self) -> int:
        with self._lock:
            return len(self._deferred)

    def run_deferred(self) -> None:
        with self._lock:
            pending, self._deferred = self._deferred, []
        for index, let_go in enumerate(pending):
            try:
                let_go()
            except redis.RedisError:
                with self._lock:
                    self._deferred.extend(pending[index:])
                raise

    def _loop(self) -> None:
        interval = max(0.2, self.settings.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self.queue.heartbeat()
                if self.on_beat is not None:
                    self.on_beat()
                self.run_deferred()
                returned = self.queue.reap_dead_workers()
                if returned:
                    self.log.warning("reclaimed_dead_worker_jobs", count=returned)
                if self.outbox is not None:
                    self.outbox.flush_outbox()
            except redis.RedisError as exc:
                self.log.warning("keeper_redis_error", error=str(exc))
            except Exception:
                self.log.exception("keeper_error")
            started = self.clock.started
            if started is not None and time.monotonic() - started > self.settings.job_timeout_seconds + WATCHDOG_GRACE:
                # The engine never returned to check its deadline (a hung kernel). Exiting lets
                # the lease lapse so another worker retries the job; attempts bound the retries.
                self.log.critical("engine_hung_exiting", seconds=round(time.monotonic() - started))
                os._exit(70)

"""Encode and deliver, behind the GPU: the one way a job's outcome reaches the backend.

`Delivery.deliver` encodes and uploads the outputs, builds the era's callback, sends it (or
parks it in the Redis outbox when the endpoint is away), records the result, lets go of the job
at its source, and counts it. The worker, the serverless handler and `ourvidz-worker cancel`
all call it; only what "let go" means differs (acknowledge in the queue, or nothing to let go).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import redis

from shared.decode.job import Job
from shared.deliver.callback import CANCELLED, COMPLETED, FAILED, build_callback
from shared.deliver.outbox import CallbackSender
from shared.deliver.publish import job_metadata, publish
from shared.deliver.storage import BucketPolicy, Uploader
from shared.engine.errors import JobError
from shared.engine.inputs import Generated
from shared.ops.metrics import WorkerMetrics
from shared.source import keys
from shared.source.element import Era

# How a job held in a queue is let go of, called with the result record and the callback's outbox
# entry *before* the callback is sent. It returns None when the job is no longer this worker's (a
# reaper took it back: no report), else what to call with the delivery outcome once the callback
# was sent (settle the parked entry; or, if Redis was away, the acknowledgement waiting for it).
Release = Callable[[dict[str, Any] | None, "str | None"], "Callable[[str], None] | None"]


@dataclass
class Delivery:
    era: Era
    uploader: Uploader
    policy: BucketPolicy
    sender: CallbackSender
    redis: redis.Redis
    worker_id: str
    result_ttl_seconds: int = 7 * 86400
    metrics: WorkerMetrics | None = None
    upload_pool: Executor | None = None  # encodes and uploads a job's objects side by side

    def deliver(self, job_id: str, outcome: Generated | JobError, *, job: Job | None = None,
                facts: dict[str, Any] | None = None, asset_facts: dict[str, Any] | None = None,
                started_at: float | None = None, release: Release | None = None) -> dict[str, Any] | None:
        """Report one job's outcome, exactly once. Returns the callback body (None: not ours to report).

        A JobError raised while publishing (storage refused or away) propagates before anything
        is sent, so the caller can retry the job or report that failure instead.
        """
        if isinstance(outcome, Generated):
            assert job is not None, "a result needs its job"
            begun = time.monotonic()
            assets = publish(outcome, job, self.era, self.uploader, self.policy, asset_facts, self.upload_pool)
            self._observe("publish", time.monotonic() - begun)
            metadata = job_metadata(job, outcome, facts)
            if started_at is not None:
                metadata["generation_time"] = round(time.monotonic() - started_at, 3)
            body = build_callback(self.era, job_id, COMPLETED, assets, metadata=metadata)
            error_message = None
        else:
            status = CANCELLED if outcome.error_type == "cancelled" else FAILED
            metadata = job_metadata(job, facts=facts) if job is not None and status == FAILED else {}
            metadata["error_type"] = outcome.error_type
            error_message = outcome.message
            body = build_callback(self.era, job_id, status, error_message=error_message, metadata=metadata)

        entry = self.sender.outbox_entry(body)
        record = {"status": body["status"], "assets": body["assets"], "error_message": error_message,
                  "metadata": body["metadata"], "worker_id": self.worker_id, "finished_at": time.time()}
        settle = release(record, entry) if release is not None else None
        if release is not None and settle is None:
            return None  # reclaimed by another worker while this one was presumed dead: it reports
        begun = time.monotonic()
        delivery = self.sender.send_terminal(body)
        self._observe("callback", time.monotonic() - begun)
        if settle is not None:
            settle(delivery)
        else:  # nothing held in a queue: record the result and, if needed, hand the callback to the outbox
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(keys.result(job_id), json.dumps({**record, "callback": delivery}), ex=self.result_ttl_seconds)
            if delivery == "undelivered":
                pipe.zadd(keys.OUTBOX, {entry: time.time()})
            pipe.execute()
        if delivery == "delivered":
            self.sender.endpoint_back()  # back after an outage: what waits in the outbox is due now
        if self.metrics is not None:
            self.metrics.jobs.labels(outcome_label(body["status"], outcome)).inc()
        return body

    def _observe(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.stage_seconds.labels(stage).observe(seconds)


def outcome_label(status: str, outcome: Generated | JobError) -> str:
    if isinstance(outcome, JobError) and outcome.error_type == "cancelled":
        return "cancelled"
    return status

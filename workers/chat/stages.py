"""The chat engine in the fleet's runtime: `chat_queue` jobs and HTTP requests, one batcher.

`chat_queue` jobs get the fleet's lease, keeper, attempts, dead-letter list and metrics like any
other queue; their answer is pushed to the request's reply key. HTTP requests (workers/chat/api.py)
are a second source: they enter the same ready queue through `Worker.submit` and get their answer
through a future.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from shared.decode.decoder import Plan
from shared.engine.errors import BadPayload, JobError
from shared.ops.metrics import WorkerMetrics
from shared.ops.settings import Settings
from shared.runtime.worker import Worker
from shared.source import keys
from shared.source.element import SAFE_ID, decode_element
from shared.source.queue import element_key
from workers.chat.conversation import BadRequest
from workers.chat.engine import ChatEngine
from workers.chat.generator import Completion
from workers.chat.service import ChatJob, ChatRequests

REPLY_TTL = 300


class ChatStages:
    def __init__(self, engine: ChatEngine, settings: Settings, client: redis.Redis, metrics: WorkerMetrics):
        self.engine = engine
        self.settings = settings.chat
        self.redis = client
        self.metrics = metrics
        self._requests: ChatRequests | None = None

    @property
    def requests(self) -> ChatRequests | None:
        """Decode needs the tokenizers: available once the engine is set up."""
        if self._requests is None and self.engine.models:
            self._requests = ChatRequests(self.engine, self.settings)
        return self._requests

    def parse(self, raw: str) -> ChatJob:
        body = decode_element(raw)
        reply_to = body.get("reply_to")
        if not (isinstance(reply_to, str) and reply_to.startswith(keys.reply(""))):
            reply_to = None  # never write to a key the request names outside the reply space
        request_id = body.get("id") if isinstance(body.get("id"), str) and SAFE_ID.match(body["id"]) else None
        if request_id is None and reply_to is None:
            raise BadPayload("chat request has neither a usable id nor a reply key")
        return ChatJob(id=request_id or element_key(raw), kind=str(body.get("type")), body=body, reply_to=reply_to)

    def plan(self, job: ChatJob) -> Plan:
        if self.requests is None:
            raise JobError("not_ready", "the chat model is loading", retryable=True)
        try:
            return self.requests.plan(job)
        except BadRequest as exc:
            raise JobError("bad_request", str(exc), job_id=job.id) from None

    def started(self, task) -> None:
        return None

    def progress(self, task, meta: dict[str, Any]) -> None:
        return None

    def report(self, task, outcome: Completion | JobError, release) -> dict[str, Any] | None:
        status = "failed" if isinstance(outcome, JobError) else "completed"
        cancelled = isinstance(outcome, JobError) and outcome.error_type == "cancelled"
        self.metrics.jobs.labels("cancelled" if cancelled else status).inc()
        if task.future is not None:  # an HTTP request: its handler formats the answer
            if not task.future.done():  # (a handler never cancels it; this keeps a report from ever raising)
                task.future.set_result(outcome)
            return {"status": status}
        job: ChatJob = task.job
        if isinstance(outcome, JobError):
            reply = {"success": False, "error": error_text(outcome), "error_type": outcome.error_type}
        else:
            reply = self.requests.reply(task.plan, outcome)
        if job is not None and job.reply_to:
            self.redis.pipeline().lpush(job.reply_to, json.dumps({"id": job.body.get("id"), **reply})) \
                .expire(job.reply_to, REPLY_TTL).execute()
        if release is not None and release(None, None) is None:
            return None  # taken back by a reaper meanwhile: the worker that has it answers (again)
        return {"status": status}


def error_text(error: JobError) -> str:
    """What a caller is told: the request's own mistake in full, anything internal by its kind only."""
    if error.error_type in ("bad_request", "invalid_payload", "max_attempts_exceeded", "timeout", "cancelled"):
        return error.message
    return f"internal error ({error.error_type})"


def chat_worker(engine: ChatEngine, settings: Settings, **common) -> Worker:
    from workers.chat.api import add_chat_routes

    stages = ChatStages(engine, settings, common["redis_client"], common["metrics"])
    if not settings.chat.consume_queue:
        common["queues"] = (keys.CHAT_QUEUE,)
    if common.get("health_port") is None:
        common["health_port"] = settings.chat.port
    return Worker(engine, settings, stages, add_routes=add_chat_routes, serves_local=True,
                  max_body_bytes=settings.chat.max_request_bytes, claim_from_queues=settings.chat.consume_queue,
                  **common)

"""The chat worker's HTTP API, as the backend calls it: /chat, /enhance, /generate, /worker/info
(and, beside them under the same keys, the OpenAI-compatible /v1 routes: workers/chat/openai_api.py).

Routes on the worker's FastAPI app (beside /health and /metrics). The key, readiness and the body
are checked by one dependency (workers/chat/gate.py); the bodies are declared here as pydantic
models. Every failure is a JSON error with a 4xx/5xx status and never a secret, a path or the
environment.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.engine.errors import JobError
from shared.ops.logging import get_logger
from shared.runtime.worker import Worker
from workers.chat.callers import Caller, CallerGone
from workers.chat.gate import Admitted, Gate, RequestRefused, Voice, answer_refusals
from workers.chat.openai_api import add_openai_routes
from workers.chat.service import ChatJob

log = get_logger(component="chat-api")


class _Body(BaseModel):
    """Fields both backend eras may send; unknown ones are kept (the service reads what it knows)."""

    model_config = ConfigDict(extra="allow")
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    model: str | None = None


class ChatBody(_Body):
    messages: list[dict[str, Any]] | None = None  # v2
    message: str | None = None  # v1
    system_prompt: str | None = None
    conversation_history: list[dict[str, Any]] | None = None


class EnhanceBody(ChatBody):
    prompt: str | None = None
    job_type: str | None = None


class GenerateBody(_Body):
    prompt: str | None = None
    inputs: str | None = None  # the 2025-08 body
    parameters: dict[str, Any] | None = None
    return_full_text: bool | None = None


BODIES = {"chat": ChatBody, "enhance": EnhanceBody, "generate": GenerateBody}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status)


def _validation_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "body"
    if error["type"] in ("int_parsing", "float_parsing", "int_type", "float_type", "int_from_float"):
        return f"{where} must be a number"
    return f"{where}: {error['msg']}"


BACKEND = Voice(_error, unauthorized=("missing or invalid bearer token", {}), loading=("model is loading", {}))


def _declared(kind: str) -> Callable[[Any], dict[str, Any]]:
    """The body as the service reads it (a JSON object), checked against the route's declaration."""

    def read(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestRefused(_error(400, "body must be a JSON object"))
        try:
            BODIES[kind].model_validate(body)
        except ValidationError as exc:
            raise RequestRefused(_error(400, _validation_message(exc))) from None
        return body

    return read


def add_chat_routes(app: FastAPI, worker: Worker) -> None:
    stages = worker.stages
    gate = Gate(worker, lambda: stages.requests, worker.settings.chat)
    answer_refusals(app)
    add_openai_routes(app, worker, gate)

    async def serve(kind: str, request: Request, admitted: Admitted) -> JSONResponse:
        caller = Caller(request, admitted.deadline)
        job = ChatJob(id=uuid.uuid4().hex, kind=kind, body=admitted.body, stop=caller.stopped)
        task = None
        try:
            plan = await run_in_threadpool(stages.plan, job)  # tokenizing is CPU work: off the event loop
            task = worker.submit(plan, deadline=admitted.deadline)
            outcome = await caller.wait(asyncio.wrap_future(task.future))
        except JobError as exc:
            return _error(400 if exc.error_type == "bad_request" else 503, exc.message)
        except TimeoutError:
            if task is not None:
                worker.cancel_local(task)  # its row goes at the next step; counted once, as cancelled
            return _error(504, "generation timed out")
        except CallerGone:
            if task is not None:
                worker.cancel_local(task)
            return _error(499, "client closed the request")
        except RuntimeError as exc:  # the worker is stopping
            return _error(503, str(exc))
        finally:
            caller.close()
        if isinstance(outcome, JobError):
            if outcome.error_type == "cancelled":  # the deadline passed on the engine's side first
                return _error(504, "generation timed out")
            log.error("chat_request_failed", error_type=outcome.error_type)
            return _error(500, f"internal error ({outcome.error_type})")
        return JSONResponse({**admitted.requests.reply(plan, outcome), "worker_id": worker.worker_id})

    def route(kind: str):
        async def answer(request: Request, admitted: Admitted = Depends(gate.admits(BACKEND, _declared(kind)))):
            return await serve(kind, request, admitted)

        return answer

    for kind in ("chat", "enhance", "generate"):
        app.post(f"/{kind}")(route(kind))

    @app.get("/chat/health")
    async def chat_health() -> JSONResponse:  # the 2025-08 backend probes this before it sends /chat
        status, body = worker.health()
        return JSONResponse(body, status_code=status)

    @app.get("/worker/info")
    def info() -> JSONResponse:
        requests = stages.requests
        details = requests.info() if requests is not None else {"ready": False}
        return JSONResponse({"worker_id": worker.worker_id, "worker": "chat", "status": worker.state, **details})

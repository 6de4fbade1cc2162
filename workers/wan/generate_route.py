"""`POST /generate` on the WAN worker's HTTP port: the 2025-08 backend's `qwen_base` enhancement.

That backend's `enhance-prompt` sends `{inputs, parameters}` to the URL the WAN worker announced
(update-worker-url), with no key, and reads `generated_text`; the worker this fleet replaced ran
a base model beside WAN for it. Here the chat worker does that work: the body goes to
`chat_queue` as a `generate` job, as WAN's own prompt rewrites do, and its reply is the answer.
The same keys and allowance as the chat worker's `/generate` apply (CHAT_WORKER_API_KEY,
WAN_WORKER_API_KEY, CHAT_ALLOW_UNAUTHENTICATED_GENERATE).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from shared.source.chat_client import request_reply
from workers.chat.callers import BadBody, CallerGone, json_body
from workers.chat.gate import ApiKeys

# A failed reply's kind → the status the caller gets (the chat worker says the request's own
# mistakes in full and anything internal by its kind only).
_STATUS = {"bad_request": 400, "invalid_payload": 400, "timeout": 504, "cancelled": 504}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status)


def add_generate_route(app: FastAPI, worker: Any) -> None:
    keys = ApiKeys(worker.settings.chat, routes="the WAN worker's POST /generate")
    timeout = worker.settings.wan.enhance_timeout_seconds

    @app.post("/generate")
    async def generate(request: Request) -> JSONResponse:
        if not keys.allow(request.headers.get("authorization"), "/generate"):
            return _error(401, "missing or wrong Authorization: Bearer key")
        try:
            body = await json_body(request)
        except BadBody as exc:
            return _error(400, str(exc))
        except CallerGone:
            return _error(499, "client closed the request")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object: {inputs, parameters} or {prompt, max_tokens, …}")
        body = {k: v for k, v in body.items() if k not in ("id", "type", "reply_to")}  # the request's own
        reply = await run_in_threadpool(request_reply, worker.redis, worker.era, "generate", body, timeout)
        if reply is None:
            return _error(504, f"no chat worker answered within {timeout:g} s (WAN_ENHANCE_TIMEOUT_SECONDS); "
                               "the chat worker serves this route's work from chat_queue")
        if not reply.get("success"):
            return _error(_STATUS.get(reply.get("error_type"), 502), str(reply.get("error", "the chat worker failed")))
        reply.pop("id", None)
        return JSONResponse({**reply, "worker_id": worker.worker_id})

"""The OpenAI-compatible API: POST /v1/chat/completions (plain and streamed) and GET /v1/models.

The official `openai` client works against it unchanged (tested with it). The keys are the
backend routes' keys. A request goes through the same decode (workers/chat/service.py: context
fitting, bounds) and into the same continuous batch as /chat. Where it differs from OpenAI:
- `model`: a served name or hub id picks that model; any other is answered by the instruct
  model, as on the backend routes, and the reply's `model` says which model answered.
- `n` must be 1; tools, logprobs, images and JSON response formats are refused with a 400.
- vLLM's extensions are taken: `ignore_eos`, `repetition_penalty` (and `seed`, as OpenAI has it).
- A stream without `stream_options.include_usage` carries `usage` on its last chunk; with it,
  usage comes in a chunk of its own with no choices, as OpenAI sends it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.engine.errors import JobError
from shared.ops.logging import get_logger
from workers.chat.callers import Caller, CallerGone
from workers.chat.gate import Admitted, ChatHost, Gate, RequestRefused, Voice
from workers.chat.service import ChatJob, ChatRequests
from workers.chat.streaming import StreamedReply

log = get_logger(component="chat-openai")

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class CompletionBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    messages: list[_Message]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = 1
    ignore_eos: bool | None = False
    logprobs: bool | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class Refused(ValueError):
    """A request this API answers with a 400 and this message."""


def error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def _content(message: _Message, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise Refused(f"messages[{index}].content: only text parts are supported")
        texts.append(part["text"])
    return "".join(texts)


def service_body(body: CompletionBody) -> dict[str, Any]:
    """The request in the chat service's terms (what /chat takes), after refusing what is not served."""
    if (body.n or 1) != 1:
        raise Refused("n must be 1")
    if body.tools:
        raise Refused("tools are not supported")
    if body.logprobs:
        raise Refused("logprobs are not supported")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise Refused("only the text response format is supported")
    messages = []
    for i, message in enumerate(body.messages):
        if message.role not in ROLES:
            raise Refused(f"messages[{i}].role must be system, developer, user or assistant")
        messages.append({"role": ROLES[message.role], "content": _content(message, i)})
    mapped = {
        "messages": messages, "model": body.model,
        "max_tokens": body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        # OpenAI's defaults, not the backend routes' (0.7, 0.9): this API should behave like OpenAI's.
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty, "seed": body.seed, "ignore_eos": body.ignore_eos is True,
    }
    return {name: value for name, value in mapped.items() if value is not None}


def stop_sequences(body: CompletionBody) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise Refused("stop takes at most 4 sequences")
    return stops


OPENAI = Voice(error, unauthorized=("missing or invalid API key", {"code": "invalid_api_key"}),
               loading=("the model is loading", {"kind": "service_unavailable"}))


@dataclass(frozen=True)
class CompletionRequest:
    """A completion request as the chat service takes it, with what only this API asks for."""

    declared: CompletionBody
    mapped: dict[str, Any]  # the body in the service's terms (what /chat takes)
    stops: list[str]


def read_completion(raw: Any) -> CompletionRequest:
    try:
        body = CompletionBody.model_validate(raw)
        return CompletionRequest(body, service_body(body), stop_sequences(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RequestRefused(error(400, f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}")) \
            from None
    except Refused as exc:
        raise RequestRefused(error(400, str(exc))) from None


def add_openai_routes(app: FastAPI, worker: ChatHost, gate: Gate) -> None:
    stages = worker.stages
    started = int(time.time())
    ready = Depends(gate.admits(OPENAI))

    def model_card(requests: ChatRequests, name: str) -> dict[str, Any]:
        return {"id": requests.public_id(name), "object": "model", "created": started, "owned_by": "ourvidz"}

    @app.get("/v1/models")
    async def models(admitted: Admitted = ready) -> JSONResponse:
        requests = admitted.requests
        return JSONResponse({"object": "list", "data": [model_card(requests, n) for n in requests.model_names()]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, admitted: Admitted = ready) -> JSONResponse:
        cards = [model_card(admitted.requests, n) for n in admitted.requests.model_names()]
        card = next((c for c in cards if c["id"] == model_id), None)
        return JSONResponse(card) if card else error(404, f"model {model_id!r} is not served here",
                                                     code="model_not_found")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request,
                               admitted: Admitted = Depends(gate.admits(OPENAI, read_completion))):
        deadline, requests = admitted.deadline, admitted.requests
        body, stops = admitted.body.declared, admitted.body.stops
        caller = Caller(request, deadline)
        job = ChatJob(id=f"chatcmpl-{uuid.uuid4().hex}", kind="chat", body=admitted.body.mapped, stop=caller.stopped)
        try:
            plan = await run_in_threadpool(stages.plan, job)  # tokenizing is CPU work: off the event loop
            name = plan.input.model
            generation = StreamedReply(worker, plan, requests.tokenizer(name), stops, deadline,
                                       stream=bool(body.stream))
        except JobError as exc:
            caller.close()
            return error(400 if exc.error_type == "bad_request" else 503, exc.message)
        except TimeoutError:
            caller.close()
            return error(504, "generation timed out", kind="timeout")
        except RuntimeError as exc:  # the worker is stopping
            caller.close()
            return error(503, str(exc), kind="service_unavailable")
        envelope = {"id": job.id, "created": int(time.time()), "model": requests.public_id(name)}
        if body.stream:
            caller.close()  # the streamed response notices a client that leaves by itself
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_events(generation, envelope, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collecting = asyncio.ensure_future(_whole_text(generation))
        try:
            text = await caller.wait(collecting)
        except CallerGone:
            collecting.cancel()  # generation.text() frees the row as it is cancelled
            return error(499, "client closed the request")
        except TimeoutError:
            collecting.cancel()
            return error(504, "generation timed out", kind="timeout")
        except JobError as exc:
            if exc.error_type == "cancelled":  # the deadline passed on the engine's side first
                return error(504, "generation timed out", kind="timeout")
            log.error("chat_request_failed", error_type=exc.error_type)
            return error(500, f"internal error ({exc.error_type})", kind="server_error")
        finally:
            caller.close()
        return JSONResponse({
            **envelope, "object": "chat.completion", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": generation.finish_reason}],
            "usage": generation.usage(),
        })


async def _whole_text(generation: StreamedReply) -> str:
    return "".join([piece async for piece in generation.text()])


async def _events(generation: StreamedReply, envelope: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finishing chunk, usage, `[DONE]`."""

    def event(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra) -> str:
        usage = {"usage": None} if include_usage else {}
        return event({**envelope, "object": "chat.completion.chunk", "system_fingerprint": None,
                      "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                      **usage, **extra})

    try:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in generation.text():
                yield chunk({"content": piece})
        except TimeoutError:
            yield event({"error": {"message": "generation timed out", "type": "timeout", "code": None}})
            yield "data: [DONE]\n\n"
            return
        except JobError as exc:
            log.error("chat_request_failed", error_type=exc.error_type)
            yield event({"error": {"message": f"internal error ({exc.error_type})", "type": "server_error",
                                   "code": None}})
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            yield chunk({}, generation.finish_reason)
            yield event({**envelope, "object": "chat.completion.chunk", "system_fingerprint": None, "choices": [],
                         "usage": generation.usage()})
        else:
            yield chunk({}, generation.finish_reason, usage=generation.usage())
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()  # a client that left frees its row at the next step (no-op when done)

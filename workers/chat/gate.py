"""The prologue every chat route shares, as one FastAPI dependency: the key, readiness, and the body.

Order of checks: the body size (shared/ops/http.py, from Content-Length, before anything is read),
then the bearer key (compared in constant time), then readiness, then the body: read within its
bounds and deadline (workers/chat/callers.py) and read into the route's declaration. A request
refused on the way gets one JSON error in the shape its route speaks (the backend's
`{"success": false, "error"}` or OpenAI's `{"error": {...}}`), never a secret or a traceback.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.ops.engine_settings import ChatSettings
from shared.ops.logging import get_logger
from workers.chat.callers import BadBody, CallerGone, json_body
from workers.chat.service import ChatRequests

log = get_logger(component="chat-api")


class ChatPlanner(Protocol):
    def plan(self, job: Any) -> Any:
        """A chat request → the engine's input (workers/chat/stages.py)."""


class ChatHost(Protocol):
    """What the chat routes use of the worker they run in (shared/runtime/worker.py `Worker`)."""

    state: str
    worker_id: str
    stages: ChatPlanner

    def submit(self, plan: Any, stream: Callable[[Any], None] | None = None, deadline: float | None = None) -> Any: ...

    def cancel_local(self, task: Any) -> None: ...


class RequestRefused(Exception):
    """A request answered before it reached the engine, with this response."""

    def __init__(self, response: JSONResponse):
        super().__init__(response.status_code)
        self.response = response


class ApiKeys:
    """Who may call: `Authorization: Bearer` with CHAT_WORKER_API_KEY or WAN_WORKER_API_KEY."""

    def __init__(self, settings: ChatSettings, routes: str = "the chat API"):
        self.keys = [k.encode() for k in settings.api_keys()]
        # Routes a backend caller reaches without a key, by the settings that name them.
        self.open_routes = {route for route, allowed in (("/enhance", settings.allow_unauthenticated_enhance),
                                                         ("/chat", settings.allow_unauthenticated_chat),
                                                         ("/generate", settings.allow_unauthenticated_generate))
                            if allowed}
        if not self.keys:
            log.warning("chat_api_open", routes=routes, reason="neither CHAT_WORKER_API_KEY nor WAN_WORKER_API_KEY is set")

    def allow(self, header: str | None, route: str) -> bool:
        """A request to `route` with this Authorization header: a known key, or no header at all
        on a route an allowance opens. A wrong key is refused everywhere."""
        if not self.keys:
            return True  # no key configured: an open worker (logged at start)
        if route in self.open_routes and not header:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        token = header[len("Bearer "):].strip().encode()
        # Compare against every key, always, so timing says nothing about which one nearly matched.
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        return any(matches)


@dataclass(frozen=True)
class Voice:
    """How a family of routes words its refusals."""

    error: Callable[..., JSONResponse]  # (status, message, **shape) -> the response
    unauthorized: tuple[str, dict[str, Any]]  # message and shape of a 401
    loading: tuple[str, dict[str, Any]]  # message and shape of a 503 while the model loads


@dataclass(frozen=True)
class Admitted:
    """A request past the prologue: its body as the route declared it, the chat service, its deadline."""

    body: Any
    requests: ChatRequests
    deadline: float


class Gate:
    def __init__(self, worker: ChatHost, requests: Callable[[], ChatRequests | None], settings: ChatSettings):
        self.worker = worker
        self.requests = requests  # None until the model is loaded
        self.keys = ApiKeys(settings)
        self.timeout = settings.request_timeout_seconds

    def admits(self, voice: Voice,
               read: Callable[[Any], Any] | None = None) -> Callable[[Request], Awaitable[Admitted]]:
        """The dependency of a route: `read` turns the JSON body into what the route takes (raising
        RequestRefused), or the route has no body when None."""

        async def admitted(request: Request) -> Admitted:
            deadline = time.monotonic() + self.timeout
            if not self.keys.allow(request.headers.get("authorization"), request.url.path):
                message, shape = voice.unauthorized
                raise RequestRefused(voice.error(401, message, **shape))
            requests = self.requests()
            if self.worker.state not in ("ready", "busy") or requests is None:
                message, shape = voice.loading
                raise RequestRefused(voice.error(503, message, **shape))
            if read is None:
                return Admitted(None, requests, deadline)
            try:
                raw = await json_body(request)
            except BadBody as exc:
                raise RequestRefused(voice.error(400, str(exc))) from None
            except CallerGone:
                raise RequestRefused(voice.error(499, "client closed the request")) from None
            return Admitted(read(raw), requests, deadline)

        return admitted


def answer_refusals(app: FastAPI) -> None:
    """A refusal raised by a route's dependency is its answer."""

    @app.exception_handler(RequestRefused)
    async def refused(_request: Request, exc: RequestRefused) -> JSONResponse:
        return exc.response

"""Every worker's HTTP side on a maintained server: FastAPI under uvicorn, on a background thread.

`/health` and `/metrics` for every worker; an engine may add routes (the chat API). uvicorn
listens with a deep backlog and keeps connections alive, so hundreds of concurrent callers are
queued by the kernel and served, never reset (the stdlib server's backlog is 5). Bodies larger
than the limit are refused from their Content-Length (or as they stream) before being read.

uvicorn bounds none of a request's reading: a client that sends half a head, or a Content-Length
it never fills, holds its connection (and a file descriptor) for as long as it likes.
`GuardedProtocol` gives each request a deadline for its head and one for its body (408 and
close past either), and answers connections past `max_connections` with a 503 and a close;
idle keep-alive connections are let go sooner while the server is crowded.
"""

from __future__ import annotations

import asyncio
import json
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

BACKLOG = 2048
KEEP_ALIVE_SECONDS = 75  # longer than common client pools' idle timeout


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, checked before the route reads it; a client
    that leaves mid-body ends its request quietly, whichever route was reading."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _too_large(send, self.max_bytes)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.max_bytes)
        except ClientDisconnect:
            pass  # the client left (or was timed out) mid-body: no one to answer, nothing to log


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    response = JSONResponse({"success": False, "error": f"body larger than {limit} bytes"}, status_code=413,
                            headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def worker_app(health: Callable[[], tuple[int, dict[str, Any]]], metrics: Callable[[], bytes],
               max_body_bytes: int = 1024 * 1024) -> FastAPI:
    """The app every worker serves; engines add their routes to it before it starts."""
    app = FastAPI(title="ourvidz worker", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.get("/health")
    async def _health() -> JSONResponse:  # on the event loop: no thread hop for a probe that reads a flag
        status, body = health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    def _metrics() -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a request may take to arrive, and how many connections may be open (see the module doc)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000
    crowded_keep_alive: float = 1.0  # idle keep-alive past half of max_connections


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"success": False, "error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and a connection bound (`limits`, set per server)."""

    limits = ConnectionLimits()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._reading: str | None = None  # "head" or "body": the part of a request being waited for
        self._read_timer: asyncio.TimerHandle | None = None
        self._over_limit = len(self.connections) > self.limits.max_connections
        if self._over_limit:
            self.app = self._refuse  # answered as soon as its head arrives; a silent one is closed at 1 s
        self._watch_reading()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_reading()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None and len(self.connections) > self.limits.max_connections // 2:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = self.loop.call_later(self.limits.crowded_keep_alive,
                                                                self.timeout_keep_alive_handler)
        self._watch_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _watch_reading(self) -> None:
        """Arm the deadline of whatever part of a request is being waited for (none while idle
        between requests: keep-alive bounds that, nor while the answer is being made)."""
        if self.transport.is_closing():
            return self._arm(None)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm("body")
        elif state is h11.IDLE and (self.cycle is None or self.conn.trailing_data[0]):
            self._arm("head")  # a new connection, or the first bytes of the next request
        else:
            self._arm(None)

    def _arm(self, part: str | None) -> None:
        if part == self._reading:
            return  # a deadline counts from the start of its part, however the bytes trickle in
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._reading, self._read_timer = part, None
        if part is not None:
            seconds = self.limits.header_timeout if part == "head" else self.limits.body_timeout
            if self._over_limit:
                seconds = min(seconds, 1.0)
            self._read_timer = self.loop.call_later(seconds, self._too_slow, part, seconds)

    def _too_slow(self, part: str, seconds: float) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        started = self.cycle is not None and not self.cycle.response_complete and self.cycle.response_started
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the route, if one runs, hears a disconnect and sends nothing
            self.cycle.message_event.set()
        if not started and (part == "body" or self.conn.trailing_data[0]):
            self.transport.write(_raw_response(408, "Request Timeout",
                                               f"the request {part} did not arrive within {seconds:g} s"))
        self.transport.close()

    async def _refuse(self, scope, receive, send) -> None:
        body = json.dumps({"success": False, "error": f"the server has {self.limits.max_connections} connections "
                                                      "open, its limit: try again shortly"}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"connection", b"close"), (b"retry-after", b"1"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _raise_open_files_limit() -> None:
    """Let the process use every descriptor it is allowed (a soft limit of 1024 is common)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class HttpServer:
    """uvicorn on a daemon thread. Port 0 picks a free port (see `.port` after `start`)."""

    def __init__(self, app: FastAPI, host: str = "0.0.0.0", port: int = 0,
                 limits: ConnectionLimits | None = None):
        protocol = type("WorkerHttpProtocol", (GuardedProtocol,), {"limits": limits or ConnectionLimits()})
        config = uvicorn.Config(app, host=host, port=port, backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE_SECONDS,
                                access_log=False, log_config=None, lifespan="off", http=protocol)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # the worker owns SIGTERM
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self.port = port

    def _serve(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 10.0) -> HttpServer:
        _raise_open_files_limit()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server did not start on port {self.port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)

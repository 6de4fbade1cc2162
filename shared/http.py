"""Every worker's HTTP side on a maintained server: FastAPI under uvicorn, on a background thread.

`/health` and `/metrics` for every worker; an engine may add routes (the chat API). uvicorn
listens with a deep backlog and keeps connections alive, so hundreds of concurrent callers are
queued by the kernel and served, never reset (the stdlib server's backlog is 5). Bodies larger
than the limit are refused from their Content-Length (or as they stream) before being read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

BACKLOG = 2048
KEEP_ALIVE_SECONDS = 75  # longer than common client pools' idle timeout


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, checked before the route reads it."""

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


class HttpServer:
    """uvicorn on a daemon thread. Port 0 picks a free port (see `.port` after `start`)."""

    def __init__(self, app: FastAPI, host: str = "0.0.0.0", port: int = 0):
        config = uvicorn.Config(app, host=host, port=port, backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE_SECONDS,
                                access_log=False, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # the worker owns SIGTERM
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self.port = port

    def _serve(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 10.0) -> HttpServer:
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

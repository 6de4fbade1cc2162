"""The caller of a chat route, followed from its body to its answer: still there, and until when.

A request that waits for its whole answer (every non-streamed route) never hears from its client
again, so it watches the connection for the client leaving (uvicorn says `http.disconnect`) beside
the answer, and keeps the request's deadline, counted from its arrival. Whichever comes first
ends the wait; the route then frees the row at the engine's next step (`Worker.cancel_local`),
and the row's outcome is counted once, as cancelled. Decode polls `stopped()` too, so fitting a
long conversation ends with its caller.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from shared.ops import bounded_json


class CallerGone(Exception):
    """The client closed its connection before its answer was ready."""


class BadBody(ValueError):
    """A body that is not read: the message says why (answered with a 400)."""


async def json_body(request: Request) -> Any:
    """The request's JSON, read within bounds (size by the middleware, depth and numbers here)."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise CallerGone from None
    try:
        return bounded_json.loads(raw)
    except bounded_json.JsonRefused as exc:
        reason = str(exc)
        raise BadBody(f"body is not valid JSON ({reason})" if reason.startswith("not ") else
                      f"body refused: {reason}") from None


class Caller:
    """One client of a route, from the moment its body has been read (see the module doc)."""

    def __init__(self, request: Request, deadline: float):
        self.deadline = deadline  # time.monotonic()
        self.gone = threading.Event()  # read by decode on a worker thread
        self._watch = asyncio.ensure_future(self._until_gone(request))

    async def _until_gone(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.gone.set()

    def stopped(self) -> bool:
        return self.gone.is_set() or time.monotonic() > self.deadline

    async def wait(self, answer: asyncio.Future) -> Any:
        """`answer`'s result; `CallerGone` if the client left first, `TimeoutError` past the deadline.
        `answer` is never cancelled here: the caller of this decides what to stop."""
        remaining = max(0.0, self.deadline - time.monotonic())
        await asyncio.wait({answer, self._watch}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        if self.gone.is_set():
            raise CallerGone
        raise TimeoutError

    def close(self) -> None:
        """Stop watching (a streamed response watches the connection itself)."""
        self._watch.cancel()

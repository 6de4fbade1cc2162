"""One retry rule for every remote call: exponential backoff with full jitter, transient errors only."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx

T = TypeVar("T")


class TransientError(Exception):
    """Worth trying again: a 5xx, 408 or 429 answer, a timeout, a dropped connection."""


class PermanentError(Exception):
    """Trying again will not help: a 4xx answer. `status` and `detail` say what the remote said."""

    def __init__(self, message: str, status: int | None = None, detail: str = ""):
        super().__init__(message)
        self.status = status
        self.detail = detail


def is_transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def backoff_delays(attempts: int, base: float, cap: float = 30.0) -> Iterator[float]:
    """Delays to sleep between `attempts` tries: full jitter over an exponentially growing window."""
    for i in range(attempts - 1):
        yield random.uniform(0, min(cap, base * 2**i))


def with_retries(
    call: Callable[[], T], attempts: int, base: float, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Run `call`, retrying TransientError and httpx transport errors; PermanentError passes through."""
    delays = backoff_delays(attempts, base)
    while True:
        try:
            return call()
        except (TransientError, httpx.TransportError):
            delay = next(delays, None)
            if delay is None:
                raise
            sleep(delay)

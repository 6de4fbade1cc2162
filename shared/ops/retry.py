"""One retry rule for every remote call: exponential backoff with full jitter, transient errors only."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpx
import redis

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


def doubling_delays(attempts: int, first: float, cap: float) -> Iterator[float]:
    """Delays between `attempts` tries: `first`, then doubling up to `cap` (no jitter: one worker)."""
    delay = first
    for _ in range(attempts - 1):
        yield delay
        delay = min(delay * 2, cap)


def retrying(call: Callable[[], T], errors: tuple[type[BaseException], ...], delays: Iterable[float],
             sleep: Callable[[float], None] = time.sleep,
             on_retry: Callable[[BaseException, float], None] | None = None) -> T:
    """The one retry loop: run `call`; on one of `errors`, sleep the next delay and try again;
    when the delays run out, the last error is raised."""
    delays = iter(delays)
    while True:
        try:
            return call()
        except errors as exc:
            delay = next(delays, None)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)


def with_retries(
    call: Callable[[], T], attempts: int, base: float, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Run `call`, retrying TransientError and httpx transport errors; PermanentError passes through."""
    return retrying(call, (TransientError, httpx.TransportError), backoff_delays(attempts, base), sleep)


REDIS_RETRY_ATTEMPTS = 8  # about 30 s of backoff


def retry_redis(log, call: Callable[[], T], attempts: int = REDIS_RETRY_ATTEMPTS) -> T:
    """Redis blips must not strand a finished job: retry with backoff before giving up."""
    return retrying(call, (redis.RedisError,), doubling_delays(attempts, 0.25, 15.0),
                    on_retry=lambda exc, delay: log.warning("redis_retry", error=str(exc), retry_in=delay))


def quietly(log, call: Callable[[], Any]) -> None:
    """Bookkeeping only (which jobs are on the engine): a Redis error is logged and the job goes on."""
    try:
        call()
    except redis.RedisError as exc:
        log.warning("redis_bookkeeping_failed", error=str(exc))

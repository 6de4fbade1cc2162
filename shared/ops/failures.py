"""Which unexpected exceptions are worth another attempt, and which fail the job at once.

A job is retried (up to MAX_ATTEMPTS, on this or another worker) only when another try can
succeed: a lost connection to Redis, storage or the callback endpoint, GPU memory that was short
this time, a device fault. Everything else (a `TypeError` or `ValueError` from pipeline
arguments, a missing dependency, a bug) would fail the same way every time, so the job fails
now with `internal_error` instead of burning every attempt on the GPU.
"""

from __future__ import annotations

import httpx
import redis

from shared.engine.errors import JobError

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
# torch is not imported here (the runtime knows nothing of it); its errors are known by name.
_TRANSIENT_NAMES = {"OutOfMemoryError", "AcceleratorError"}
_DEVICE_FAULT_MARKERS = ("CUDA error", "CUDA out of memory", "CUBLAS_STATUS", "cuDNN error", "NCCL error")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, JobError):
        return exc.retryable
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _DEVICE_FAULT_MARKERS)


def as_job_error(exc: BaseException, stage: str) -> JobError:
    """An unexpected exception from `stage` (prepare, engine, publish) as the job's failure."""
    if isinstance(exc, JobError):
        return exc
    transient = is_transient(exc)
    detail = f"{type(exc).__name__}: {exc}"[:500]
    if transient:
        return JobError("internal_error", f"{stage} failed, will retry: {detail}", retryable=True)
    return JobError("internal_error", f"{stage} failed: {detail} (an error that would repeat on every "
                                      "attempt, so the job is not retried)")

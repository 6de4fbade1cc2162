"""What an engine is to the runtime: `setup(device)` once, then `run(inputs, ctx) -> outcomes`.

An engine only computes. It gets model-facing inputs (`shared.inputs`), never a payload, a queue
or a bucket; it imports no Redis, HTTP, storage, callback or fetch module (import-linter checks
this, see pyproject.toml); and it keeps nothing about a job once `run` returns. A `RunContext`
lets it report progress and learn, between steps, that an input must stop.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from shared.errors import JobError


class RunContext(Protocol):
    def check(self, item: Any) -> None:
        """Raise JobError('cancelled' | 'timeout' | 'shutdown') if this input must stop now."""

    def progress(self, item: Any, step: int, total: int) -> None:
        """Report progress; the runtime throttles what reaches the backend."""


class Engine:
    """Base class: override `setup` and `run`; the rest has sensible defaults."""

    name: str = "engine"
    max_batch_images: int = 1  # outputs per run() call
    batch_wait_ms: int | None = None  # how long a batch waits for company; None: the fleet's BATCH_WAIT_MS

    def setup(self, device: str) -> None:
        """Load weights and warm up; the worker reports ready only after this returns."""

    def batch_key(self, item: Any) -> Hashable | None:
        """Inputs with equal keys may share one run() call; None means this input runs alone."""
        return None

    def cost(self, item: Any) -> int:
        """How much of `max_batch_images` this input takes (images or videos it makes)."""
        return getattr(item, "count", 1)

    def run(self, items: list[Any], ctx: RunContext) -> list[Any | JobError]:
        """One outcome per input, in order: a result, or the JobError that input ended with."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "max_batch_images": self.max_batch_images}


class NoStops:
    """A run context that never stops an input and drops progress (benchmarks, the serverless handler)."""

    def check(self, item: Any) -> None:
        pass

    def progress(self, item: Any, step: int, total: int) -> None:
        pass

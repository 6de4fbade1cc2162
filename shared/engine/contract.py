"""What an engine is to the runtime: `setup(device)` once, then `run(inputs, ctx) -> outcomes`.

An engine only computes. It gets model-facing inputs (`shared.engine.inputs`), never a payload, a queue
or a bucket; it imports no Redis, HTTP, storage, callback or fetch module (import-linter checks
this, see pyproject.toml); and it keeps nothing about a job once `run` returns. A `RunContext`
lets it report progress and learn, between steps, that an input must stop.

A *continuous* engine (`continuous = True`, the chat engine) keeps one `run` going while work
arrives: between steps it takes newly ready inputs with `ctx.admit`, and hands each outcome back
with `ctx.finish` the moment that input is done, so a short request never waits for a long one.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from shared.engine.errors import JobError


class RunContext(Protocol):
    def check(self, item: Any) -> None:
        """Raise JobError('cancelled' | 'timeout' | 'shutdown') if this input must stop now."""

    def progress(self, item: Any, step: int, total: int) -> None:
        """Report progress; the runtime throttles what reaches the backend."""

    def emit(self, item: Any, output: Any) -> None:
        """Partial output (new tokens) for a caller that streams; dropped when nobody does."""

    # Continuous engines only:
    def admit(self, budget: int) -> list[Any]:
        """Inputs that became ready since the last call, compatible with the running ones, up to
        `budget` in `cost`; [] when none wait, or when an input of another kind is next in line."""

    def finish(self, item: Any, outcome: Any) -> None:
        """This input is done (a result or a JobError): its outcome goes out now."""


class Engine:
    """Base class: override `setup` and `run`; the rest has sensible defaults."""

    name: str = "engine"
    max_batch_images: int = 1  # outputs per run() call
    batch_wait_ms: int | None = None  # how long a batch waits for company; None: the fleet's BATCH_WAIT_MS
    # True: run() admits inputs between steps and finishes each through ctx.finish (see above);
    # it returns once none are left, and its return value is ignored.
    continuous: bool = False
    rows: int = 0  # a continuous engine's requests on it now (ourvidz_engine_rows); batch engines leave 0

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

    def emit(self, item: Any, output: Any) -> None:
        pass

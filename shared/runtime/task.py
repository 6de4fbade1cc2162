"""A job on its way through a worker: where it came from, what decode made of it, how far it got."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from shared.decode.decoder import Plan
from shared.source.queue import Claimed


@dataclass
class Task:
    """One job on its way through the worker."""

    job_id: str
    claimed: Claimed | None = None  # held in a Redis queue; None for a local (HTTP) submission
    job: Any = None
    plan: Plan | None = None
    future: Future | None = None  # a local submission's answer
    prepared_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    last_progress: float = 0.0
    progress_sent: list[Future] = field(default_factory=list)  # awaited before the terminal report
    stream: Callable[[Any], None] | None = None  # a local caller that wants partial output (never blocks)
    cancel_requested: bool = False  # a local caller gave up (disconnected, a stop sequence was met)
    deadline: float | None = None  # a local caller's time.monotonic() past which it no longer waits
    step: int = 0  # denoising (or decoding) step reached on the engine, of `total_steps`
    total_steps: int = 0

    @property
    def input(self) -> Any:
        return self.plan.input if self.plan else None

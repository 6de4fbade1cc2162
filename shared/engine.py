"""What an engine is to the runtime: `setup(device)` once, then `run(batch) -> results`.

An engine knows nothing of Redis, HTTP or buckets. It gets parsed `Job`s and a `RunContext`
to report progress and to learn, between steps, that a job was cancelled or ran out of time.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from shared.contract import Job, JobError


@dataclass
class ImageOutput:
    image: Image.Image
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class VideoOutput:
    frames: np.ndarray | list[Image.Image]  # (T, H, W, 3) uint8, or PIL frames
    fps: int
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobResult:
    """Everything one job produced, plus job-level callback metadata (final_prompt, …)."""

    job: Job
    items: list[ImageOutput | VideoOutput]
    metadata: dict[str, Any] = field(default_factory=dict)


class RunContext(Protocol):
    def check(self, job: Job) -> None:
        """Raise JobError('cancelled' | 'timeout' | 'shutdown') if `job` must stop now."""

    def progress(self, job: Job, step: int, total: int) -> None:
        """Report progress; the runtime throttles what reaches the backend."""


class Engine:
    """Base class: override `setup` and `run`; the rest has sensible defaults."""

    name: str = "engine"
    queues: tuple[str, ...] = ()
    job_types: tuple[str, ...] | None = None  # None: every type routed to its queues
    max_batch_images: int = 1  # images (or videos) per run() call
    announce_function: str | None = None  # backend function told this worker's RunPod URL, if any

    def setup(self, device: str) -> None:
        """Load weights and warm up; the worker reports ready only after this returns."""

    def prepare(self, job: Job) -> Job:
        """Work that can run ahead of the GPU (reference downloads). Runs on the claim thread."""
        return job

    def batch_key(self, job: Job) -> Hashable | None:
        """Jobs with equal keys may share one run() call; None means this job runs alone."""
        return None

    def cost(self, job: Job) -> int:
        return job.num_images

    def run(self, jobs: list[Job], ctx: RunContext) -> list[JobResult | JobError]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "queues": list(self.queues), "max_batch_images": self.max_batch_images}


class NoStops:
    """A run context that never stops a job and drops progress (benchmarks, the serverless handler)."""

    def check(self, job: Job) -> None:
        pass

    def progress(self, job: Job, step: int, total: int) -> None:
        pass

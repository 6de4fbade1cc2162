"""A stand-in for a GPU model: sleeps a set GPU time per output and draws real images and videos.

It serves the SDXL and WAN queues with the whole runtime around it, so load tests, the fleet
benchmark and the README demo exercise everything but the model. Outputs are a pure function of
(seed, size, frame index): the same seed always gives the same pixels.
"""

from __future__ import annotations

import time
from collections.abc import Hashable

import numpy as np
from PIL import Image

from shared import keys
from shared.contract import Job, JobError
from shared.engine import Engine, ImageOutput, JobResult, RunContext, VideoOutput


def draw_frame(seed: int, width: int, height: int, t: float = 0.0) -> np.ndarray:
    """Smooth colour waves chosen by the seed; `t` moves them for video frames.

    Drawn at most 128 px wide and scaled up: smooth waves survive that, and drawing stays far
    cheaper than the simulated GPU time it stands in for.
    """
    rng = np.random.default_rng(seed)
    freq = rng.uniform(1.0, 6.0, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    scale = min(1.0, 128 / max(width, height))
    small_w, small_h = max(2, round(width * scale)), max(2, round(height * scale))
    y = np.linspace(0.0, 1.0, small_h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, small_w, dtype=np.float32)[None, :]
    channels = [
        0.5 + 0.5 * np.sin(2 * np.pi * (freq[c, 0] * x + freq[c, 1] * y) + phase[c] + 2 * np.pi * t)
        for c in range(3)
    ]
    small = Image.fromarray((np.stack(channels, axis=-1) * 255).astype(np.uint8))
    if (small_w, small_h) != (width, height):
        small = small.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(small)


class SimEngine(Engine):
    name = "sim"
    queues = keys.JOB_QUEUES

    def __init__(self, gpu_seconds: float = 1.0, max_batch_images: int = 1):
        self.gpu_seconds = gpu_seconds
        self.max_batch_images = max_batch_images
        self.device = "cpu"

    def setup(self, device: str) -> None:
        self.device = device

    def batch_key(self, job: Job) -> Hashable | None:
        if self.max_batch_images <= 1:
            return None
        return (job.engine, job.media, job.width, job.height, job.steps, job.guidance_scale, job.frames)

    def _simulate_gpu(self, job: Job, ctx: RunContext, started: float, done_before: int, total: int) -> None:
        """Wait out the rest of this output's GPU time in step-sized slices, as a sampler would:
        cancellation and progress behave as they do on a GPU, and drawing counts as GPU time."""
        steps = max(1, job.steps)
        per_step = self.gpu_seconds / steps
        for step in range(steps):
            ctx.check(job)
            remaining = started + (step + 1) * per_step - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            ctx.progress(job, done_before * steps + step + 1, total * steps)

    def run(self, jobs: list[Job], ctx: RunContext) -> list[JobResult | JobError]:
        results: list[JobResult | JobError] = []
        for job in jobs:
            try:
                items: list[ImageOutput | VideoOutput] = []
                for index, seed in enumerate(job.image_seeds()):
                    started = time.monotonic()
                    ctx.check(job)
                    meta = {"engine": "sim"}
                    if job.media == "video":
                        frames = np.stack(
                            [draw_frame(seed, job.width, job.height, i / job.fps) for i in range(job.frames)]
                        )
                        items.append(VideoOutput(frames=frames, fps=job.fps, seed=seed, metadata=meta))
                    else:
                        image = Image.fromarray(draw_frame(seed, job.width, job.height))
                        items.append(ImageOutput(image=image, seed=seed, metadata=meta))
                    self._simulate_gpu(job, ctx, started, index, job.num_images)
                results.append(JobResult(job=job, items=items))
            except JobError as exc:
                results.append(exc)
        return results

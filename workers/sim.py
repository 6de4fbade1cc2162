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
    """Smooth colour waves chosen by the seed; `t` moves them for video frames."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(1.0, 6.0, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    channels = [
        0.5 + 0.5 * np.sin(2 * np.pi * (freq[c, 0] * x + freq[c, 1] * y) + phase[c] + 2 * np.pi * t)
        for c in range(3)
    ]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


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

    def _simulate_gpu(self, job: Job, ctx: RunContext, seconds: float, done_before: int, total: int) -> None:
        # Sleep in step-sized slices so cancellation and progress behave as they do on a GPU.
        steps = max(1, job.steps)
        per_step = seconds / steps
        for step in range(steps):
            ctx.check(job)
            time.sleep(per_step)
            ctx.progress(job, done_before * steps + step + 1, total * steps)

    def run(self, jobs: list[Job], ctx: RunContext) -> list[JobResult | JobError]:
        results: list[JobResult | JobError] = []
        for job in jobs:
            try:
                items: list[ImageOutput | VideoOutput] = []
                for index, seed in enumerate(job.image_seeds()):
                    self._simulate_gpu(job, ctx, self.gpu_seconds, index, job.num_images)
                    meta = {"engine": "sim"}
                    if job.media == "video":
                        frames = np.stack(
                            [draw_frame(seed, job.width, job.height, i / job.fps) for i in range(job.frames)]
                        )
                        items.append(VideoOutput(frames=frames, fps=job.fps, seed=seed, metadata=meta))
                    else:
                        image = Image.fromarray(draw_frame(seed, job.width, job.height))
                        items.append(ImageOutput(image=image, seed=seed, metadata=meta))
                results.append(JobResult(job=job, items=items, metadata={"final_prompt": job.prompt}))
            except JobError as exc:
                results.append(exc)
        return results

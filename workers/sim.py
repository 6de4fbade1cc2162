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

from shared.engine.contract import Engine, RunContext
from shared.engine.errors import JobError
from shared.engine.inputs import Generated, Generation, ImageOutput, VideoOutput


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

    def __init__(self, gpu_seconds: float = 1.0, max_batch_images: int = 1):
        self.gpu_seconds = gpu_seconds
        self.max_batch_images = max_batch_images
        self.device = "cpu"

    def setup(self, device: str) -> None:
        self.device = device

    def batch_key(self, item: Generation) -> Hashable | None:
        if self.max_batch_images <= 1:
            return None
        return (item.media, item.width, item.height, item.steps, item.guidance_scale, item.frames)

    def _simulate_gpu(self, item: Generation, ctx: RunContext, started: float, done_before: int, total: int) -> None:
        """Wait out the rest of this output's GPU time in step-sized slices, as a sampler would:
        cancellation and progress behave as they do on a GPU, and drawing counts as GPU time."""
        steps = max(1, item.steps)
        per_step = self.gpu_seconds / steps
        for step in range(steps):
            ctx.check(item)
            remaining = started + (step + 1) * per_step - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            ctx.progress(item, done_before * steps + step + 1, total * steps)

    def run(self, items: list[Generation], ctx: RunContext) -> list[Generated | JobError]:
        results: list[Generated | JobError] = []
        for item in items:
            try:
                outputs: list[ImageOutput | VideoOutput] = []
                for index, seed in enumerate(item.seeds):
                    started = time.monotonic()
                    ctx.check(item)
                    meta = {"engine": "sim"}
                    if item.media == "video":
                        frames = np.stack(
                            [draw_frame(seed, item.width, item.height, i / item.fps) for i in range(item.frames)]
                        )
                        outputs.append(VideoOutput(frames=frames, fps=item.fps, seed=seed, metadata=meta))
                    else:
                        outputs.append(ImageOutput(pixels=draw_frame(seed, item.width, item.height), seed=seed,
                                                   metadata=meta))
                    self._simulate_gpu(item, ctx, started, index, item.count)
                results.append(Generated(items=outputs))
            except JobError as exc:
                results.append(exc)
        return results

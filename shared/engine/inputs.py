"""What an engine is given and what it gives back: model-facing data, nothing about transport.

Decode (ahead of the GPU) turns a job into a `Generation`: prompts, size, steps, guidance,
scheduler, seeds, the reference images already fetched and fitted, and the step-cache policy.
No user id, queue, bucket, raw payload or contract era: an engine cannot depend on them.
An engine answers each input with a `Generated` (the pictures or frames, and facts about how
they were made) or a `JobError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Generation:
    """One image or video job as the model sees it."""

    id: str  # opaque to the engine: what stop checks and progress are reported against
    media: str  # image | video
    prompt: str  # the text to encode (Compel weights joined, enhancement applied)
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    seeds: tuple[int, ...]  # one output per seed
    compel: bool = False  # read weighting syntax in the prompt
    mode: str = "txt2img"  # txt2img | img2img | video: how the diffusers pipeline is called
    frames: int = 1
    fps: int = 16
    shift: float | None = None
    reference: Image.Image | None = field(default=None, repr=False, compare=False)  # img2img source, fitted
    denoise_strength: float | None = None  # img2img only
    reference_frames: tuple[Image.Image, ...] = field(default=(), repr=False, compare=False)  # video, fitted
    reference_mode: str = "none"  # video: none | single | start | end | both (as applied)
    step_cache: bool = False  # the preset allows an approximate step cache (fast presets)

    @property
    def count(self) -> int:
        return len(self.seeds)


class ImageOutput:
    """One picture. Engines may hand over raw pixels ((H, W, 3) floats in [0, 1] or uint8): turning
    them into an image (about 30 ms at 1024x1024) then happens behind the GPU, on first use."""

    def __init__(self, image: Image.Image | None = None, seed: int = 0, metadata: dict[str, Any] | None = None,
                 pixels: np.ndarray | None = None):
        if image is None and pixels is None:
            raise ValueError("an ImageOutput needs an image or pixels")
        self._image, self._pixels = image, pixels
        self.seed = seed
        self.metadata = metadata if metadata is not None else {}

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            pixels = self._pixels
            if pixels.dtype != np.uint8:
                pixels = (np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            self._image, self._pixels = Image.fromarray(pixels), None
        return self._image


@dataclass
class VideoOutput:
    frames: np.ndarray | list[Image.Image]  # (T, H, W, 3) uint8, or PIL frames
    fps: int
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generated:
    """Everything one input produced, plus facts for the callback's job-level metadata."""

    items: list[ImageOutput | VideoOutput]
    metadata: dict[str, Any] = field(default_factory=dict)

"""What the fleet knows of a job once its payload is read: the typed `Job`.

`shared/decode/contract.py` turns a payload of either era into a `Job`; everything downstream (decode,
delivery, the CLI) reads this one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shared.decode.prompt_weights import weighted_prompt
from shared.source.element import Era

V2_BUCKET = "workspace-temp"


@dataclass(frozen=True)
class References:
    image_url: str | None = None  # img2img source, or WAN single reference
    start_url: str | None = None  # WAN first frame
    end_url: str | None = None  # WAN last frame
    denoise_strength: float | None = None  # image-to-image only
    reference_type: str | None = None  # style | composition | character
    reference_mode: str | None = None  # v2: copy | modify
    video_reference_mode: str = "none"  # none | single | start | end | both
    exact_copy: bool = False


@dataclass(frozen=True)
class Job:
    id: str
    type: str
    user_id: str
    engine: str  # sdxl | wan
    media: str  # image | video
    quality: str  # fast | high
    queue: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    num_images: int
    seed: int
    seed_from_payload: bool
    frames: int = 1
    fps: int = 16
    shift: float | None = None
    enhance_prompt: bool = False
    mode: str = "txt2img"  # txt2img | img2img | video: how the diffusers pipeline is called
    references: References = field(default_factory=References)
    compel_enabled: bool = False
    compel_weights: str | None = None  # Compel syntax, applied only when compel_enabled
    requested_size: tuple[int, int] | None = None  # the size the payload asked for, if it gave one

    @property
    def encoder_prompt(self) -> str:
        """The text the text encoder reads: the prompt, with the Compel weights when they apply."""
        if self.compel_enabled and self.compel_weights:
            return weighted_prompt(self.prompt, self.compel_weights)
        return self.prompt

    def image_seeds(self) -> list[int]:
        """Image i of a job uses seed + i, so every image can be reproduced on its own."""
        return [self.seed + i for i in range(self.num_images)]

    def bucket(self, era: Era) -> str:
        return self.type if era == "v1" else V2_BUCKET

    def with_changes(self, **changes) -> Job:
        return replace(self, **changes)

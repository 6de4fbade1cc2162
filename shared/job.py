"""What the fleet knows of a job once its payload is read: the typed `Job`, and the element's unwrapping.

`shared/contract.py` turns a payload of either era into a `Job`; everything downstream (decode,
delivery, the CLI) reads this one shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shared import bounded_json, keys
from shared.errors import BadPayload
from shared.prompt_weights import weighted_prompt

Era = Literal["v1", "v2"]
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ID_FIELDS = ("id", "job_id", "jobId")
# Real elements are a few KiB (prompts are capped at 10,000 characters); this leaves room for any of them.
MAX_ELEMENT_BYTES = 1024 * 1024
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
    pipeline: str = "txt2img"  # txt2img | img2img | video
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


# ------------------------------------------------------------------------------- decoding


def decode_element(raw: str | bytes | dict | list) -> dict[str, Any]:
    """One queue element → the payload object, whatever wrapping the backend's era used.

    Read within bounds (shared/bounded_json.py: size, depth, number length); an element that
    cannot be read raises `BadPayload` carrying the job id whenever its top level names one.
    """
    if isinstance(raw, str | bytes) and len(raw) > MAX_ELEMENT_BYTES:
        raise BadPayload(f"payload is {len(raw)} bytes, the limit is {MAX_ELEMENT_BYTES}", element_job_id(raw),
                         error_type="bad_payload")
    if isinstance(raw, str) and not _is_utf8(raw):  # bytes that were not UTF-8, as the Redis client hands them over
        raise BadPayload("payload is not UTF-8 text", element_job_id(raw), error_type="bad_payload")
    value: Any = raw
    for _ in range(4):  # text → array → text → object is the deepest real wrapping
        if isinstance(value, str | bytes):
            try:
                value = bounded_json.loads(value)
            except bounded_json.JsonRefused as exc:
                raise BadPayload(f"payload is {exc}" if str(exc).startswith("not ") else f"payload: {exc}",
                                 element_job_id(raw), error_type="bad_payload") from None
            continue
        if isinstance(value, list):
            if len(value) != 1:
                raise BadPayload(f"payload is an array of {len(value)} elements, expected one", error_type="bad_payload")
            value = value[0]
            continue
        break
    if not isinstance(value, dict):
        raise BadPayload(f"payload is a JSON {type(value).__name__}, expected an object", error_type="bad_payload")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def peek_job_id(payload: dict[str, Any]) -> str | None:
    """The job id, if one that is safe to send back can be read at all."""
    for key in ID_FIELDS:
        value = payload.get(key)
        if isinstance(value, str) and SAFE_ID.match(value):
            return value
    return None


def element_job_id(raw: Any) -> str | None:
    """The job id a queue element carries at its top level, read even when the element as a whole
    cannot be (too deep, too long, broken): the id its failure is reported under, or None."""
    if isinstance(raw, dict):
        return peek_job_id(raw)
    if not isinstance(raw, str | bytes):
        return None
    return bounded_json.top_level_string(raw, ID_FIELDS, lambda value: bool(SAFE_ID.match(value)))


def queue_for_type(job_type: str) -> str:
    if job_type.startswith("chat") or job_type in ("enhance",):
        return keys.CHAT_QUEUE
    return keys.SDXL_QUEUE if job_type.startswith("sdxl_") else keys.WAN_QUEUE

"""The job payload of both eras, declared: each field with every name the eras give it.

A null or empty value counts as absent, so the next name in line is used (the backend sometimes
sends both). Validators raise the fleet's own `JobError`/`BadPayload` (pydantic passes those
through untouched), with messages that name the value, and read the bounds and the job id from
the validation context: `Payload.model_validate(obj, context={"presets": ..., "job_id": ...})`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.engine.errors import BadPayload, JobError
from shared.ops import bounded_json
from shared.ops.numbers import NumberRefused, read_number
from shared.source.element import SAFE_ID

VIDEO_MODES = ("none", "single", "start", "end", "both")


def _ctx(info: ValidationInfo) -> dict[str, Any]:
    return info.context or {}


def _bad(info: ValidationInfo, message: str) -> JobError:
    return JobError("invalid_parameter", message, job_id=_ctx(info).get("job_id"))


def _number(name: str, value: Any, kind: type, info: ValidationInfo, bounds_key: str | None = None) -> Any:
    bounds = _ctx(info)["presets"].bounds.get(bounds_key or name) if "presets" in _ctx(info) else None
    low, high = bounds if bounds is not None else (None, None)
    try:
        return kind(read_number(name, value, whole=kind is int, low=low, high=high))
    except NumberRefused as exc:
        raise _bad(info, str(exc)) from None


def flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class _Section(BaseModel):
    """A part of a payload: unknown fields ignored, and a null or empty value counts as absent
    (so the next alias in line is used, as the backend sometimes sends both names)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _absent_values(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None and v != ""} if isinstance(data, dict) else data


_INTS = {"steps": "steps", "width": "width", "height": "height", "num_images": "num_images", "frames": "frames",
         "fps": "fps"}
_FLOATS = {"guidance_scale": "guidance_scale", "shift": "shift", "denoise_strength": "denoise_strength"}


class PayloadConfig(_Section):
    """`config`, both eras: each field under every name the eras use."""

    width: int | None = None
    height: int | None = None
    size: tuple[int, int] | None = None  # v1 WAN "480*832" (width*height)
    resolution: tuple[int, int] | None = None  # v2 "1024x576"
    steps: int | None = Field(None, validation_alias=AliasChoices("num_inference_steps", "sample_steps", "steps"))
    guidance_scale: float | None = Field(None, validation_alias=AliasChoices("guidance_scale", "sample_guide_scale"))
    scheduler: str | None = Field(None, validation_alias=AliasChoices("scheduler", "sample_solver"))
    num_images: int | None = None
    frames: int | None = Field(None, validation_alias=AliasChoices("frame_num", "frames"))
    fps: int | None = None
    shift: float | None = Field(None, validation_alias=AliasChoices("sample_shift", "shift"))
    seed: Any = None
    enhance_prompt: bool | None = None
    pipeline: str | None = None
    negative_prompt: Any = None
    image: Any = None
    first_frame: Any = None
    last_frame: Any = None
    reference_image_url: Any = None
    reference_strength: Any = None
    denoise_strength: float | None = None
    reference_type: Any = None
    exact_copy_mode: Any = None
    compel_enabled: Any = None
    compel_weights: Any = None

    @field_validator(*_INTS, mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any, info: ValidationInfo) -> int:
        return _number(info.field_name, value, int, info)

    @field_validator(*_FLOATS, mode="before")
    @classmethod
    def _numbers(cls, value: Any, info: ValidationInfo) -> float:
        return _number(info.field_name, value, float, info)

    @field_validator("size", "resolution", mode="before")
    @classmethod
    def _size(cls, value: Any, info: ValidationInfo) -> tuple[int, int]:
        match = re.fullmatch(r"\s*(\d{1,5})\s*[*xX×]\s*(\d{1,5})\s*", str(value))
        if not match:
            raise _bad(info, f"size {value!r} is not WIDTHxHEIGHT")
        return _number("width", match[1], int, info), _number("height", match[2], int, info)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler(cls, value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_+ .-]{1,40}", value):
            raise _bad(info, f"scheduler {str(value)[:40]!r} is not a scheduler name")
        return value

    @field_validator("enhance_prompt", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> bool:
        return flag(value)


class PayloadMetadata(_Section):
    """`metadata`, both eras: reference images and their modes."""

    reference_image_url: Any = None
    start_reference_url: Any = None
    end_reference_url: Any = None
    reference_strength: Any = None
    denoise_strength: float | None = None
    reference_type: Any = None
    reference_mode: str | None = None
    video_reference_mode: Literal["none", "single", "start", "end", "both"] | None = None
    exact_copy_mode: Any = None
    seed: Any = None
    compel_enabled: Any = None
    compel_weights: Any = None

    @field_validator("denoise_strength", mode="before")
    @classmethod
    def _denoise(cls, value: Any, info: ValidationInfo) -> float:
        return _number("denoise_strength", value, float, info)

    @field_validator("reference_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> str | None:
        return value if isinstance(value, str) else None

    @field_validator("video_reference_mode", mode="before")
    @classmethod
    def _video_mode(cls, value: Any) -> str | None:
        return value if value in VIDEO_MODES else None  # anything else: decided from the URLs given


class Payload(_Section):
    """One job payload of either era (the top level)."""

    id: str
    user_id: str = Field(validation_alias=AliasChoices("user_id", "userId"))
    type: str = Field(validation_alias=AliasChoices("type", "job_type"))
    prompt: str = ""
    negative_prompt: str | None = None
    quality: str | None = None
    seed: Any = None
    num_images: Any = None
    compel_enabled: Any = None
    compel_weights: Any = None
    config: PayloadConfig = Field(default_factory=PayloadConfig)
    metadata: PayloadMetadata = Field(default_factory=PayloadMetadata)

    @model_validator(mode="before")
    @classmethod
    def _required(cls, data: Any, info: ValidationInfo) -> Any:
        job_id = _ctx(info).get("job_id")
        if not data.get("user_id") and not data.get("userId"):
            raise BadPayload("payload has no user_id", job_id)
        if not data.get("type") and not data.get("job_type"):
            raise JobError("unsupported_job_type", "payload has no job type (type or job_type)", job_id=job_id)
        return data

    @field_validator("user_id", mode="before")
    @classmethod
    def _user(cls, value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str) or not SAFE_ID.match(value):
            raise BadPayload(f"user_id {str(value)[:80]!r} is not a safe path segment", _ctx(info).get("job_id"))
        return value

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any, info: ValidationInfo) -> str:
        value = "video_fast" if value == "wan_video_fast" else value  # v2's job_type spelling
        if not isinstance(value, str) or value not in _ctx(info)["presets"].types:
            raise JobError("unsupported_job_type", f"unknown job type {str(value)[:80]!r}",
                           job_id=_ctx(info).get("job_id"))
        return value

    @field_validator("prompt", "negative_prompt", mode="before")
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str):
            raise _bad(info, f"{info.field_name} must be text")
        limit = int(_ctx(info)["presets"].bounds["max_prompt_chars"])
        if len(value) > limit:
            raise _bad(info, f"{info.field_name} is {len(value)} characters, the limit is {limit}")
        return value

    @field_validator("config", "metadata", mode="before")
    @classmethod
    def _object(cls, value: Any, info: ValidationInfo) -> dict:
        if isinstance(value, str):  # some backend paths double-encode nested objects
            try:
                value = bounded_json.loads(value)
            except bounded_json.JsonRefused as exc:
                raise BadPayload(f"{info.field_name} is not a JSON object ({exc})", _ctx(info).get("job_id")) from None
        if not isinstance(value, dict):
            raise BadPayload(f"{info.field_name} must be an object", _ctx(info).get("job_id"))
        return value

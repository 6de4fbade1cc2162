"""The backend's job payloads, in both contract eras, parsed into one typed `Job`.

Tolerant on input (an object, its JSON text, or a one-element array of either; v1 and v2 field
names), exact on what it accepts: values outside the bounds in configs/presets.toml fail the job
with a clear message instead of being clamped.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from shared import keys
from shared.prompt_weights import WeightsError, normalize_weights, weighted_prompt

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Era = Literal["v1", "v2"]
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
V2_BUCKET = "workspace-temp"


class JobError(Exception):
    """A job that cannot be done as asked. `error_type` goes to the callback's metadata."""

    def __init__(self, error_type: str, message: str, *, job_id: str | None = None, retryable: bool = False):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.job_id = job_id
        self.retryable = retryable


class BadPayload(JobError):
    """The payload itself is unusable; `job_id` is set when an id could still be read from it."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__("invalid_payload", message, job_id=job_id)


# ----------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Presets:
    types: dict[str, dict[str, Any]]
    bounds: dict[str, Any]
    defaults: dict[str, Any]
    buckets: dict[str, dict[str, Any]]

    def for_type(self, job_type: str) -> dict[str, Any]:
        if job_type not in self.types:
            raise KeyError(job_type)
        return self.types[job_type]


@lru_cache(maxsize=8)
def load_presets(path: str | Path) -> Presets:
    data = tomllib.loads(Path(path).read_text())
    types: dict[str, dict[str, Any]] = {}
    raw_types = data.get("types", {})
    for name, spec in raw_types.items():
        merged = dict(raw_types[spec["base"]]) if "base" in spec else {}
        merged.update({k: v for k, v in spec.items() if k != "base"})
        merged.setdefault("enhance_prompt", False)
        types[name] = merged
    return Presets(types=types, bounds=data["bounds"], defaults=data["defaults"], buckets=data["buckets"])


# ------------------------------------------------------------------------------------- job


@dataclass(frozen=True)
class References:
    image_url: str | None = None  # img2img source, or WAN single reference
    start_url: str | None = None  # WAN first frame
    end_url: str | None = None  # WAN last frame
    denoise_strength: float | None = None  # only set when there is a reference image
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
    content_type: str | None = None
    character_id: str | None = None
    model_variant: str | None = None
    created_at: str | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
    """One queue element → the payload object, whatever wrapping the backend's era used."""
    value: Any = raw
    for _ in range(4):  # text → array → text → object is the deepest real wrapping
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadPayload("payload is not UTF-8 text") from exc
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise BadPayload(f"payload is not JSON: {exc.msg} at position {exc.pos}") from exc
            continue
        if isinstance(value, list):
            if len(value) != 1:
                raise BadPayload(f"payload is an array of {len(value)} elements, expected one")
            value = value[0]
            continue
        break
    if not isinstance(value, dict):
        raise BadPayload(f"payload is a JSON {type(value).__name__}, expected an object")
    return value


def peek_job_id(payload: dict[str, Any]) -> str | None:
    """The job id, if one that is safe to send back can be read at all."""
    for key in ("id", "job_id", "jobId"):
        value = payload.get(key)
        if isinstance(value, str) and SAFE_ID.match(value):
            return value
    return None


def queue_for_type(job_type: str) -> str:
    if job_type.startswith("chat") or job_type in ("enhance",):
        return keys.CHAT_QUEUE
    return keys.SDXL_QUEUE if job_type.startswith("sdxl_") else keys.WAN_QUEUE


# -------------------------------------------------------------------------------- parsing


def _first(*candidates: Any) -> Any:
    for c in candidates:
        if c is not None and c != "":
            return c
    return None


def _number(name: str, value: Any, kind: type, bounds: list | None, job_id: str) -> Any:
    if isinstance(value, bool):
        raise JobError("invalid_parameter", f"{name} must be a number, got {value!r}", job_id=job_id)
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise JobError("invalid_parameter", f"{name} must be a number, got {value!r}", job_id=job_id) from None
    if kind is int and float(value) != number:
        raise JobError("invalid_parameter", f"{name} must be a whole number, got {value!r}", job_id=job_id)
    if bounds is not None and not (bounds[0] <= number <= bounds[1]):
        raise JobError(
            "invalid_parameter", f"{name}={value!r} is outside [{bounds[0]}, {bounds[1]}]", job_id=job_id
        )
    return number


def _parse_size(value: Any, job_id: str) -> tuple[int, int] | None:
    """`"480*832"` (v1 WAN) or `"1024x576"` (v2 resolution): width, height."""
    if value is None or value == "":
        return None
    match = re.fullmatch(r"\s*(\d{1,5})\s*[*xX×]\s*(\d{1,5})\s*", str(value))
    if not match:
        raise JobError("invalid_parameter", f"size {value!r} is not WIDTHxHEIGHT", job_id=job_id)
    return int(match[1]), int(match[2])


def _text(name: str, value: Any, job_id: str, max_chars: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise JobError("invalid_parameter", f"{name} must be text", job_id=job_id)
    if len(value) > max_chars:
        raise JobError(
            "invalid_parameter", f"{name} is {len(value)} characters, the limit is {max_chars}", job_id=job_id
        )
    return value


def _dict(payload: dict, key: str, job_id: str) -> dict:
    value = payload.get(key)
    if value is None:
        return {}
    if isinstance(value, str):  # some backend paths double-encode nested objects
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadPayload(f"{key} is not a JSON object", job_id) from None
    if not isinstance(value, dict):
        raise BadPayload(f"{key} must be an object", job_id)
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def parse_job(raw: Any, presets: Presets, policy: str = "payload") -> Job:
    """Parse one queue element into a `Job`, or raise `JobError`/`BadPayload` saying why not."""
    payload = decode_element(raw) if not isinstance(raw, dict) else raw
    job_id = peek_job_id(payload)
    if job_id is None:
        raw_id = _first(payload.get("id"), payload.get("job_id"))
        if raw_id is None:
            raise BadPayload("payload has no id")
        raise BadPayload(f"job id {str(raw_id)[:80]!r} is not a safe identifier")

    user_id = payload.get("user_id") or payload.get("userId")
    if not user_id:
        raise BadPayload("payload has no user_id", job_id)
    if not isinstance(user_id, str) or not SAFE_ID.match(user_id):
        raise BadPayload(f"user_id {str(user_id)[:80]!r} is not a safe path segment", job_id)

    job_type = _first(payload.get("type"), payload.get("job_type"))
    if job_type == "wan_video_fast":  # v2's job_type spelling
        job_type = "video_fast"
    if not isinstance(job_type, str) or job_type not in presets.types:
        raise JobError("unsupported_job_type", f"unknown job type {str(job_type)[:80]!r}", job_id=job_id)
    preset = presets.for_type(job_type)

    config = _dict(payload, "config", job_id)
    metadata = _dict(payload, "metadata", job_id)
    b = presets.bounds
    d = presets.defaults

    def pick(*payload_values: Any, preset_key: str) -> Any:
        given = _first(*payload_values)
        if policy == "preset" or given is None:
            return preset.get(preset_key)
        return given

    explicit_size = _parse_size(config.get("size"), job_id)
    resolution = _parse_size(config.get("resolution"), job_id)
    size = explicit_size or resolution
    width_in = _first(config.get("width"), size[0] if size else None)
    height_in = _first(config.get("height"), size[1] if size else None)
    width = _number("width", pick(width_in, preset_key="width"), int, b["width"], job_id)
    height = _number("height", pick(height_in, preset_key="height"), int, b["height"], job_id)
    requested_size = (width, height) if policy == "payload" and width_in is not None and height_in is not None else None
    native_area = preset.get("native_area")
    if native_area and requested_size and resolution and not explicit_size and config.get("width") is None:
        # The 2026-04 backend puts the *image* resolution on video jobs too: for a model with a
        # native area (Wan 2.1 1.3B makes 480p) it only says which aspect ratio the user chose.
        width, height = native_size(width, height, int(native_area))
    if width * height > b["max_pixels"]:
        raise JobError("invalid_parameter", f"{width}x{height} exceeds {b['max_pixels']} pixels", job_id=job_id)

    steps = _number(
        "steps",
        pick(config.get("num_inference_steps"), config.get("sample_steps"), config.get("steps"), preset_key="steps"),
        int,
        b["steps"],
        job_id,
    )
    guidance = _number(
        "guidance_scale",
        pick(config.get("guidance_scale"), config.get("sample_guide_scale"), preset_key="guidance_scale"),
        float,
        b["guidance_scale"],
        job_id,
    )
    scheduler = pick(config.get("scheduler"), config.get("sample_solver"), preset_key="scheduler")
    if not isinstance(scheduler, str) or not re.fullmatch(r"[A-Za-z0-9_+ .-]{1,40}", scheduler):
        raise JobError("invalid_parameter", f"scheduler {str(scheduler)[:40]!r} is not a scheduler name", job_id=job_id)

    # Images per job is the user's choice (1, 3 or 6 in the UI), never a preset override.
    num_images = _number(
        "num_images", _first(config.get("num_images"), payload.get("num_images"), preset.get("num_images", 1)),
        int, b["num_images"], job_id,
    )

    media = preset["media"]
    frames = 1
    fps = int(preset.get("fps", 16))
    shift = None
    if preset["engine"] == "wan":
        frames = _number(
            "frame_num", pick(config.get("frame_num"), config.get("frames"), preset_key="frames"), int, b["frames"], job_id
        )
        fps = _number("fps", pick(config.get("fps"), preset_key="fps"), int, b["fps"], job_id)
        shift = _number("sample_shift", pick(config.get("sample_shift"), preset_key="shift"), float, b["shift"], job_id)
        if media == "image":
            frames = 1

    seed_in = _first(config.get("seed"), metadata.get("seed"), payload.get("seed"))
    if seed_in is None or (not isinstance(seed_in, bool) and _is_number(seed_in) and float(seed_in) < 0):
        seed = random.SystemRandom().randrange(0, 2**32)  # -1 / absent: a fresh seed, reported back
        seed_from_payload = False
    else:
        seed = _number("seed", seed_in, int, b["seed"], job_id)
        seed_from_payload = True

    max_chars = int(b["max_prompt_chars"])
    prompt = _text("prompt", payload.get("prompt"), job_id, max_chars)
    negative_in = _first(payload.get("negative_prompt"), config.get("negative_prompt"))
    negative = _text("negative_prompt", negative_in, job_id, max_chars) if negative_in is not None else None
    if negative is None:
        negative = preset.get("negative_prompt", d.get(f"{preset['engine']}_negative_prompt", ""))

    references = _parse_references(payload, config, metadata, preset["engine"], d, b, job_id)
    pipeline = config.get("pipeline")
    if preset["engine"] == "wan":
        pipeline = "video"  # video and one-frame images alike; references are frames, never img2img
    elif pipeline not in ("txt2img", "img2img"):
        pipeline = "img2img" if references.image_url else "txt2img"
    if pipeline == "img2img" and not references.image_url:
        raise JobError("invalid_parameter", "img2img job has no reference image URL", job_id=job_id)

    if references.exact_copy:
        guidance = 1.0
        negative = ""
    if not prompt.strip() and not (references.image_url or references.start_url or references.end_url):
        raise JobError("invalid_parameter", "prompt is empty and there is no reference image", job_id=job_id)

    compel_enabled, compel_weights = _compel(payload, config, metadata, job_id)
    return Job(
        id=job_id,
        type=job_type,
        user_id=user_id,
        engine=preset["engine"],
        media=media,
        quality=str(payload.get("quality") or preset["quality"]),
        queue=queue_for_type(job_type),
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        scheduler=scheduler,
        num_images=num_images,
        seed=seed,
        seed_from_payload=seed_from_payload,
        frames=frames,
        fps=fps,
        shift=shift,
        enhance_prompt=_flag(_first(config.get("enhance_prompt"), preset.get("enhance_prompt"))),
        pipeline=pipeline,
        references=references,
        compel_enabled=compel_enabled,
        compel_weights=compel_weights,
        requested_size=requested_size,
        content_type=_optional_text(payload, "content_type"),
        character_id=_optional_text(payload, "character_id"),
        model_variant=_optional_text(payload, "model_variant"),
        created_at=_optional_text(payload, "created_at"),
        payload=payload,
    )


def native_size(width: int, height: int, area: int) -> tuple[int, int]:
    """The aspect ratio of width x height at about `area` pixels, sides multiples of 16.

    The short side is the nearest multiple of 16 to its exact value; the long side follows the
    ratio but never takes the area past `area` (16:9 → 832x480 and 1:1 → 624x624 at 832*480).
    """
    ratio = max(width, height) / min(width, height)
    short = max(16, round(math.sqrt(area / ratio) / 16) * 16)
    long = max(short, min(round(short * ratio / 16) * 16, (area // short) // 16 * 16))
    return (long, short) if width >= height else (short, long)


def _compel(payload: dict, config: dict, metadata: dict, job_id: str) -> tuple[bool, str | None]:
    """compel_enabled and compel_weights, wherever the era put them (top level, config or metadata).

    Weights apply when Compel is enabled in any of those places (one backend era sets it in
    `config` and leaves the top level false); a payload that sends weights and says nothing of
    `compel_enabled` is taken to want them.
    """
    said = [v for v in (payload.get("compel_enabled"), config.get("compel_enabled"), metadata.get("compel_enabled"))
            if v is not None]
    try:
        weights = normalize_weights(_first(payload.get("compel_weights"), config.get("compel_weights"),
                                           metadata.get("compel_weights")))
    except WeightsError as exc:
        raise JobError("invalid_parameter", str(exc), job_id=job_id) from None
    enabled = any(_flag(v) for v in said) if said else weights is not None
    return enabled, weights


def _optional_text(payload: dict, key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) else None


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _url(name: str, value: Any, job_id: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise JobError("invalid_parameter", f"{name} must be a URL or storage key", job_id=job_id)
    return value


def _parse_references(payload, config, metadata, engine, defaults, bounds, job_id) -> References:
    if engine == "wan":
        image = _url("image", _first(config.get("image"), metadata.get("reference_image_url")), job_id)
        start = _url("first_frame", _first(config.get("first_frame"), metadata.get("start_reference_url")), job_id)
        end = _url("last_frame", _first(config.get("last_frame"), metadata.get("end_reference_url")), job_id)
    else:
        image = _url(
            "reference_image_url",
            _first(metadata.get("reference_image_url"), config.get("reference_image_url"), config.get("image")),
            job_id,
        )
        start = end = None

    exact_copy = _flag(_first(metadata.get("exact_copy_mode"), config.get("exact_copy_mode")))
    strength_in = _first(config.get("reference_strength"), metadata.get("reference_strength"))
    denoise_in = _first(config.get("denoise_strength"), metadata.get("denoise_strength"))
    denoise = None
    if image and engine == "sdxl":  # image-to-image only: WAN reference frames are kept, not denoised
        if denoise_in is not None:
            denoise = _number("denoise_strength", denoise_in, float, bounds["denoise_strength"], job_id)
        else:
            strength = _number(
                "reference_strength",
                strength_in if strength_in is not None else defaults["reference_strength"],
                float,
                [0.0, 1.0],
                job_id,
            )
            denoise = round(1.0 - strength, 6)
        if exact_copy:
            denoise = min(denoise, float(defaults["exact_copy_denoise"]))

    video_mode = metadata.get("video_reference_mode")
    if video_mode not in ("none", "single", "start", "end", "both"):
        if start and end:
            video_mode = "both"
        elif start:
            video_mode = "start"
        elif end:
            video_mode = "end"
        elif image and engine == "wan":
            video_mode = "single"
        else:
            video_mode = "none"

    reference_type = _first(config.get("reference_type"), metadata.get("reference_type"))
    reference_mode = metadata.get("reference_mode")
    return References(
        image_url=image,
        start_url=start,
        end_url=end,
        denoise_strength=denoise,
        reference_type=reference_type if isinstance(reference_type, str) else None,
        reference_mode=reference_mode if isinstance(reference_mode, str) else None,
        video_reference_mode=video_mode,
        exact_copy=exact_copy,
    )

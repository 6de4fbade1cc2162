"""A queue element of either contract era → one typed `Job`: the rules between payload and presets.

Tolerant on input (an object, its JSON text, or a one-element array of either; the fields as
declared in `shared/decode/payload.py`, under every name an era uses), exact on what it accepts: a value
outside the bounds in configs/presets.toml fails the job with a clear message instead of being
clamped. How payload values and presets combine (PRESET_POLICY), video sizes, references, seeds
and Compel weights are decided here, once, for every engine.
"""

from __future__ import annotations

import math
import random
from typing import Any

from pydantic import ValidationError

from shared.decode.job import Job, References
from shared.decode.payload import Payload, PayloadConfig, PayloadMetadata, flag
from shared.decode.presets import Presets
from shared.decode.prompt_weights import WeightsError, normalize_weights
from shared.engine.errors import BadPayload, JobError
from shared.ops.numbers import NumberRefused, read_number
from shared.source.element import decode_element, peek_job_id
from shared.source.keys import queue_for_type


def parse_job(raw: Any, presets: Presets, policy: str = "payload") -> Job:
    """Parse one queue element into a `Job`, or raise `JobError`/`BadPayload` saying why not."""
    payload = decode_element(raw) if not isinstance(raw, dict) else raw
    job_id = peek_job_id(payload)
    if job_id is None:
        raw_id = payload.get("id") or payload.get("job_id")
        if raw_id is None:
            raise BadPayload("payload has no id")
        raise BadPayload(f"job id {str(raw_id)[:80]!r} is not a safe identifier")
    try:
        declared = Payload.model_validate({**payload, "id": job_id}, context={"presets": presets, "job_id": job_id})
    except ValidationError as exc:  # a shape no rule above names (a list where text belongs, say)
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise BadPayload(f"{where}: {error['msg']}", job_id) from None
    return _job(declared, presets, policy, job_id)


def _job(p: Payload, presets: Presets, policy: str, job_id: str) -> Job:
    preset = presets.for_type(p.type)
    c, m, d, b = p.config, p.metadata, presets.defaults, presets.bounds

    def pick(given: Any, preset_key: str) -> Any:
        return preset.get(preset_key) if policy == "preset" or given is None else given

    size = c.size or c.resolution
    width_in = c.width if c.width is not None else (size[0] if size else None)
    height_in = c.height if c.height is not None else (size[1] if size else None)
    width, height = int(pick(width_in, "width")), int(pick(height_in, "height"))
    requested_size = (width, height) if policy == "payload" and width_in is not None and height_in is not None else None
    native_area = preset.get("native_area")
    if native_area and requested_size and c.resolution and not c.size and c.width is None:
        # The 2026-04 backend puts the *image* resolution on video jobs too: for a model with a
        # native area (Wan 2.1 1.3B makes 480p) it only says which aspect ratio the user chose.
        width, height = native_size(width, height, int(native_area))
    if width * height > b["max_pixels"]:
        raise JobError("invalid_parameter", f"{width}x{height} exceeds {b['max_pixels']} pixels", job_id=job_id)

    engine, media = preset["engine"], preset["media"]
    frames, fps, shift = 1, int(preset.get("fps", 16)), None
    if engine == "wan":
        frames = 1 if media == "image" else int(pick(c.frames, "frames"))
        fps, shift = int(pick(c.fps, "fps")), float(pick(c.shift, "shift"))
    guidance = float(pick(c.guidance_scale, "guidance_scale"))
    negative = p.negative_prompt if p.negative_prompt is not None else c.negative_prompt
    if negative is None:
        negative = preset.get("negative_prompt", d.get(f"{engine}_negative_prompt", ""))
    elif not isinstance(negative, str):
        raise JobError("invalid_parameter", "negative_prompt must be text", job_id=job_id)

    references = _references(c, m, engine, d, job_id)
    mode = "video" if engine == "wan" else c.pipeline if c.pipeline in ("txt2img", "img2img") else (
        "img2img" if references.image_url else "txt2img")
    if mode == "img2img" and not references.image_url:
        raise JobError("invalid_parameter", "img2img job has no reference image URL", job_id=job_id)
    if references.exact_copy:
        guidance, negative = 1.0, ""
    if not p.prompt.strip() and not (references.image_url or references.start_url or references.end_url):
        raise JobError("invalid_parameter", "prompt is empty and there is no reference image", job_id=job_id)
    seed, seed_given = _seed(c.seed, m.seed, p.seed, b, job_id)
    compel_enabled, compel_weights = _compel(p, job_id)
    # Images per job is the user's choice (1, 3 or 6 in the UI), never a preset override.
    num_images = c.num_images if c.num_images is not None else p.num_images
    num_images = _number_or_fail("num_images", num_images if num_images is not None else preset.get("num_images", 1),
                                 b["num_images"], job_id)
    return Job(
        id=job_id, type=p.type, user_id=p.user_id, engine=engine, media=media,
        quality=str(p.quality or preset["quality"]), queue=queue_for_type(p.type), prompt=p.prompt,
        negative_prompt=negative, width=width, height=height, steps=int(pick(c.steps, "steps")),
        guidance_scale=guidance, scheduler=str(pick(c.scheduler, "scheduler")), num_images=num_images,
        seed=seed, seed_from_payload=seed_given, frames=frames, fps=fps, shift=shift,
        enhance_prompt=c.enhance_prompt if c.enhance_prompt is not None else flag(preset.get("enhance_prompt")),
        mode=mode, references=references, compel_enabled=compel_enabled, compel_weights=compel_weights,
        requested_size=requested_size,
    )


def _number_or_fail(name: str, value: Any, bounds: list, job_id: str) -> int:
    try:
        return read_number(name, value, whole=True, low=bounds[0], high=bounds[1])
    except NumberRefused as exc:
        raise JobError("invalid_parameter", str(exc), job_id=job_id) from None


def _seed(config_seed: Any, metadata_seed: Any, top_seed: Any, b: dict, job_id: str) -> tuple[int, bool]:
    """The payload's seed, or a fresh one (absent, or negative: the UI sends -1 for "random"), reported back."""
    given = next((s for s in (config_seed, metadata_seed, top_seed) if s is not None and s != ""), None)
    if given is None:
        return random.SystemRandom().randrange(0, 2**32), False
    try:
        negative = read_number("seed", given) < 0
    except NumberRefused as exc:
        raise JobError("invalid_parameter", str(exc), job_id=job_id) from None
    if negative:
        return random.SystemRandom().randrange(0, 2**32), False
    return _number_or_fail("seed", given, b["seed"], job_id), True


def native_size(width: int, height: int, area: int) -> tuple[int, int]:
    """The aspect ratio of width x height at about `area` pixels, sides multiples of 16.

    The short side is the nearest multiple of 16 to its exact value; the long side follows the
    ratio but never takes the area past `area` (16:9 → 832x480 and 1:1 → 624x624 at 832*480).
    """
    ratio = max(width, height) / min(width, height)
    short = max(16, round(math.sqrt(area / ratio) / 16) * 16)
    long = max(short, min(round(short * ratio / 16) * 16, (area // short) // 16 * 16))
    return (long, short) if width >= height else (short, long)


def _compel(p: Payload, job_id: str) -> tuple[bool, str | None]:
    """compel_enabled and compel_weights, wherever the era put them (top level, config or metadata).

    Weights apply when Compel is enabled in any of those places (one backend era sets it in
    `config` and leaves the top level false); a payload that sends weights and says nothing of
    `compel_enabled` is taken to want them.
    """
    said = [v for v in (p.compel_enabled, p.config.compel_enabled, p.metadata.compel_enabled) if v is not None]
    given = next((w for w in (p.compel_weights, p.config.compel_weights, p.metadata.compel_weights)
                  if w is not None and w != ""), None)
    try:
        weights = normalize_weights(given)
    except WeightsError as exc:
        raise JobError("invalid_parameter", str(exc), job_id=job_id) from None
    enabled = any(flag(v) for v in said) if said else weights is not None
    return enabled, weights


def _url(name: str, value: Any, job_id: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise JobError("invalid_parameter", f"{name} must be a URL or storage key", job_id=job_id)
    return value


def _references(c: PayloadConfig, m: PayloadMetadata, engine: str, defaults: dict, job_id: str) -> References:
    def first(*values):
        return next((v for v in values if v is not None and v != ""), None)

    if engine == "wan":
        image = _url("image", first(c.image, m.reference_image_url), job_id)
        start = _url("first_frame", first(c.first_frame, m.start_reference_url), job_id)
        end = _url("last_frame", first(c.last_frame, m.end_reference_url), job_id)
    else:
        image = _url("reference_image_url", first(m.reference_image_url, c.reference_image_url, c.image), job_id)
        start = end = None

    exact_copy = flag(first(m.exact_copy_mode, c.exact_copy_mode))
    denoise = None
    if image and engine == "sdxl":  # image-to-image only: WAN reference frames are kept, not denoised
        given = c.denoise_strength if c.denoise_strength is not None else m.denoise_strength
        if given is not None:
            denoise = given
        else:
            strength = first(c.reference_strength, m.reference_strength)
            strength = _number_or_strength(strength if strength is not None else defaults["reference_strength"],
                                           job_id)
            denoise = round(1.0 - strength, 6)
        if exact_copy:
            denoise = min(denoise, float(defaults["exact_copy_denoise"]))

    video_mode = m.video_reference_mode
    if video_mode is None:
        video_mode = ("both" if start and end else "start" if start else "end" if end
                      else "single" if image and engine == "wan" else "none")
    reference_type = first(c.reference_type, m.reference_type)
    return References(
        image_url=image, start_url=start, end_url=end, denoise_strength=denoise,
        reference_type=reference_type if isinstance(reference_type, str) else None,
        reference_mode=m.reference_mode, video_reference_mode=video_mode, exact_copy=exact_copy,
    )


def _number_or_strength(value: Any, job_id: str) -> float:
    try:
        return float(read_number("reference_strength", value, low=0.0, high=1.0))
    except NumberRefused as exc:
        raise JobError("invalid_parameter", str(exc), job_id=job_id) from None

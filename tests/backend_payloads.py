"""Test fixture: job payloads built and pushed exactly as the backend's `queue-job` function does, per era.

Every field the backend writes, so the tests see what production sees: v1 LPUSHes the payload's
JSON text; v2 RPUSHes the JSON text of a one-element array that holds the payload's JSON text.
The wrapping and the push go through the fleet's one producer (shared/source/producer.py), which
`ourvidz-worker submit` also uses with its own, smaller payload.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from shared.source.element import Era
from shared.source.keys import queue_for_type
from shared.source.producer import element, push_raw

FAST_HIGH = {"fast": (25, 6.5), "high": (50, 7.5)}


def _quality(job_type: str) -> str:
    return "high" if "_high" in job_type else "fast"


def build_payload(
    era: Era,
    job_type: str,
    prompt: str,
    *,
    user_id: str | None = None,
    job_id: str | None = None,
    num_images: int = 1,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    frames: int | None = None,
    reference_image_url: str | None = None,
    resolution: str | None = None,
) -> dict[str, Any]:
    """One payload of `job_type` in `era`'s shape.

    v2 video jobs carry the image `resolution` the backend puts on every job (default
    `576x1024`); pass `resolution=` to choose it. Given `width` and `height`, a v2 video job
    carries an explicit `size` instead, which the worker makes exactly (tests use tiny sizes).
    """
    job_id = job_id or str(uuid.uuid4())
    user_id = user_id or "00000000-0000-4000-8000-000000000001"
    quality = _quality(job_type)
    default_steps, guidance = FAST_HIGH[quality]
    is_sdxl = job_type.startswith("sdxl_")
    is_video = "video" in job_type
    created_at = datetime.now(UTC).isoformat()
    if era == "v1":
        if is_sdxl:
            config: dict[str, Any] = {
                "width": width or 1024, "height": height or 1024,
                "num_inference_steps": steps or default_steps, "guidance_scale": guidance,
                "scheduler": "unipc", "num_images": num_images,
            }
        else:
            config = {
                "size": f"{width or 480}*{height or 832}", "sample_steps": steps or default_steps,
                "sample_guide_scale": guidance, "sample_solver": "unipc", "sample_shift": 5,
                "frame_num": frames or (83 if is_video else 1), "enhance_prompt": job_type.endswith("_enhanced"),
            }
        if seed is not None:
            config["seed"] = seed
        metadata: dict[str, Any] = {"model_variant": "lustify_sdxl" if is_sdxl else "wan_2_1_1_3b", "queue": queue_for_type(job_type)}
        if reference_image_url:
            metadata.update({"reference_image_url": reference_image_url, "reference_strength": 0.85, "reference_type": "character"})
        payload = {
            "id": job_id, "type": job_type, "prompt": prompt, "user_id": user_id, "config": config,
            "metadata": metadata, "created_at": created_at, "bucket": job_type,
            "model_variant": metadata["model_variant"], "character_id": None,
        }
        if is_sdxl:
            payload.update({"negative_prompt": "", "compel_enabled": False, "compel_weights": None})
        return payload

    config = {"pipeline": "video" if not is_sdxl else ("img2img" if reference_image_url else "txt2img"),
              "num_images": num_images}
    if is_sdxl or not (width and height):
        config["resolution"] = resolution or (f"{width or 1024}x{height or 1024}" if is_sdxl else "576x1024")
    else:
        config["size"] = f"{width}*{height}"
    if steps is not None:
        config["num_inference_steps"] = steps
    if seed is not None:
        config["seed"] = seed
    if frames is not None:
        config["frame_num"] = frames
    metadata = {"exact_copy_mode": False, "reference_mode": "modify" if reference_image_url else None,
                "video_reference_mode": "none"}
    if reference_image_url:
        metadata.update({"reference_image_url": reference_image_url, "reference_strength": 0.85})
    return {
        "id": job_id, "job_id": job_id, "type": job_type,
        "job_type": "wan_video_fast" if job_type == "video_fast" else job_type,
        "prompt": prompt, "user_id": user_id, "negative_prompt": "", "compel_enabled": False,
        "compel_weights": None, "quality": quality, "format": "video" if is_video else "image",
        "content_type": "sfw", "config": config, "metadata": metadata,
    }


def push(client: redis.Redis, era: Era, payload: dict[str, Any]) -> str:
    """Push as the backend does; returns the queue name."""
    queue = queue_for_type(payload["type"])
    push_raw(client, era, queue, element(era, payload))
    return queue

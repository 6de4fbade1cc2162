"""`ourvidz-worker submit`: an operator's job, in the deployment's contract era, on the backend's queue.

The payload carries the fields the backend's `queue-job` writes for each era (v1: `bucket`;
v2: `job_id`, `job_type`, `quality`, `format`, and the element wrapped in a one-element array)
and whatever the operator chose; the presets fill in the rest, as for the backend's jobs.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from shared.job import Era, queue_for_type

OPERATOR_USER = "00000000-0000-4000-8000-000000000001"


def submission(era: Era, job_type: str, prompt: str, *, num_images: int = 1, seed: int | None = None,
               size: tuple[int, int] | None = None, steps: int | None = None, frames: int | None = None,
               user_id: str | None = None, reference_image_url: str | None = None) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    config: dict[str, Any] = {"num_images": num_images}
    if seed is not None:
        config["seed"] = seed
    if size is not None:
        config["size"] = f"{size[0]}*{size[1]}"  # an explicit size: made as asked in either era
    if steps is not None:
        config["num_inference_steps"] = steps
    if frames is not None:
        config["frame_num"] = frames
    metadata: dict[str, Any] = {}
    if reference_image_url:
        metadata["reference_image_url"] = reference_image_url
    payload = {"id": job_id, "type": job_type, "prompt": prompt, "user_id": user_id or OPERATOR_USER,
               "config": config, "metadata": metadata, "created_at": datetime.now(UTC).isoformat()}
    if era == "v1":
        payload["bucket"] = job_type
    else:
        payload.update(job_id=job_id, job_type="wan_video_fast" if job_type == "video_fast" else job_type,
                       quality="high" if "_high" in job_type else "fast",
                       format="video" if "video" in job_type else "image")
    return payload


def element(era: Era, payload: dict[str, Any]) -> str:
    """v1 pushes the payload's JSON text; v2 the JSON text of a one-element array holding it."""
    text = json.dumps(payload)
    return text if era == "v1" else json.dumps([text])


def push(client: redis.Redis, era: Era, payload: dict[str, Any], queue: str | None = None) -> str:
    """LPUSH (v1) or RPUSH (v2), as the backend does; returns the queue name."""
    queue = queue or queue_for_type(payload["type"])
    (client.lpush if era == "v1" else client.rpush)(queue, element(era, payload))
    return queue

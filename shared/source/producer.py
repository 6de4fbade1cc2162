"""The one producer of queue elements: how each contract era wraps and pushes a job.

v1 LPUSHes the payload's JSON text; v2 RPUSHes the JSON text of a one-element array holding it
(the backend's `queue-job` of each era). `submit`, the chat client, the benchmarks and the tests
all push through here; the claim side (shared/source/queue.py `pop_end`) takes the oldest first.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from shared.source.element import Era
from shared.source.keys import queue_for_type

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


def push_end(era: Era) -> str:
    """Which end of a list a producer of this era pushes to."""
    return "LEFT" if era == "v1" else "RIGHT"


def push_raw(client: redis.Redis, era: Era, queue: str, text: str | bytes) -> None:
    """Push an element as it is (already wrapped, or deliberately not) to the era's end of `queue`."""
    (client.lpush if push_end(era) == "LEFT" else client.rpush)(queue, text)


def push(client: redis.Redis, era: Era, payload: dict[str, Any], queue: str | None = None) -> str:
    """Wrap `payload` as the era does and push it where the backend would; returns the queue name."""
    queue = queue or queue_for_type(payload["type"])
    push_raw(client, era, queue, element(era, payload))
    return queue


"""An engine's result → files in the bucket → the assets and metadata of the callback.

Keys are deterministic (`{user_id}/{job_id}/{i}.png`, `{i}.thumb.webp`, `{i}.mp4`), so a retried
job overwrites its own files instead of leaving duplicates; the user id is the first folder, as
the storage row-level security requires.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from shared.decode.job import Job
from shared.deliver import media
from shared.deliver.callback import Asset
from shared.deliver.storage import BucketPolicy, Uploader
from shared.engine.inputs import Generated, ImageOutput, VideoOutput
from shared.source.element import Era


def object_prefix(job: Job) -> str:
    return f"{job.user_id}/{job.id}"


@dataclass
class _Encoded:
    """One output, encoded: its object, its thumbnail (if the bucket takes one), its asset metadata."""

    kind: str
    key: str
    data: bytes
    content_type: str
    thumbnail: tuple[str, bytes] | None
    metadata: dict[str, Any]


def publish(result: Generated, job: Job, era: Era, uploader: Uploader, policy: BucketPolicy,
            asset_facts: dict[str, Any] | None = None, pool: Executor | None = None) -> list[Asset]:
    """Encode every output and upload it with its thumbnail; describe each as a callback asset.

    With a `pool`, the outputs are encoded side by side and then every object is uploaded side
    by side (a six-image job is two round trips to the store, not twelve). Any upload failing
    fails the job; the keys are deterministic, so a retry overwrites what did get through.
    """
    bucket = job.bucket(era)
    prefix = object_prefix(job)
    thumbnails = policy.accepts(bucket, "image/webp")  # v1 video buckets take videos only

    def encode(index_item: tuple[int, ImageOutput | VideoOutput]) -> _Encoded:
        index, item = index_item
        if isinstance(item, VideoOutput):
            data, content_type, key = media.mp4_bytes(item.frames, item.fps), "video/mp4", f"{prefix}/{index}.mp4"
            still = media.middle_frame(item.frames)
            count = len(item.frames)
            meta: dict[str, Any] = {"frame_num": count, "fps": item.fps, "duration": round(count / item.fps, 3)}
            kind = "video"
        elif isinstance(item, ImageOutput):
            still = item.image
            data, content_type, key = media.png_bytes(still), "image/png", f"{prefix}/{index}.png"
            meta, kind = {}, "image"
        else:
            raise TypeError(f"engine returned {type(item).__name__}, expected ImageOutput or VideoOutput")
        thumbnail = (f"{prefix}/{index}.thumb.webp", media.thumbnail_webp(still)) if thumbnails else None
        meta.update({
            "width": still.width,
            "height": still.height,
            "seed": item.seed,
            "steps": job.steps,
            # the 2026-04 job-callback reads this name for `worker_reported_steps`
            "num_inference_steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "scheduler": job.scheduler,
            "bucket": bucket,
            "size_bytes": len(data),
        })
        meta.update(_reference_facts(job))
        meta.update(asset_facts or {})
        meta.update(item.metadata)
        return _Encoded(kind, key, data, content_type, thumbnail, meta)

    run = pool.map if pool is not None else map
    encoded = list(run(encode, enumerate(result.items)))
    uploads = [(e.key, e.data, e.content_type) for e in encoded]
    uploads += [(e.thumbnail[0], e.thumbnail[1], "image/webp") for e in encoded if e.thumbnail]
    list(run(lambda upload: uploader.upload(bucket, *upload), uploads))
    return [Asset(type=e.kind, key=e.key, thumbnail_key=e.thumbnail[0] if e.thumbnail else None, metadata=e.metadata)
            for e in encoded]


def job_metadata(job: Job, result: Generated | None = None, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The callback's job-level metadata fields, as the backend reads them."""
    meta: dict[str, Any] = {
        "job_type": job.type,
        "seed": job.seed,
        "seeds": job.image_seeds(),
        "num_images": job.num_images,
        "steps": job.steps,
        "guidance_scale": job.guidance_scale,
        "width": job.width,
        "height": job.height,
        "original_prompt": job.prompt,
        "final_prompt": job.encoder_prompt,  # what the text encoder read (Compel weights joined)
        "enhancement_strategy": "none",
    }
    if job.engine == "sdxl":
        meta["compel_enabled"] = job.compel_enabled
        if job.compel_enabled and job.compel_weights:
            meta["compel_weights"] = job.compel_weights
    if job.requested_size is not None:
        meta["requested_size"] = list(job.requested_size)
    if job.media == "video" or job.engine == "wan":
        meta["frame_num"] = job.frames
        meta["fps"] = job.fps
    meta.update(_reference_facts(job))
    meta.update(facts or {})
    if result is not None:
        meta.update(result.metadata)
    return meta


def _reference_facts(job: Job) -> dict[str, Any]:
    """What kind of reference job this was: denoise and copy/modify for image-to-image only;
    a video's reference frames are reported by their mode (the engine adds what it applied)."""
    refs = job.references
    if job.mode == "img2img" and refs.denoise_strength is not None:
        return {"denoise_strength": refs.denoise_strength,
                "reference_mode": refs.reference_mode or ("copy" if refs.exact_copy else "modify")}
    if job.engine == "wan":
        return {"video_reference_mode": refs.video_reference_mode}
    return {}

"""WAN decode: a job → the engine's `Generation`, ahead of the GPU (no model, no HTTP here).

Frame counts and sizes are made valid for Wan (4k+1 frames, sides in multiples of 16) and
reported as made; reference frames are fetched and fitted when the loaded model can use them
(VACE), and otherwise `WAN_REFERENCE_POLICY` decides, truthfully reported.
"""

from __future__ import annotations

from shared.decode.decoder import Plan, PlanTools, generation_of, known_name, require_fetcher
from shared.decode.job import Job
from shared.deliver.media import fit_image
from shared.engine.errors import JobError
from shared.ops.engine_settings import WANSettings
from workers.wan.solvers import normalize_solver
from workers.wan.speed import uses_cache


def valid_frame_count(requested: int) -> int:
    """Wan generates 4k+1 frames: round down to the nearest such count (83 → 81), at least 1."""
    return max(1, ((requested - 1) // 4) * 4 + 1)


def valid_side(requested: int) -> int:
    """Each side rounded down to a multiple of 16 (the VAE's 8x times the 2x patch), at least 16."""
    return max(16, (requested // 16) * 16)


def plan_wan(job: Job, tools: PlanTools, config: WANSettings | None = None) -> Plan:
    config = config or getattr(tools.engine, "config", None) or WANSettings()
    solver = known_name(job, normalize_solver)
    frames = 1 if job.media == "image" else valid_frame_count(job.frames)
    width, height = valid_side(job.width), valid_side(job.height)
    facts = {"requested_frames": job.frames, "requested_size": list(job.requested_size or (job.width, job.height))}
    refs = job.references
    wanted, applied, images = refs.video_reference_mode, "none", ()
    if wanted != "none":
        facts["reference_mode_requested"] = wanted
        if getattr(tools.engine, "supports_reference_frames", False):
            urls = {"single": [refs.image_url or refs.start_url], "start": [refs.start_url or refs.image_url],
                    "end": [refs.end_url or refs.image_url], "both": [refs.start_url, refs.end_url]}[wanted]
            if not all(urls):
                raise JobError("invalid_parameter", f"reference mode {wanted!r} is missing its reference URL",
                               job_id=job.id)
            fetch = require_fetcher(tools, job)
            images = tuple(fit_image(fetch(url), width, height, "cover") for url in urls)
            applied = wanted
        elif config.reference_policy == "fail":
            raise JobError("REFERENCE_UNSUPPORTED",
                           f"REFERENCE_UNSUPPORTED: reference mode {wanted!r} needs a Wan VACE model; this worker "
                           "serves text-to-video only (set WAN_REFERENCE_POLICY=t2v to generate without it)",
                           job_id=job.id)
    facts["reference_mode_applied"] = applied
    job = job.with_changes(frames=frames, width=width, height=height)
    generation = generation_of(job, scheduler=solver, reference_frames=images, reference_mode=applied,
                               step_cache=uses_cache(config, job.quality, job.type))
    return Plan(job=job, input=generation, facts=facts)

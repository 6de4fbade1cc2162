"""SDXL decode: a job → the engine's `Generation`, ahead of the GPU (no model, no HTTP here).

Checks the scheduler and the size, fetches the img2img reference (through the `fetch_image`
the decode stage hands in), fits it to the job size, and for an exact copy keeps the
reference's framing and makes sure at least one denoising step runs.
"""

from __future__ import annotations

import math

from shared.decode.decoder import Plan, PlanTools, generation_of, known_name, require_fetcher
from shared.decode.job import Job
from shared.deliver.media import fit_image
from shared.engine.errors import JobError
from shared.ops.engine_settings import SDXLSettings
from workers.sdxl.schedulers import normalize_scheduler


def plan_sdxl(job: Job, tools: PlanTools, config: SDXLSettings | None = None) -> Plan:
    config = config or getattr(tools.engine, "config", None) or SDXLSettings()
    scheduler = known_name(job, normalize_scheduler)
    if job.width % 8 or job.height % 8:
        raise JobError("invalid_parameter", f"SDXL needs sizes in multiples of 8, got {job.width}x{job.height}",
                       job_id=job.id)
    refs = job.references
    if job.mode != "img2img" or not refs.image_url:
        return Plan(job=job, input=generation_of(job, scheduler=scheduler))

    reference = require_fetcher(tools, job)(refs.image_url)
    original = reference.size
    width, height, policy = job.width, job.height, config.reference_resize
    if refs.exact_copy:
        # A copy keeps the reference's framing: its aspect ratio at the job's pixel count.
        aspect = reference.width / reference.height
        pixels = job.width * job.height
        width = min(2048, max(64, round(math.sqrt(pixels * aspect) / 8) * 8))
        height = min(2048, max(64, round(math.sqrt(pixels / aspect) / 8) * 8))
        policy = "stretch"  # aspect already matches to within rounding
    steps = job.steps
    if int(steps * refs.denoise_strength) < 1:
        # img2img runs steps * denoise steps; below one it would not run at all.
        steps = math.ceil(1 / max(refs.denoise_strength, 1e-3))
    job = job.with_changes(width=width, height=height, steps=min(steps, 1000))
    fitted = fit_image(reference, width, height, policy)
    return Plan(job=job, input=generation_of(job, scheduler=scheduler, reference=fitted),
                asset_facts={"reference_resize": policy, "reference_original_size": list(original)})

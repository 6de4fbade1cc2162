"""Decode, ahead of the GPU: a queue element → the typed job and the engine's model-facing input.

Three steps, each in one place:
1. parse any era into a `Job` (shared/decode/contract.py, presets and PRESET_POLICY applied);
2. rewrite the prompt when the job type asks for enhancement (through the chat worker);
3. the engine's planner: fetch and fit references, make sizes and frame counts valid for the
   model, and build the `Generation` the engine runs.
The fetcher and the enhancer are handed in; planners receive `fetch_image` as a plain function
and never touch HTTP themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from shared.decode.contract import parse_job
from shared.decode.job import Job
from shared.decode.presets import Presets
from shared.engine.errors import JobError
from shared.engine.inputs import Generation

FetchImage = Callable[[str], Image.Image]
Enhance = Callable[[str, str], "str | None"]  # (prompt, job type) -> rewritten prompt, or None


@dataclass
class Plan:
    """A decoded job: the job as it will be made, the engine's input, and what the callback adds."""

    job: Job
    input: Any
    facts: dict[str, Any] = field(default_factory=dict)  # job-level callback metadata
    asset_facts: dict[str, Any] = field(default_factory=dict)  # added to every asset's metadata


@dataclass
class PlanTools:
    """What a planner may use: the fetcher as a function, and the engine's capabilities after setup."""

    fetch_image: FetchImage | None
    engine: Any


Planner = Callable[[Job, PlanTools], Plan]


def known_name(job: Job, normalize: Callable[[str], str]) -> str:
    """The job's scheduler (or solver) in the engine's own spelling; an unknown one fails the job."""
    try:
        return normalize(job.scheduler)
    except ValueError as exc:
        raise JobError("invalid_parameter", str(exc), job_id=job.id) from None


def require_fetcher(tools: PlanTools, job: Job) -> FetchImage:
    if tools.fetch_image is None:
        raise JobError("reference_error", "this worker has no reference fetcher configured", job_id=job.id)
    return tools.fetch_image


class Decoder:
    def __init__(self, presets: Presets, policy: str, planner: Planner, engine: Any,
                 job_types: Collection[str] | None = None, fetch_image: FetchImage | None = None,
                 enhance: Enhance | None = None, enhance_label: str = "qwen_chat_queue"):
        self.presets = presets
        self.policy = policy
        self.planner = planner
        self.job_types = job_types
        self.tools = PlanTools(fetch_image=fetch_image, engine=engine)
        self.enhance = enhance
        self.enhance_label = enhance_label

    def parse(self, raw: Any) -> Job:
        job = parse_job(raw, self.presets, self.policy)
        if self.job_types is not None and job.type not in self.job_types:
            raise JobError("unsupported_job_type", f"this worker does not run {job.type}", job_id=job.id)
        return job

    def plan(self, job: Job) -> Plan:
        facts: dict[str, Any] = {}
        if job.enhance_prompt:
            prompt, strategy = self._enhanced(job)
            facts = {"original_prompt": job.prompt, "final_prompt": prompt, "enhancement_strategy": strategy}
            job = job.with_changes(prompt=prompt)
        plan = self.planner(job, self.tools)
        plan.facts = {**facts, **plan.facts}
        return plan

    def _enhanced(self, job: Job) -> tuple[str, str]:
        if self.enhance is None:
            return job.prompt, "none (no chat queue configured)"
        try:
            enhanced = self.enhance(job.prompt, job.type)
        except Exception as exc:  # trouble reaching the chat worker must not cost the job its video
            return job.prompt, f"none (enhancement failed: {type(exc).__name__})"
        if not enhanced:
            return job.prompt, "none (enhancement timed out or failed)"
        return enhanced, self.enhance_label


def plan_as_given(job: Job, _tools: PlanTools) -> Plan:
    """The job exactly as parsed: for engines with no model constraints to apply (sim)."""
    return Plan(job=job, input=generation_of(job))


def generation_of(job: Job, **changes: Any) -> Generation:
    """The model-facing input of a job, with planner `changes` (size, steps, references) applied."""
    values = dict(
        id=job.id, media=job.media, prompt=job.encoder_prompt, negative_prompt=job.negative_prompt,
        width=job.width, height=job.height, steps=job.steps, guidance_scale=job.guidance_scale,
        scheduler=job.scheduler, seeds=tuple(job.image_seeds()), compel=job.compel_enabled, mode=job.mode,
        frames=job.frames, fps=job.fps, shift=job.shift, denoise_strength=job.references.denoise_strength,
        step_cache=job.quality == "fast",
    )
    values.update(changes)
    return Generation(**values)

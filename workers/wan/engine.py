"""The WAN engine: Wan 2.1 loaded once and kept, videos and one-frame images, reference frames.

The replaced fleet started a subprocess that reloaded the model for every job; here the pipeline
lives as long as the worker. Requested frame counts and sizes are made valid by documented rules
(and reported as generated); `*_enhanced` prompts are rewritten by the chat worker through
chat_queue before the job reaches the GPU; reference frames need a VACE model, and without one
the configured policy decides, truthfully reported.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared import keys
from shared.chat_client import request_enhancement
from shared.contract import Job, JobError
from shared.engine import Engine, ImageOutput, JobResult, RunContext, VideoOutput
from shared.fetch import ReferenceFetcher
from shared.gpu import resolve_dtype
from shared.media import fit_image
from workers.wan.config import WANSettings

JOB_TYPES = ("image_fast", "image_high", "video_fast", "video_high", "image7b_fast_enhanced",
             "image7b_high_enhanced", "video7b_fast_enhanced", "video7b_high_enhanced")


def valid_frame_count(requested: int) -> int:
    """Wan generates 4k+1 frames: round down to the nearest such count (83 → 81), at least 1."""
    return max(1, ((requested - 1) // 4) * 4 + 1)


def valid_side(requested: int) -> int:
    """Each side rounded down to a multiple of 16 (the VAE's 8x times the 2x patch), at least 16."""
    return max(16, (requested // 16) * 16)


def make_solver(name: str, base_config: dict, shift: float):
    import diffusers

    key = name.strip().lower().replace(" ", "").replace("_", "").replace("-", "")
    if key == "unipc":
        return diffusers.UniPCMultistepScheduler.from_config(base_config, flow_shift=shift)
    if key in ("dpm++", "dpmpp", "dpmsolver++", "dpm"):
        return diffusers.DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=shift)
    if key in ("euler", "flowmatcheuler"):
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    raise ValueError(f"unknown WAN solver {name!r}; known: unipc, dpm++, euler")


class WANEngine(Engine):
    name = "wan"
    queues = (keys.WAN_QUEUE,)
    job_types = JOB_TYPES
    max_batch_images = 1  # one video per call: a 480x832x81 clip fills the GPU on its own
    announce_function = "update-worker-url"  # the backend calls the video worker directly too

    def __init__(self, model: str, config: WANSettings | None = None, fetcher: ReferenceFetcher | None = None,
                 redis_client=None, era: str = "v1"):
        self.model = model
        self.config = config or WANSettings()
        self.fetcher = fetcher
        self.redis = redis_client  # for chat_queue enhancement requests
        self.era = era
        self.pipe = None
        self.is_vace = False
        self.device = "cpu"
        self.prepared: dict[str, dict] = {}  # job id → references and prompt facts, from prepare()

    # --------------------------------------------------------------------------- setup

    def setup(self, device: str) -> None:
        import diffusers

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA GPU is visible (use --device cpu to run slowly on the CPU)")
        if not (Path(self.model) / "model_index.json").exists():
            raise FileNotFoundError(f"WAN model {self.model} is not a diffusers folder (no model_index.json)")
        self.device = device
        dtype = resolve_dtype(self.config.dtype, device)
        # The VAE stays in fp32 (Wan's recommendation: half precision bands the colours).
        vae = diffusers.AutoencoderKLWan.from_pretrained(self.model, subfolder="vae", dtype=torch.float32,
                                                         local_files_only=True)
        pipe = diffusers.DiffusionPipeline.from_pretrained(self.model, vae=vae, dtype=dtype, local_files_only=True)
        self.is_vace = type(pipe).__name__ == "WanVACEPipeline"
        pipe.to(device)
        if self.config.text_encoder_device == "cpu":
            pipe.text_encoder.to("cpu", dtype=torch.float32)  # saves ~11 GB of GPU memory on the real model
        pipe.set_progress_bar_config(disable=True)
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self.pipe = pipe
        self._cache_enabled = False
        if self.config.warmup:
            self._generate(None, "warm up", "", 32, 32, 1, 2, 5.0, "unipc", 3.0, 0, None)

    # ------------------------------------------------------------------- before the GPU

    def prepare(self, job: Job) -> Job:
        try:
            make_solver(job.scheduler, {}, job.shift or 5.0)
        except ValueError as exc:
            raise JobError("invalid_parameter", str(exc), job_id=job.id) from None
        frames = 1 if job.media == "image" else valid_frame_count(job.frames)
        width, height = valid_side(job.width), valid_side(job.height)
        facts: dict = {"original_prompt": job.prompt, "final_prompt": job.prompt, "enhancement_strategy": "none",
                       "requested_frames": job.frames,
                       "requested_size": list(job.requested_size or (job.width, job.height))}
        prompt = job.prompt
        if job.enhance_prompt:
            prompt, facts["enhancement_strategy"] = self._enhance(job)
            facts["final_prompt"] = prompt
        facts.update(self._references(job, width, height))
        self.prepared[job.id] = facts
        return job.with_changes(frames=frames, width=width, height=height, prompt=prompt)

    def _enhance(self, job: Job) -> tuple[str, str]:
        if self.redis is None:
            return job.prompt, "none (no chat queue configured)"
        try:
            enhanced = request_enhancement(self.redis, self.era, job.prompt, job.type, self.config.enhance_timeout_seconds)
        except Exception as exc:  # Redis trouble must not cost the job its video
            return job.prompt, f"none (enhancement failed: {type(exc).__name__})"
        if enhanced is None:
            return job.prompt, "none (enhancement timed out or failed)"
        return enhanced, "qwen_chat_queue"

    def _references(self, job: Job, width: int, height: int) -> dict:
        refs = job.references
        wanted = refs.video_reference_mode
        if wanted == "none":
            return {"reference_mode_applied": "none"}
        if not self.is_vace:
            if self.config.reference_policy == "fail":
                raise JobError("REFERENCE_UNSUPPORTED",
                               f"REFERENCE_UNSUPPORTED: reference mode {wanted!r} needs a Wan VACE model; this worker "
                               f"serves text-to-video only (set WAN_REFERENCE_POLICY=t2v to generate without it)",
                               job_id=job.id)
            return {"reference_mode_applied": "none", "reference_mode_requested": wanted}
        if self.fetcher is None:
            raise JobError("reference_error", "this worker has no reference fetcher configured", job_id=job.id)
        urls = {"single": [refs.image_url or refs.start_url], "start": [refs.start_url or refs.image_url],
                "end": [refs.end_url or refs.image_url], "both": [refs.start_url, refs.end_url]}[wanted]
        if not all(urls):
            raise JobError("invalid_parameter", f"reference mode {wanted!r} is missing its reference URL", job_id=job.id)
        images = [fit_image(self.fetcher.fetch_image(u), width, height, "cover") for u in urls]
        return {"reference_mode_applied": wanted, "reference_mode_requested": wanted, "_images": images}

    # -------------------------------------------------------------------------- the GPU

    def run(self, jobs: list[Job], ctx: RunContext) -> list[JobResult | JobError]:
        results: list[JobResult | JobError] = []
        for job in jobs:
            facts = self.prepared.pop(job.id, {})
            images = facts.pop("_images", None)
            try:
                items = []
                for seed in job.image_seeds():
                    frames = self._generate_with_retry(job, images, seed, ctx, facts.get("reference_mode_applied"))
                    if job.media == "image":
                        items.append(ImageOutput(image=Image.fromarray(_to_uint8(frames[0])), seed=seed))
                    else:
                        items.append(VideoOutput(frames=_to_uint8(frames), fps=job.fps, seed=seed))
                meta = {k: v for k, v in facts.items()}
                meta.update({"frame_num": job.frames, "fps": job.fps, "width": job.width, "height": job.height,
                             "sample_shift": job.shift, "sample_solver": job.scheduler})
                if job.media == "video":
                    meta["duration"] = round(job.frames / job.fps, 3)
                results.append(JobResult(job=job, items=items, metadata=meta))
            except JobError as exc:
                results.append(exc)
        return results

    def _generate_with_retry(self, job, images, seed, ctx, mode):
        args = (job, job.prompt, job.negative_prompt, job.width, job.height, job.frames, job.steps,
                job.guidance_scale, job.scheduler, job.shift or 5.0, seed, ctx)
        try:
            return self._generate(*args, images=images, mode=mode)
        except torch.OutOfMemoryError:
            self._free()
            self.pipe.vae.enable_tiling()  # decoding is the usual peak; tile it and try once more
            self.pipe.vae.enable_slicing()
            try:
                return self._generate(*args, images=images, mode=mode)
            except torch.OutOfMemoryError:
                self._free()
                raise JobError("out_of_memory", f"{job.width}x{job.height}x{job.frames} does not fit in GPU memory "
                                                "even with VAE tiling; try fewer frames or a smaller size",
                               retryable=True) from None

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate(self, job, prompt, negative, width, height, frames, steps, guidance, solver, shift, seed, ctx,
                  images=None, mode=None):
        pipe = self.pipe
        pipe.scheduler = make_solver(solver, self._base_scheduler_config, shift)
        self._set_cache(job is not None and job.quality == "fast" and self.config.cache == "first_block")
        kwargs = dict(height=height, width=width, num_frames=frames, num_inference_steps=steps,
                      guidance_scale=guidance, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(seed))
        if self.config.text_encoder_device == "cpu":
            # 512 tokens, as the pipeline's own call uses (encode_prompt alone defaults to 226).
            embeds, negative_embeds = pipe.encode_prompt(prompt, negative, do_classifier_free_guidance=guidance > 1,
                                                         max_sequence_length=512, device=torch.device("cpu"))
            dtype = pipe.transformer.dtype
            kwargs["prompt_embeds"] = embeds.to(self.device, dtype)
            if negative_embeds is not None:
                kwargs["negative_prompt_embeds"] = negative_embeds.to(self.device, dtype)
        else:
            kwargs.update(prompt=prompt, negative_prompt=negative)
        if ctx is not None:
            kwargs["callback_on_step_end"] = _StepHook(ctx, job, steps)
        if self.is_vace:
            kwargs.update(_vace_inputs(mode, images, width, height, frames))
        with torch.inference_mode():
            return pipe(**kwargs).frames[0]

    def _set_cache(self, wanted: bool) -> None:
        if wanted == self._cache_enabled:
            return
        if wanted:
            from diffusers import FirstBlockCacheConfig

            self.pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=self.config.cache_threshold))
        else:
            self.pipe.transformer.disable_cache()
        self._cache_enabled = wanted


def _vace_inputs(mode: str | None, images: list[Image.Image] | None, width: int, height: int, frames: int) -> dict:
    """VACE conditioning: known frames in `video` with mask 0 (keep), the rest grey with mask 255 (make)."""
    grey = Image.new("RGB", (width, height), (127, 127, 127))
    keep, make = Image.new("L", (width, height), 0), Image.new("L", (width, height), 255)
    video, mask = [grey] * frames, [make] * frames
    if mode == "single" and images:
        return {"video": video, "mask": mask, "reference_images": [images[0]]}
    if mode in ("start", "both") and images:
        video[0], mask[0] = images[0], keep
    if mode in ("end", "both") and images and frames > 1:
        video[-1], mask[-1] = images[-1], keep
    return {"video": video, "mask": mask}


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class _StepHook:
    def __init__(self, ctx: RunContext, job: Job, steps: int):
        self.ctx, self.job, self.steps = ctx, job, steps

    def __call__(self, pipe, step, timestep, callback_kwargs):
        self.ctx.check(self.job)
        self.ctx.progress(self.job, step + 1, self.steps)
        return callback_kwargs

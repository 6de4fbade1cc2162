"""The SDXL engine: one copy of the weights serving text-to-image and image-to-image.

Work is cut into images, not jobs: image i of a job has its own seed (`seed + i`), its own CPU
generator and its own row of prompt embeddings, so images of compatible jobs share one pipeline
call and each job still gets exactly the images it would have got alone (within float error).
The same cut makes out-of-memory recovery simple: halve the images per call and go on.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from shared import keys
from shared.contract import Job, JobError
from shared.engine import Engine, ImageOutput, JobResult, RunContext
from shared.fetch import ReferenceFetcher
from shared.gpu import resolve_dtype
from shared.media import fit_image
from workers.sdxl.config import SDXLSettings
from workers.sdxl.prompts import PromptEmbeddings, PromptEncoder
from workers.sdxl.schedulers import make_scheduler, normalize_scheduler


@dataclass
class _Image:
    """One image to generate: which job, which seed, its conditioning and reference."""

    job: Job
    index: int
    seed: int
    embeddings: PromptEmbeddings
    reference: Image.Image | None


def load_pipeline(model: str, config_dir: str | None, dtype: torch.dtype):
    """A diffusers folder, or a single `.safetensors` with the architecture from a local config folder."""
    from diffusers import StableDiffusionXLPipeline

    path = Path(model)
    if path.is_dir():
        return StableDiffusionXLPipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
    if not path.is_file():
        raise FileNotFoundError(f"SDXL model {path} does not exist")
    config = Path(config_dir) if config_dir else path.parent
    if not (config / "model_index.json").exists():
        raise FileNotFoundError(
            f"single-file checkpoint {path.name} needs a diffusers config folder (model_index.json, component "
            f"configs, tokenizers): set SDXL_CONFIG_DIR; {config} has none"
        )
    return StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, dtype=dtype
    )


class SDXLEngine(Engine):
    name = "sdxl"
    queues = (keys.SDXL_QUEUE,)
    job_types = ("sdxl_image_fast", "sdxl_image_high")

    def __init__(self, model: str, config: SDXLSettings | None = None, fetcher: ReferenceFetcher | None = None,
                 pipeline_factory=None):
        self.model = model
        self.pipeline_factory = pipeline_factory or load_pipeline  # the benchmark passes random weights
        self.config = config or SDXLSettings()
        self.max_batch_images = self.config.max_batch_images
        self.fetcher = fetcher
        self.references: dict[str, tuple[Image.Image, dict]] = {}
        self.pipe = None
        self.img2img = None
        self.device = "cpu"

    # --------------------------------------------------------------------------- setup

    def setup(self, device: str) -> None:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA GPU is visible (use --device cpu to run slowly on the CPU)")
        self.device = device
        dtype = resolve_dtype(self.config.dtype, device)
        pipe = self.pipeline_factory(self.model, self.config.config_dir, dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        if self.config.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if self.config.fuse_qkv:
            pipe.fuse_qkv_projections()
        if self.config.compile:
            pipe.unet = torch.compile(pipe.unet, mode=self.config.compile_mode, fullgraph=False)
        self.pipe = pipe
        # Same modules, no second copy of the weights.
        self.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
        self.img2img.set_progress_bar_config(disable=True)
        self.encoder = PromptEncoder(pipe, device)
        self._base_scheduler_config = dict(pipe.scheduler.config)
        if self.config.warmup:
            self._warm_up()

    def _warm_up(self) -> None:
        side = 1024 if self.device.startswith("cuda") else 64
        embeddings = self.encoder.encode("warm up", "", use_compel=False)
        image = _Image(job=None, index=0, seed=0, embeddings=embeddings, reference=None)  # type: ignore[arg-type]
        self._call_pipeline([image], "txt2img", side, side, 2, 5.0, "euler", None)

    # ------------------------------------------------------------------- before the GPU

    def prepare(self, job: Job) -> Job:
        try:
            normalize_scheduler(job.scheduler)
        except ValueError as exc:
            raise JobError("invalid_parameter", str(exc), job_id=job.id) from None
        if job.width % 8 or job.height % 8:
            raise JobError("invalid_parameter", f"SDXL needs sizes in multiples of 8, got {job.width}x{job.height}",
                           job_id=job.id)
        refs = job.references
        if job.pipeline != "img2img" or not refs.image_url:
            return job
        if self.fetcher is None:
            raise JobError("reference_error", "this worker has no reference fetcher configured", job_id=job.id)
        reference = self.fetcher.fetch_image(refs.image_url)
        original = reference.size
        width, height = job.width, job.height
        policy = self.config.reference_resize
        if refs.exact_copy:
            # A copy keeps the reference's framing: its aspect ratio at the job's pixel count.
            aspect = reference.width / reference.height
            pixels = job.width * job.height
            width = min(2048, max(64, round(math.sqrt(pixels * aspect) / 8) * 8))
            height = min(2048, max(64, round(math.sqrt(pixels / aspect) / 8) * 8))
            policy = "stretch"  # aspect already matches to within rounding
        reference = fit_image(reference, width, height, policy)
        steps = job.steps
        if int(steps * refs.denoise_strength) < 1:
            # img2img runs steps * denoise steps; below one it would not run at all.
            steps = math.ceil(1 / max(refs.denoise_strength, 1e-3))
        self.references[job.id] = (reference, {"reference_resize": policy, "reference_original_size": list(original)})
        return job.with_changes(width=width, height=height, steps=min(steps, 1000))

    def batch_key(self, job: Job) -> Hashable | None:
        denoise = job.references.denoise_strength if job.pipeline == "img2img" else None
        return (job.pipeline, job.width, job.height, job.steps, job.guidance_scale,
                normalize_scheduler(job.scheduler), denoise)

    # -------------------------------------------------------------------------- the GPU

    def run(self, jobs: list[Job], ctx: RunContext) -> list[JobResult | JobError]:
        failures: dict[str, JobError] = {}
        images: list[_Image] = []
        for job in jobs:
            try:
                embeddings = self.encoder.encode(job.encoder_prompt, job.negative_prompt, job.compel_enabled)
            except Exception as exc:  # a Compel syntax error, say: this job only
                failures[job.id] = JobError("invalid_parameter", f"prompt could not be encoded: {exc}")
                continue
            reference = self.references.get(job.id, (None, {}))[0]
            images += [_Image(job, i, seed, embeddings, reference) for i, seed in enumerate(job.image_seeds())]

        produced: dict[tuple[str, int], Image.Image] = {}
        cancelled: set[str] = set()  # jobs cancelled while sharing a call with others
        # Prompts of different lengths cannot share a call: group by embedding length.
        for length in sorted({im.embeddings.length for im in images}):
            group = [im for im in images if im.embeddings.length == length]
            try:
                for im, picture in self._generate(group, ctx, cancelled):
                    produced[(im.job.id, im.index)] = picture
            except JobError as exc:
                for im in group:
                    failures.setdefault(im.job.id, exc)
        for job_id in cancelled:
            failures.setdefault(job_id, JobError("cancelled", "cancelled by request"))
        chunks = {im.job.id: im.embeddings.chunks for im in images}

        results: list[JobResult | JobError] = []
        for job in jobs:
            extra = self.references.pop(job.id, (None, {}))[1]
            if job.id in failures:
                results.append(failures[job.id])
                continue
            items = [ImageOutput(image=produced[(job.id, i)], seed=seed, metadata=dict(extra))
                     for i, seed in enumerate(job.image_seeds())]
            results.append(JobResult(job=job, items=items, metadata={
                "scheduler": normalize_scheduler(job.scheduler), "compel": job.compel_enabled,
                "prompt_chunks": chunks[job.id],
            }))
        return results

    def _generate(self, images: list[_Image], ctx: RunContext, cancelled: set[str]):
        """Yield (image, picture); on CUDA out-of-memory, free and retry in halves."""
        job = images[0].job
        try:
            pictures = self._call_pipeline(
                images, job.pipeline, job.width, job.height, job.steps, job.guidance_scale,
                job.scheduler, job.references.denoise_strength, ctx, cancelled,
            )
            yield from zip(images, pictures, strict=True)
        except torch.OutOfMemoryError:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(images) == 1:
                raise JobError(
                    "out_of_memory",
                    f"one {job.width}x{job.height} image does not fit in GPU memory; try a smaller size",
                    retryable=True,  # memory held by another process now may be free on the next try
                ) from None
            half = len(images) // 2
            yield from self._generate(images[:half], ctx, cancelled)
            yield from self._generate(images[half:], ctx, cancelled)

    def _call_pipeline(self, images, pipeline, width, height, steps, guidance, scheduler, denoise, ctx=None,
                       cancelled=None):
        pipe = self.img2img if pipeline == "img2img" else self.pipe
        pipe.scheduler = make_scheduler(scheduler, self._base_scheduler_config)
        if max(width, height) > self.config.vae_tiling_above:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        device_dtype = pipe.unet.dtype

        def stack(attr):
            return torch.cat([getattr(im.embeddings, attr) for im in images]).to(self.device, device_dtype)

        kwargs = dict(
            prompt_embeds=stack("positive"), negative_prompt_embeds=stack("negative"),
            pooled_prompt_embeds=stack("pooled_positive"), negative_pooled_prompt_embeds=stack("pooled_negative"),
            num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
            # CPU generators: the same seed gives the same noise on any GPU model.
            generator=[torch.Generator("cpu").manual_seed(im.seed) for im in images],
        )
        if ctx is not None:
            hook = _StepHook(ctx, [im.job for im in images], steps, denoise, pipeline, cancelled)
            kwargs["callback_on_step_end"] = hook
        if pipeline == "img2img":
            kwargs.update(image=[im.reference for im in images], strength=denoise)
        else:
            kwargs.update(width=width, height=height)
        with torch.inference_mode():
            return pipe(**kwargs).images


class _StepHook:
    """Between denoising steps: progress for every job, and stop checks.

    A cancelled job in a shared batch is noted and dropped at the end (the others go on); a
    timeout or shutdown stops the whole call.
    """

    def __init__(self, ctx: RunContext, jobs: list[Job], steps: int, denoise: float | None, pipeline: str,
                 cancelled: set[str]):
        self.ctx = ctx
        self.jobs = list({j.id: j for j in jobs}.values())
        self.total = int(steps * denoise) if pipeline == "img2img" and denoise else steps
        self.cancelled = cancelled

    def __call__(self, pipe, step, timestep, callback_kwargs):
        for job in self.jobs:
            if job.id in self.cancelled:
                continue
            try:
                self.ctx.check(job)
            except JobError as exc:
                if exc.error_type != "cancelled":
                    raise
                self.cancelled.add(job.id)
            self.ctx.progress(job, step + 1, max(self.total, 1))
        if all(j.id in self.cancelled for j in self.jobs):
            raise JobError("cancelled", "cancelled by request")
        return callback_kwargs

"""The SDXL engine: one copy of the weights serving text-to-image and image-to-image.

It only computes: decode (workers/sdxl/plan.py) has already checked the job, fetched and fitted
its reference and built the `Generation`. Work is cut into images, not jobs: image i of a job
has its own seed (`seed + i`), its own CPU generator and its own row of prompt embeddings, so
images of compatible jobs share one pipeline call and each job still gets exactly the images it
would have got alone (within float error).
The same cut makes out-of-memory recovery simple: halve the images per call and go on.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.engine.contract import Engine, RunContext
from shared.engine.errors import JobError
from shared.engine.inputs import Generated, Generation, ImageOutput
from shared.ops.engine_settings import SDXLSettings
from shared.ops.gpu import resolve_dtype
from shared.ops.logging import get_logger
from workers.accel.compile_watch import compiles_logged, graphs_compiled, uncompile, warm_up_logged
from workers.accel.cuda_graphs import GraphedForward
from workers.sdxl.prompts import PromptEmbeddings, PromptEncoder
from workers.sdxl.schedulers import make_scheduler
from workers.sdxl.speed import apply_switches, graphs_on, warmup_sizes
from workers.sdxl.step_cache import DeepCache

log = get_logger(component="sdxl")


@dataclass
class _Image:
    """One image to generate: which input, which seed, its conditioning and reference."""

    item: Generation
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

    def __init__(self, model: str, config: SDXLSettings | None = None, pipeline_factory=None):
        self.model = model
        self.pipeline_factory = pipeline_factory or load_pipeline  # the benchmark passes random weights
        self.config = config or SDXLSettings()
        self.max_batch_images = self.config.max_batch_images
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
        # Same modules, no second copy of the weights. from_pipe casts every module it shares to its
        # `dtype` argument, float32 when none is given: without it a bf16 pipeline silently ran in fp32.
        self.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe, dtype=dtype)
        self.img2img.set_progress_bar_config(disable=True)
        if self.config.cache != "none" and self.config.compile and not self.config.compile_regional:
            raise ValueError("SDXL_CACHE=deep swaps UNet blocks per step, which a whole-UNet SDXL_COMPILE cannot "
                             "follow: set SDXL_COMPILE_REGIONAL=true or SDXL_CACHE=none")
        apply_switches(pipe, self.config, device)  # compile, cuDNN autotuning, VAE precision (workers/sdxl/speed.py)
        self.img2img.unet, self.img2img.vae = pipe.unet, pipe.vae  # compiling may have replaced them
        self.unet_graphs = GraphedForward(pipe.unet, device=device) if graphs_on(self.config, device) else None
        self.pipe = pipe
        self.compiled = self.config.compile
        self.encoder = PromptEncoder(pipe, device)
        self._base_scheduler_config = dict(pipe.scheduler.config)
        if self.config.warmup or self.config.compile:  # a compiled worker never leaves its compile to a job
            with warm_up_logged(self.config.compile, "sdxl"):
                self._warm_up()

    def _warm_up(self) -> None:
        embeddings = self.encoder.encode("warm up", "", use_compel=False)
        image = _Image(item=None, index=0, seed=0, embeddings=embeddings, reference=None)  # type: ignore[arg-type]
        self.warmup_report = []  # per shape: seconds and graphs compiled (what a slow compile spent its time on)
        begun = time.monotonic()
        for width, height, batch, guidance in warmup_sizes(self.config, self.device):
            before, started = graphs_compiled(), time.monotonic()
            self._call_pipeline([image] * batch, "txt2img", width, height, 2, guidance, "euler", None)
            shape = {"shape": f"{width}x{height}x{batch}", "guidance": guidance,
                     "seconds": round(time.monotonic() - started, 1), "graphs": graphs_compiled() - before}
            self.warmup_report.append(shape)
            log.info("sdxl_warmup_shape", **shape)
            if self.compiled and time.monotonic() - begun > self.config.compile_budget_seconds:
                self._stop_compiling(time.monotonic() - begun)

    def _stop_compiling(self, seconds: float) -> None:
        """The warm-up's compile ran past SDXL_COMPILE_BUDGET_SECONDS: the rest runs eagerly, so the
        worker's start stays bounded. CUDA graphs already captured keep their compiled kernels."""
        log.warning("sdxl_compile_over_budget", seconds=round(seconds, 1),
                    budget=self.config.compile_budget_seconds, fallback="eager")
        pipe = self.pipe
        uncompile(pipe.unet)  # the regional compile's blocks
        if isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule):
            pipe.unet = self.img2img.unet = pipe.unet._orig_mod
        if isinstance(pipe.vae.decoder, torch._dynamo.eval_frame.OptimizedModule):
            pipe.vae.decoder = pipe.vae.decoder._orig_mod
        self.compiled = False
        self.warmup_report.append({"compile_stopped_after_s": round(seconds, 1)})

    def batch_key(self, item: Generation) -> Hashable | None:
        denoise = item.denoise_strength if item.mode == "img2img" else None
        cached = item.step_cache if self.config.cache != "none" else None  # cached and uncached never share a call
        return (item.mode, item.width, item.height, item.steps, item.guidance_scale, item.scheduler, denoise,
                cached)

    # -------------------------------------------------------------------------- the GPU

    def run(self, items: list[Generation], ctx: RunContext) -> list[Generated | JobError]:
        failures: dict[str, JobError] = {}
        images: list[_Image] = []
        for item in items:
            try:
                embeddings = self.encoder.encode(item.prompt, item.negative_prompt, item.compel)
            except Exception as exc:  # a Compel syntax error, say: this input only
                failures[item.id] = JobError("invalid_parameter", f"prompt could not be encoded: {exc}")
                continue
            images += [_Image(item, i, seed, embeddings, item.reference) for i, seed in enumerate(item.seeds)]

        produced: dict[tuple[str, int], np.ndarray] = {}
        cancelled: set[str] = set()  # inputs cancelled while sharing a call with others
        # Prompts of different lengths cannot share a call: group by embedding length.
        for length in sorted({im.embeddings.length for im in images}):
            group = [im for im in images if im.embeddings.length == length]
            try:
                for im, picture in self._generate(group, ctx, cancelled):
                    produced[(im.item.id, im.index)] = picture
            except JobError as exc:
                for im in group:
                    failures.setdefault(im.item.id, exc)
        for item_id in cancelled:
            failures.setdefault(item_id, JobError("cancelled", "cancelled by request"))
        chunks = {im.item.id: im.embeddings.chunks for im in images}

        results: list[Generated | JobError] = []
        for item in items:
            if item.id in failures:
                results.append(failures[item.id])
                continue
            pictures = [ImageOutput(pixels=produced[(item.id, i)], seed=seed) for i, seed in enumerate(item.seeds)]
            results.append(Generated(items=pictures, metadata={
                "scheduler": item.scheduler, "compel": item.compel, "prompt_chunks": chunks[item.id]}))
        return results

    def _generate(self, images: list[_Image], ctx: RunContext, cancelled: set[str]):
        """Yield (image, picture); on CUDA out-of-memory, free and retry in halves."""
        item = images[0].item
        try:
            with compiles_logged(self.compiled, "sdxl", width=item.width, height=item.height,
                                 images=len(images), guidance=item.guidance_scale):
                pictures = self._call_pipeline(
                    images, item.mode, item.width, item.height, item.steps, item.guidance_scale,
                    item.scheduler, item.denoise_strength, ctx, cancelled,
                )
            yield from zip(images, pictures, strict=True)
        except torch.OutOfMemoryError:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(images) == 1:
                raise JobError(
                    "out_of_memory",
                    f"one {item.width}x{item.height} image does not fit in GPU memory; try a smaller size",
                    retryable=True,  # memory held by another process now may be free on the next try
                ) from None
            half = len(images) // 2
            yield from self._generate(images[:half], ctx, cancelled)
            yield from self._generate(images[half:], ctx, cancelled)

    def _call_pipeline(self, images, mode, width, height, steps, guidance, scheduler, denoise, ctx=None,
                       cancelled=None):
        pipe = self.img2img if mode == "img2img" else self.pipe
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
            # Pixels as floats: turning them into images is left to the delivery threads.
            num_inference_steps=steps, guidance_scale=guidance, output_type="np",
            # CPU generators: the same seed gives the same noise on any GPU model.
            generator=[torch.Generator("cpu").manual_seed(im.seed) for im in images],
        )
        if ctx is not None:
            hook = _StepHook(ctx, [im.item for im in images], steps, denoise, mode, cancelled)
            kwargs["callback_on_step_end"] = hook
        if mode == "img2img":
            kwargs.update(image=[im.reference for im in images], strength=denoise)
        else:
            kwargs.update(width=width, height=height)
        cached = self.config.cache == "deep" and all(im.item is not None and im.item.step_cache for im in images)
        speedup = DeepCache(pipe.unet, self.config.cache_interval) if cached else self.unet_graphs or nullcontext()
        with torch.inference_mode(), speedup:
            return pipe(**kwargs).images


class _StepHook:
    """Between denoising steps: progress for every input, and stop checks.

    A cancelled input in a shared batch is noted and dropped at the end (the others go on); a
    timeout or shutdown stops the whole call.
    """

    def __init__(self, ctx: RunContext, items: list[Generation], steps: int, denoise: float | None, mode: str,
                 cancelled: set[str]):
        self.ctx = ctx
        self.items = list({i.id: i for i in items}.values())
        self.total = int(steps * denoise) if mode == "img2img" and denoise else steps
        self.cancelled = cancelled

    def __call__(self, pipe, step, timestep, callback_kwargs):
        for item in self.items:
            if item.id in self.cancelled:
                continue
            try:
                self.ctx.check(item)
            except JobError as exc:
                if exc.error_type != "cancelled":
                    raise
                self.cancelled.add(item.id)
            self.ctx.progress(item, step + 1, max(self.total, 1))
        if all(i.id in self.cancelled for i in self.items):
            raise JobError("cancelled", "cancelled by request")
        return callback_kwargs

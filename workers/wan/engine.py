"""The WAN engine: Wan 2.1 loaded once and kept, videos and one-frame images, reference frames.

The replaced fleet started a subprocess that reloaded the model for every job; here the pipeline
lives as long as the worker. It only computes: decode (workers/wan/plan.py) has made the frame
count and size valid, fetched and fitted the reference frames and rewritten `*_enhanced`
prompts before an input reaches it.
"""

from __future__ import annotations

import gc
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.engine.contract import Engine, RunContext
from shared.engine.errors import JobError
from shared.engine.inputs import Generated, Generation, ImageOutput, VideoOutput
from shared.ops.engine_settings import WANSettings
from shared.ops.gpu import resolve_dtype, usable_memory_bytes
from shared.ops.logging import get_logger
from workers.accel.compile_watch import compiles_logged, uncompile, warm_up_logged
from workers.accel.cuda_graphs import GraphedForward
from workers.wan.solvers import make_solver
from workers.wan.speed import (
    BatchedGuidance,
    apply_switches,
    batches_guidance,
    compiles,
    encoder_placement,
    graphs_on,
    module_bytes,
    warmup_shapes,
)

log = get_logger(component="wan")


class WANEngine(Engine):
    name = "wan"
    max_batch_images = 1  # one video per call: a 480x832x81 clip fills the GPU on its own

    def __init__(self, model: str, config: WANSettings | None = None):
        self.model = model
        self.config = config or WANSettings()
        self.pipe = None
        self.supports_reference_frames = False  # a VACE model, known after setup
        self.text_encoder_device = "gpu"  # gpu (the engine's device) or cpu, decided at setup
        self.device = "cpu"

    # --------------------------------------------------------------------------- setup

    def setup(self, device: str) -> None:
        import diffusers

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA GPU is visible (use --device cpu to run slowly on the CPU)")
        if not (Path(self.model) / "model_index.json").exists():
            raise FileNotFoundError(f"WAN model {self.model} is not a diffusers folder (no model_index.json)")
        self.device = device
        dtype = resolve_dtype(self.config.dtype, device)
        # The VAE in fp32 unless WAN_VAE_DTYPE says otherwise (Wan's advice: half precision can band colours).
        vae = diffusers.AutoencoderKLWan.from_pretrained(self.model, subfolder="vae", dtype=torch.float32,
                                                         local_files_only=True)
        pipe = diffusers.DiffusionPipeline.from_pretrained(self.model, vae=vae, dtype=dtype, local_files_only=True)
        self.supports_reference_frames = type(pipe).__name__ == "WanVACEPipeline"
        self.text_encoder_device = self._place_text_encoder(pipe, device)
        for name, part in pipe.components.items():
            if isinstance(part, torch.nn.Module) and not (name == "text_encoder" and self.text_encoder_device == "cpu"):
                part.to(device)
        if self.text_encoder_device == "cpu":
            pipe.text_encoder.to("cpu", dtype=torch.float32)  # saves ~11 GB of GPU memory on the real model
        pipe.set_progress_bar_config(disable=True)
        self.image_graphs = GraphedForward(pipe.transformer, device=device) if graphs_on(self.config, device) else None
        apply_switches(pipe, self.config, device)
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self.pipe = pipe
        self._cache_enabled = False
        self.compiled = compiles(self.config, device)
        if self.config.warmup or self.compiled:  # a compiled worker never leaves its compile to a job
            with warm_up_logged(self.compiled, "wan"):
                self._warm_up()

    def _place_text_encoder(self, pipe, device: str) -> str:
        """`gpu` (the engine's device) or `cpu`; `auto` decides on CUDA by the card's free memory."""
        wanted = self.config.text_encoder_device
        if wanted != "auto":
            return wanted
        if not device.startswith("cuda"):
            return "gpu"
        free = usable_memory_bytes()
        model = sum(module_bytes(part) for name, part in pipe.components.items()
                    if isinstance(part, torch.nn.Module) and name != "text_encoder")
        place = encoder_placement(free, module_bytes(pipe.text_encoder), model, self.config.text_encoder_headroom_gb)
        log.info("wan_text_encoder_placed", device=place, free_gib=round(free / 2**30, 1))
        return place

    def _warm_up(self) -> None:
        try:
            positions = getattr(self.pipe.transformer.config, "rope_max_seq_len", 1024)
            shapes = warmup_shapes(self.compiled, positions, self.config.batched_guidance, self.image_graphs is not None)
            for width, height, frames, guidance in shapes:
                warm = Generation(id="warm-up", media="video" if frames > 1 else "image", prompt="warm up",
                                  negative_prompt="", width=width, height=height, steps=2, guidance_scale=guidance,
                                  scheduler="unipc", seeds=(0,), frames=frames, shift=3.0)
                self._generate_with_retry(warm, 0, None)  # out of memory: VAE tiling, then a JobError
        except JobError as exc:  # the clip does not fit this card even tiled: jobs that size will say so themselves
            log.warning("wan_warmup_out_of_memory", error=exc.message)
        except Exception as exc:
            if not self.compiled:
                raise
            # Triton needs a C compiler and Python's headers; a host without them still serves, eagerly.
            log.warning("wan_compile_failed", error=f"{type(exc).__name__}: {str(exc)[:300]}", fallback="eager")
            uncompile(self.pipe.transformer)
            self.compiled = False
            if self.image_graphs is not None:  # graphs recorded around the failed compile go too
                self.image_graphs = GraphedForward(self.pipe.transformer, device=self.device)
            self._warm_up()

    # -------------------------------------------------------------------------- the GPU

    def run(self, items: list[Generation], ctx: RunContext) -> list[Generated | JobError]:
        results: list[Generated | JobError] = []
        for item in items:
            try:
                outputs: list[ImageOutput | VideoOutput] = []
                for seed in item.seeds:
                    with compiles_logged(self.compiled, "wan", width=item.width, height=item.height,
                                         frames=item.frames, guidance=item.guidance_scale):
                        frames = self._generate_with_retry(item, seed, ctx)
                    if item.media == "image":
                        outputs.append(ImageOutput(pixels=frames[0], seed=seed))  # made an image behind the GPU
                    else:
                        outputs.append(VideoOutput(frames=_to_uint8(frames), fps=item.fps, seed=seed))
                meta = {"frame_num": item.frames, "fps": item.fps, "width": item.width, "height": item.height,
                        "sample_shift": item.shift, "sample_solver": item.scheduler}
                if item.media == "video":
                    meta["duration"] = round(item.frames / item.fps, 3)
                results.append(Generated(items=outputs, metadata=meta))
            except JobError as exc:
                results.append(exc)
        return results

    def _generate_with_retry(self, item: Generation, seed: int, ctx: RunContext | None):
        try:
            return self._generate(item, seed, ctx)
        except torch.OutOfMemoryError:
            self._free()
            self.pipe.vae.enable_tiling()  # decoding is the usual peak; tile it and try once more
            self.pipe.vae.enable_slicing()
            try:
                return self._generate(item, seed, ctx)
            except torch.OutOfMemoryError:
                self._free()
                raise JobError("out_of_memory", f"{item.width}x{item.height}x{item.frames} does not fit in GPU memory "
                                                "even with VAE tiling; try fewer frames or a smaller size",
                               retryable=True) from None

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate(self, item: Generation, seed: int, ctx: RunContext | None):
        pipe = self.pipe
        pipe.scheduler = make_solver(item.scheduler, self._base_scheduler_config, item.shift or 5.0)
        cached = item.step_cache and self.config.cache == "first_block"
        self._set_cache(cached)
        # Both guidance passes in one batch: exact math, so not with the (approximate) step cache,
        # and only where the pipeline's calls alternate prompt / negative prompt (T2V).
        # One-frame images replay the transformer from CUDA graphs (exact; not with the step cache,
        # whose hooks decide per step what runs).
        graphs = self.image_graphs if item.frames == 1 and not cached else None
        batched = (batches_guidance(self.config, item.frames, graphs is not None) and item.guidance_scale > 1
                   and not cached and not self.supports_reference_frames)
        kwargs = dict(height=item.height, width=item.width, num_frames=item.frames,
                      num_inference_steps=item.steps, guidance_scale=item.guidance_scale, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(seed))
        if self.text_encoder_device == "cpu" or batched:
            # 512 tokens, as the pipeline's own call uses (encode_prompt alone defaults to 226).
            where = "cpu" if self.text_encoder_device == "cpu" else self.device
            embeds, negative_embeds = pipe.encode_prompt(
                item.prompt, item.negative_prompt, do_classifier_free_guidance=item.guidance_scale > 1,
                max_sequence_length=512, device=torch.device(where))
            dtype = pipe.transformer.dtype
            kwargs["prompt_embeds"] = embeds.to(self.device, dtype)
            if negative_embeds is not None:
                kwargs["negative_prompt_embeds"] = negative_embeds.to(self.device, dtype)
        else:
            kwargs.update(prompt=item.prompt, negative_prompt=item.negative_prompt)
        if ctx is not None:
            kwargs["callback_on_step_end"] = _StepHook(ctx, item, item.steps)
        if self.supports_reference_frames:
            kwargs.update(_vace_inputs(item.reference_mode, list(item.reference_frames), item.width, item.height,
                                       item.frames))
        with torch.inference_mode(), graphs or nullcontext():
            if batched:
                with BatchedGuidance(pipe.transformer, kwargs["negative_prompt_embeds"]):
                    return pipe(**kwargs).frames[0]
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
    def __init__(self, ctx: RunContext, item: Generation, steps: int):
        self.ctx, self.item, self.steps = ctx, item, steps

    def __call__(self, pipe, step, timestep, callback_kwargs):
        self.ctx.check(self.item)
        self.ctx.progress(self.item, step + 1, self.steps)
        return callback_kwargs

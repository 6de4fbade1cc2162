"""`ourvidz-worker bench sdxl`: seconds per image, batched across jobs vs one job at a time vs plain diffusers.

All three modes run the same jobs (one image each, different prompts and seeds) in one process:
- baseline: a plain `StableDiffusionXLPipeline` call per job with diffusers' defaults;
- alone: this worker's engine, one job per call (its speed switches on);
- batched: this worker's engine, up to `--batch` jobs' images in one call.
`--random-weights CONFIG_DIR` builds the architecture from a diffusers config folder with random
weights (same compute as the real model, nothing to download).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from shared.engine.contract import NoStops
from shared.engine.inputs import Generation
from shared.ops.gpu import random_init_device, synchronize
from workers.bench.measure import timed


def random_weights_pipeline(config_dir: str, _config=None, dtype: torch.dtype = torch.float16, seed: int = 0):
    """The full architecture from configs alone; tiny tokenizers (77 tokens still fix the compute).
    The same weights on every call (`seed`): a bench builds one per variant, and variants are
    compared pixel for pixel (the 2026-12-04 H200 run compared different random models)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from workers.tiny_clip import build_clip_tokenizer

    root = Path(config_dir)
    device = random_init_device()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    scheduler = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(root / "scheduler"))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
    )
    return pipe.to(dtype=dtype)



def baseline_sampler(pipe, work, device: str) -> Callable[[], float]:
    """Plain diffusers with its default settings, one call per job, warmed up: a sampler of seconds per image."""
    pipe.set_progress_bar_config(disable=True)

    def one(item: Generation):
        pipe(item.prompt, negative_prompt=item.negative_prompt, num_inference_steps=item.steps, width=item.width,
             height=item.height, guidance_scale=item.guidance_scale,
             generator=torch.Generator("cpu").manual_seed(item.seeds[0]))

    one(replace(work[0], steps=2))  # warm-up at the same shape, not timed
    return lambda: timed(lambda: [one(job) for job in work], device) / len(work)


def time_baseline(pipe, work, device: str) -> float:
    """One sample of `baseline_sampler`: seconds per image."""
    return baseline_sampler(pipe, work, device)()


def run_sdxl_bench(model: str, device: str = "cuda", jobs: int = 6, steps: int = 25, size: int = 1024,
                   batch: int = 6, random_weights: bool = False, dtype: str = "auto", compile: bool = False) -> dict[str, Any]:
    from shared.ops.engine_settings import SDXLSettings
    from shared.ops.gpu import resolve_dtype
    from workers.sdxl.engine import SDXLEngine, load_pipeline

    torch_dtype = resolve_dtype(dtype, device)
    factory = random_weights_pipeline if random_weights else load_pipeline
    # One image per job; the model's default scheduler and a short negative prompt, exactly what
    # the baseline gets.
    work = [Generation(id=f"bench-{i}", media="image", prompt=f"benchmark prompt {i}, a lighthouse at dawn",
                       negative_prompt="blurry, low quality", width=size, height=size, steps=steps,
                       guidance_scale=6.0, scheduler="euler", seeds=(i,)) for i in range(jobs)]

    baseline = time_baseline(factory(model, None, torch_dtype).to(device), work, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    config = SDXLSettings(max_batch_images=batch, dtype=dtype, compile=compile, warmup=False)
    engine = SDXLEngine(model, config, pipeline_factory=factory)
    engine.setup(device)
    prepared = work
    engine.run(prepared[:1], NoStops())  # warm-up (and compile), not timed
    engine.run(prepared[:min(batch, jobs)], NoStops())

    synchronize(device)
    started = time.perf_counter()
    for job in prepared:
        engine.run([job], NoStops())
    synchronize(device)
    alone = (time.perf_counter() - started) / jobs

    started = time.perf_counter()
    for i in range(0, jobs, batch):
        engine.run(prepared[i:i + batch], NoStops())
    synchronize(device)
    batched = (time.perf_counter() - started) / jobs

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    report = {
        "device": name, "model": "random weights from " + model if random_weights else model,
        "dtype": str(torch_dtype).removeprefix("torch."), "size": size, "steps": steps, "jobs": jobs, "batch": batch,
    }
    timings = {"diffusers_default": baseline, "worker_one_job_at_a_time": alone, "worker_batched_across_jobs": batched}
    report["seconds_per_image"] = {k: round(v, 4) for k, v in timings.items()}
    report["speedup_vs_diffusers"] = {k: round(baseline / v, 3) for k, v in timings.items()}
    report["table"] = "\n".join(
        [f"SDXL {size}x{size}, {steps} steps, {jobs} jobs of 1 image, batch {batch}, {report['dtype']} on {name}",
         f"{'mode':<28} {'s/image':>9} {'vs diffusers':>13}"]
        + [f"{k:<28} {v:>9.3f} {report['speedup_vs_diffusers'][k]:>12.2f}x" for k, v in report["seconds_per_image"].items()]
    )
    return report


def run_from_args(args) -> dict[str, Any]:
    return run_sdxl_bench(args.model, device=args.device, jobs=args.jobs, steps=args.steps, size=args.size,
                          batch=args.batch, random_weights=args.random_weights, dtype=args.dtype, compile=args.compile)

"""`ourvidz-worker bench wan`: seconds per job, image and video presets, worker vs plain diffusers.

Both run in one process on the same model: plain `WanPipeline` calls with diffusers' defaults (the
baseline), then this worker's engine, with step caching off and (optionally) on. `--random-weights`
builds the architecture from a config folder (the full-size 1.3B model with nothing to download).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shared.engine.contract import NoStops
from shared.engine.inputs import Generation
from shared.ops.gpu import random_init_device, resolve_dtype
from workers.bench.measure import timed


def random_weights_folder(config_dir: str, into: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a random-weight pipeline built from `config_dir` (tiny tokenizer: 512 tokens fix the compute),
    in `dtype`: the full-size UMT5 alone is 23 GB in float32, twice what the worker loads."""
    import diffusers
    from transformers import UMT5Config, UMT5EncoderModel

    from workers.wan.tiny import build_t5_tokenizer

    root = Path(config_dir)
    with torch.device(random_init_device()):
        pipe = diffusers.WanPipeline(
            tokenizer=build_t5_tokenizer(),
            text_encoder=UMT5EncoderModel(UMT5Config.from_pretrained(root / "text_encoder")),
            transformer=diffusers.WanTransformer3DModel.from_config(
                diffusers.WanTransformer3DModel.load_config(root / "transformer")),
            vae=diffusers.AutoencoderKLWan.from_config(diffusers.AutoencoderKLWan.load_config(root / "vae")),
            scheduler=diffusers.UniPCMultistepScheduler.from_config(
                {k: v for k, v in diffusers.UniPCMultistepScheduler.load_config(root / "scheduler").items()
                 if not k.startswith("_note")}),
        )
    pipe.to(dtype=dtype).save_pretrained(into)
    return into



def baseline_samplers(folder, jobs, device, dtype, width, height, steps) -> dict[str, Callable[[], float]]:
    """Plain WanPipeline calls with diffusers' defaults, each job's shape warmed up: a sampler of
    seconds per job for each job."""
    import diffusers

    pipe = diffusers.WanPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    samplers = {}
    for name, item in jobs.items():
        def call(item=item, steps=steps):
            pipe(prompt=item.prompt, negative_prompt=item.negative_prompt, width=width, height=height,
                 num_frames=item.frames, num_inference_steps=steps, guidance_scale=item.guidance_scale,
                 generator=torch.Generator("cpu").manual_seed(1))

        call(steps=2)  # warm-up at the same shape
        samplers[name] = lambda call=call: timed(call, device)
    return samplers


def time_baseline(folder, jobs, device, dtype, width, height, steps) -> dict[str, float]:
    """One sample of each job's `baseline_samplers`: seconds per job."""
    return {name: sample() for name, sample in baseline_samplers(folder, jobs, device, dtype, width, height,
                                                                 steps).items()}


def run_wan_bench(model: str, device: str = "cuda", width: int = 480, height: int = 832, frames: int = 81,
                  steps: int = 25, random_weights: bool = False, cache: bool = True) -> dict[str, Any]:
    from shared.ops.engine_settings import WANSettings
    from workers.wan.engine import WANEngine
    from workers.wan.plan import valid_frame_count

    with tempfile.TemporaryDirectory() as tmp:
        folder = str(random_weights_folder(model, Path(tmp))) if random_weights else model
        dtype = resolve_dtype("auto", device)
        cases = {"image": ("image", 1), "video": ("video", valid_frame_count(frames))}
        negative = "blurry, low quality, static, distorted"
        jobs = {name: Generation(id=f"bench-{name}", media=media, prompt="waves rolling onto a beach at dusk",
                                 negative_prompt=negative, width=width, height=height, steps=steps, guidance_scale=6.5,
                                 scheduler="unipc", seeds=(1,), frames=n, fps=16, shift=5.0, mode="video",
                                 step_cache=True)
                for name, (media, n) in cases.items()}

        baseline = time_baseline(folder, jobs, device, dtype, width, height, steps)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        modes = {"worker": "none", **({"worker_first_block_cache": "first_block"} if cache else {})}
        measured: dict[str, dict[str, float]] = {}
        for label, cache_mode in modes.items():
            engine = WANEngine(folder, WANSettings(cache=cache_mode, warmup=False))
            engine.setup(device)
            measured[label] = {}
            for name, item in jobs.items():
                engine.run([item], NoStops())  # warm-up
                measured[label][name] = timed(lambda item=item, engine=engine: engine.run([item], NoStops()), device)
            del engine
        name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
        rows = {"diffusers_default": baseline, **measured}
        report = {"device": name, "size": f"{width}x{height}", "frames": frames, "steps": steps,
                  "seconds_per_job": {k: {c: round(v, 3) for c, v in r.items()} for k, r in rows.items()},
                  "speedup_vs_diffusers": {k: {c: round(baseline[c] / v, 3) for c, v in r.items()}
                                           for k, r in rows.items()}}
        lines = [f"WAN {width}x{height}, {steps} steps, video {frames} frames, {str(dtype).removeprefix('torch.')} on {name}",
                 f"{'mode':<28} {'image s':>8} {'video s':>8} {'video vs diffusers':>19}"]
        for label, r in rows.items():
            lines.append(f"{label:<28} {r['image']:>8.2f} {r['video']:>8.2f} "
                         f"{report['speedup_vs_diffusers'][label]['video']:>18.2f}x")
        report["table"] = "\n".join(lines)
        return report


def run_from_args(args) -> dict[str, Any]:
    width, height = (int(v) for v in args.size.lower().replace("*", "x").split("x"))
    return run_wan_bench(args.model, device=args.device, width=width, height=height, frames=args.frames,
                         steps=args.steps, random_weights=args.random_weights, cache=not args.no_cache)

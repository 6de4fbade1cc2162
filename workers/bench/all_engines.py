"""`ourvidz-worker bench all`: the whole table on the machine at hand, in one report.

SDXL, WAN, chat and fleet, each against its baseline measured in the same run (stock diffusers,
transformers' `generate`, one request or one job at a time), written to `DIR/report.json` (a list
of rows) and `DIR/report.md` (the same as a table). A row: `bench`, `device`, `settings`,
`baseline` and `ours` (each `{name, <metric>: value}`), `ratio` (ours / baseline of `metric`;
`better` says whether lower or higher wins), and for SDXL and WAN `ms_per_step` (the denoising
loop alone) and `mfu` (model FLOPs per step over the card's bf16 peak, which the run measures
with a matmul). `--tiny`: the tiny models (a few minutes on a CPU); otherwise the full-size
architectures of ../shared/model-configs with random weights (same compute, nothing to download).
A bench that fails gives a row with its `error`; the others still run.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from shared.engine.contract import NoStops
from shared.engine.inputs import Generation
from shared.ops.gpu import resolve_dtype, synchronize
from shared.ops.settings import REPO_ROOT
from workers.bench.measure import (
    CapturedCall,
    StepClock,
    free_memory,
    graph_state,
    paired,
    peak_gib,
    peak_tflops,
    pixel_difference,
    repeated,
    utilisation,
)
from workers.bench.report import add_row, row
from workers.bench.service_rows import chat_rows, fleet_rows

MODEL_CONFIGS = REPO_ROOT.parent / "shared" / "model-configs"


def _measured(engine, module, batches: list[list[Generation]], device: str
              ) -> tuple[float, float | None, float, list]:
    """Wall seconds to run `batches` one after another; from the last one, ms per denoising step,
    model FLOPs per step (counted afterwards, outside the timing) and its results."""
    clock = StepClock(device)
    synchronize(device)
    started = time.perf_counter()
    for batch in batches[:-1]:
        engine.run(batch, NoStops())
    with CapturedCall(module) as calls:
        results = engine.run(batches[-1], clock)
    synchronize(device)
    seconds = time.perf_counter() - started
    return seconds, clock.ms_per_step(), calls.flops() * calls.calls / max(len(clock.marks), 1), results


def _guarded(bench: str, device: str, name: str, label: str, rows: Iterator[dict]) -> Iterator[dict]:
    """One variant's rows; a variant that fails (a switch this card or install cannot run) leaves a
    row with its error, and the next variants still run."""
    try:
        yield from rows
    except Exception as exc:  # noqa: BLE001 - reported in the row
        yield {"bench": bench, "device": name, "variant": label, "error": f"{type(exc).__name__}: {exc}",
               "trace": traceback.format_exc(limit=3)}
    finally:
        free_memory(device)


def _short(items: list[Generation]) -> list[Generation]:
    """The same shapes in 2 steps: a warm-up loads kernels (and compiles) without paying for a whole job."""
    return [replace(item, steps=2) for item in items]


def sdxl_model(tiny: bool, tmp: Path, configs: Path) -> tuple[str, Callable]:
    """The SDXL model a bench runs and the loader it takes: the tiny model written to `tmp`, or the
    full-size architecture in `configs` built with random weights."""
    from workers.bench.sdxl import random_weights_pipeline
    from workers.sdxl.engine import load_pipeline
    from workers.sdxl.tiny import make_tiny_sdxl

    if tiny:
        return str(make_tiny_sdxl(tmp / "sdxl")), load_pipeline
    return str(configs / "sdxl-base-1.0"), random_weights_pipeline


def wan_model(tiny: bool, tmp: Path, configs: Path) -> str:
    """The WAN folder a bench runs: the tiny model, or the full size with random weights, in `tmp`."""
    from workers.bench.wan import random_weights_folder
    from workers.wan.tiny import make_tiny_wan

    if tiny:
        return str(make_tiny_wan(tmp / "wan"))
    return str(random_weights_folder(str(configs / "wan2.1-t2v-1.3b"), tmp / "wan"))


def sdxl_variants(device: str) -> dict[str, tuple[str, dict]]:
    """`bench all --variants` key -> (label, SDXL switches): "worker" is every speed switch off, then
    each switch alone, then the shipped defaults together."""
    off = {"vae_dtype": "model", "compile": False, "cudnn_benchmark": False, "cache": "none", "fp8": "off",
           "cuda_graphs": False}
    variants = {"worker": ("worker", off), "vae-bf16": ("worker + VAE in bf16", {**off, "vae_dtype": "bf16"}),
                "cache": ("worker + DeepCache, full UNet every 3 steps", {**off, "cache": "deep", "cache_interval": 3})}
    if device.startswith("cuda"):  # compiling on a CPU takes minutes and says nothing about a GPU
        variants["cudnn"] = ("worker + cuDNN benchmark", {**off, "cudnn_benchmark": True})
        # The UNet's transformer blocks alone: the quickest compile (the H200 did not finish blocks +
        # VAE decoder at six shapes in 200 s); "compile" is the whole UNet and the VAE decoder.
        variants["compile-regional"] = ("worker + compiled UNet blocks",
                                        {**off, "compile": True, "compile_regional": True})
        variants["compile"] = ("worker + compiled UNet and VAE decoder", {**off, "compile": True, "compile_vae": True})
        variants["fp8"] = ("worker + FP8 UNet (dynamic, torchao)", {**off, "fp8": "dynamic"})
        variants["defaults"] = ("worker, shipped defaults", {})
        # What a batch-1 job waits for is launches, then kernels (graphs are a default since the
        # 2026-12-04 run; these variants name them so that a report says what ran).
        variants["graphs"] = ("defaults + CUDA graphs", {"cuda_graphs": True})
        variants["compile-regional-graphs"] = ("defaults + compiled UNet blocks + CUDA graphs",
                                               {"cuda_graphs": True, "compile": True, "compile_regional": True})
    return variants


def wan_variants(device: str) -> dict[str, tuple[str, dict, bool]]:
    """`bench all --variants` key -> (label, WAN switches, whether the job asks for the step cache)."""
    off = {"compile": False, "batched_guidance": False, "vae_dtype": "fp32", "cache": "none", "fp8": "off",
           "cuda_graphs": False}
    variants = {"worker": ("worker", off, False),
                "cache": ("worker + first-block cache", {**off, "cache": "first_block"}, True),
                "batched-guidance": ("worker + batched guidance", {**off, "batched_guidance": True}, False),
                "vae-bf16": ("worker + VAE in bf16", {**off, "vae_dtype": "bf16"}, False)}
    if device.startswith("cuda"):
        variants["compile"] = ("worker + compiled blocks", {**off, "compile": True}, False)
        variants["fp8"] = ("worker + FP8 transformer (dynamic, torchao)", {**off, "fp8": "dynamic"}, False)
        variants["defaults"] = ("worker, shipped defaults", {}, False)
        variants["graphs"] = ("defaults + images batched and from CUDA graphs",
                              {"cuda_graphs": True, "batched_guidance": "images"}, False)
        for kernel in ("cudnn", "flash", "sage"):  # WAN_ATTENTION, on top of the shipped defaults
            variants[f"attention-{kernel}"] = (f"defaults + {kernel} attention", {"attention": kernel}, False)
    return variants


# Which media a WAN variant measures: the image-only switches an image, the rest a clip; worker and
# defaults both, as the baselines the others are compared with.
WAN_MEDIA = {"worker": ("video", "image"), "defaults": ("video", "image"), "graphs": ("image",)}


def sdxl_rows(device: str, name: str, tiny: bool, tmp: Path, peak: float, configs: Path,
              asked: tuple[str, ...]) -> Iterator[dict]:
    from shared.ops.engine_settings import SDXLSettings
    from workers.bench.sdxl import baseline_sampler
    from workers.sdxl.engine import SDXLEngine

    model, factory = sdxl_model(tiny, tmp, configs)
    size, steps, jobs, batch = (64, 4, 4, 4) if tiny else (1024, 30, 4, 4)
    dtype = resolve_dtype("auto", device)
    work = [Generation(id=f"bench-{i}", media="image", prompt=f"benchmark prompt {i}, a lighthouse at dawn",
                       negative_prompt="blurry, low quality", width=size, height=size, steps=steps,
                       guidance_scale=6.0, scheduler="euler", seeds=(i,)) for i in range(jobs)]
    stock = baseline_sampler(factory(model, None, dtype).to(device), work, device)
    baseline = stock if tiny else repeated(stock)  # full size: one figure, and its weights make room (paired)
    stock = None
    free_memory(device)
    variants = sdxl_variants(device)
    reference: dict[str, list] = {}  # mode -> the first exact variant's images, which the others are compared with

    def measure(label: str, switches: dict) -> Iterator[dict]:
        jobs_here = [replace(job, step_cache=True) for job in work] if switches.get("cache") else work
        begun = time.perf_counter()
        engine = SDXLEngine(model, SDXLSettings(max_batch_images=batch, warmup=True, **switches),
                            pipeline_factory=factory)
        engine.setup(device)  # warms up (and compiles) at the served sizes
        engine.run(_short(jobs_here[:batch]), NoStops())  # and at the batched shape
        ready = time.perf_counter() - begun
        for mode, batches in (("one job at a time", [[job] for job in jobs_here]),
                              ("batched across jobs", [jobs_here[i:i + batch] for i in range(0, jobs, batch)])):
            last: list = []

            def sample(batches=batches, last=last) -> float:
                seconds, *rest = _measured(engine, engine.pipe.unet, batches, device)
                last[:] = rest
                return seconds / jobs

            base, seconds = paired(baseline, sample)
            ms, flops, results = last
            exact = not (switches.get("cache", "none") != "none" or switches.get("fp8", "off") != "off")
            difference = pixel_difference(results, reference.get(mode))
            if exact and mode not in reference:
                reference[mode] = results
            settings = {"size": f"{size}x{size}", "steps": steps, "jobs": jobs, "batch": len(batches[0]), "mode": mode,
                        "dtype": str(dtype).removeprefix("torch."), "switches": switches}
            yield row("sdxl", name, settings, ("diffusers default, one job per call", base),
                       (label, seconds), "seconds_per_image", "lower", ms_per_step=_round(ms),
                       mfu=_round(utilisation(flops, ms, peak), 4),
                       images_per_second=round(1 / seconds["median"], 3),
                       ready_s=round(ready, 1), peak_gib=peak_gib(device), pixel_difference=difference,
                       warmup=getattr(engine, "warmup_report", None), graphs=graph_state(engine.unet_graphs))

    for key in chosen(asked, variants):
        label, switches = variants[key]
        yield from _guarded("sdxl", device, name, label, measure(label, switches))


def wan_rows(device: str, name: str, tiny: bool, tmp: Path, peak: float, configs: Path,
             asked: tuple[str, ...]) -> Iterator[dict]:
    from shared.ops.engine_settings import WANSettings
    from workers.bench.wan import baseline_samplers
    from workers.wan.engine import WANEngine

    folder = wan_model(tiny, tmp, configs)
    width, height, frames, steps = (64, 64, 9, 4) if tiny else (832, 480, 81, 25)
    dtype = resolve_dtype("auto", device)

    def job(media: str, cache: bool = False) -> Generation:
        return Generation(id=f"bench-{media}", media=media, prompt="waves rolling onto a beach at dusk",
                          negative_prompt="blurry, low quality, static", width=width, height=height, steps=steps,
                          guidance_scale=6.5, scheduler="unipc", seeds=(1,), frames=frames if media == "video" else 1,
                          fps=16, shift=5.0, step_cache=cache)

    stock = baseline_samplers(folder, {"video": job("video"), "image": job("image")}, device, dtype, width, height,
                              steps)
    baseline = {media: sample if tiny else repeated(sample) for media, sample in stock.items()}  # as SDXL's
    stock = None
    free_memory(device)
    variants = wan_variants(device)
    reference: dict[str, list] = {}  # media -> the first exact variant's frames, which the others are compared with

    def measure(key: str, label: str, switches: dict, cached: bool) -> Iterator[dict]:
        begun = time.perf_counter()
        engine = WANEngine(folder, WANSettings(warmup=False, **switches))
        engine.setup(device)
        for media in WAN_MEDIA.get(key, ("video",)):
            item = job(media, cached)
            engine.run(_short([item]), NoStops())  # warm-up (and compile)
            ready = time.perf_counter() - begun
            begun = time.perf_counter()  # an image after the video: its own warm-up alone
            last: list = []

            def sample(item=item, last=last) -> float:
                seconds, *rest = _measured(engine, engine.pipe.transformer, [[item]], device)
                last[:] = rest
                return seconds

            base, seconds = paired(baseline[media], sample)
            ms, flops, results = last
            exact = not (cached or switches.get("fp8", "off") != "off" or switches.get("attention") == "sage")
            difference = pixel_difference(results, reference.get(media))
            if exact and media not in reference:
                reference[media] = results
            settings = {"size": f"{width}x{height}", "frames": item.frames, "steps": steps, "media": media,
                        "dtype": str(dtype).removeprefix("torch."), "switches": switches}
            yield row("wan", name, settings, ("diffusers default", base), (label, seconds),
                       "seconds_per_job", "lower", ms_per_step=_round(ms),
                       mfu=_round(utilisation(flops, ms, peak), 4), ready_s=round(ready, 1), peak_gib=peak_gib(device),
                       pixel_difference=difference, compiled=engine.compiled,
                       graphs=graph_state(engine.image_graphs))

    for key in chosen(asked, variants):
        label, switches, cached = variants[key]
        yield from _guarded("wan", device, name, label, measure(key, label, switches, cached))


BENCHES = {"sdxl": sdxl_rows, "wan": wan_rows, "chat": chat_rows, "fleet": fleet_rows}


def chosen(asked: tuple[str, ...], available: Iterable[str]) -> list[str]:
    """A bench's variants to run. None asked: all, in the bench's order. Otherwise those asked that the
    bench has, in the order asked: a lease's deadline may cut the last ones, so the caller decides."""
    available = list(available)
    return [key for key in asked if key in available] if asked else available


def run_all(device: str, tiny: bool, out: Path, only: tuple[str, ...] = tuple(BENCHES),
            configs: Path = MODEL_CONFIGS, variants: tuple[str, ...] = ()) -> dict[str, Any]:
    """`variants`: the SDXL and WAN variants to run, in that order (keys such as `worker`, `cache`,
    `compile`); none: all."""
    out.mkdir(parents=True, exist_ok=True)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA GPU is visible")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    peak = peak_tflops(device)
    rows: list[dict] = []
    table = ""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for bench in only:
            begun = time.monotonic()
            try:
                for produced in BENCHES[bench](device, name, tiny, Path(tmp), peak, configs, variants):
                    table = add_row(rows, produced, peak, begun, out, name, tiny, started)
            except Exception as exc:  # noqa: BLE001 - one bench failing must not lose the others' figures
                failed = {"bench": bench, "device": name, "error": f"{type(exc).__name__}: {exc}",
                          "trace": traceback.format_exc(limit=3)}
                table = add_row(rows, failed, peak, begun, out, name, tiny, started)
    return {"rows": rows, "table": table, "out": str(out)}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def run_from_args(args) -> dict[str, Any]:
    only = tuple(b.strip() for b in args.only.split(",") if b.strip())
    return run_all(args.device, args.tiny, Path(args.out), only,
                   Path(args.model_configs) if args.model_configs else MODEL_CONFIGS, args.variants)

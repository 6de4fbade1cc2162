"""`ourvidz-worker bench NAME`: each benchmark's own flags (kept apart from the benchmarks, which
import torch, so that `--help` stays instant). The benchmark modules read these in `run_from_args`."""

from __future__ import annotations

import argparse

BENCHMARKS = {"fleet": "workers.bench.fleet", "sdxl": "workers.bench.sdxl", "wan": "workers.bench.wan",
              "chat": "workers.bench.chat", "all": "workers.bench.all_engines", "cold-start": "workers.bench.cold_start",
              "compare": "workers.bench.compare"}

DTYPES = ["auto", "fp16", "bf16", "fp32"]
# `bench all --variants`: the SDXL and WAN variants workers/bench/all_engines.py knows (some run on CUDA only).
VARIANTS = ("worker", "vae-bf16", "cache", "cudnn", "compile-regional", "compile", "fp8", "batched-guidance",
            "defaults", "graphs", "compile-regional-graphs", "attention-cudnn", "attention-flash", "attention-sage")


def variant_list(text: str) -> tuple[str, ...]:
    """`a,b,c` in that order; a name no bench has is a usage error, not a run that measures nothing."""
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    unknown = [key for key in keys if key not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    return keys


def _model(parser: argparse.ArgumentParser, what: str, config: str) -> None:
    parser.add_argument("--model", help=f"{what}, or with --random-weights a config folder ({config})")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the architecture at --model with random weights: real size, nothing to download")
    parser.add_argument("--device", help="torch device (default: DEVICE, else cuda; cpu for a quick look)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on CUDA, fp32 on CPU")


def add_bench_parsers(bench: argparse.ArgumentParser) -> None:
    which = bench.add_subparsers(dest="what", required=True, metavar="{all,compare,fleet,sdxl,wan,chat,cold-start}")
    bench.commands = which.choices  # each benchmark's parser, by name

    every = which.add_parser("all", help="every benchmark on this machine, one report (report.json, report.md)",
                             description="SDXL, WAN, chat and fleet, each against its baseline in the same run; "
                                         "ms per denoising step and model FLOPs utilisation against a measured peak.")
    every.add_argument("--device", help="cuda or cpu (default: DEVICE, else cuda)")
    every.add_argument("--tiny", action="store_true",
                       help="the tiny models (minutes on a CPU); default: full-size random weights")
    every.add_argument("--out", default="bench-report", help="folder for report.json and report.md")
    every.add_argument("--only", default="sdxl,wan,chat,fleet", help="which benchmarks (default all four)")
    every.add_argument("--variants", default=(), type=variant_list,
                       help=f"SDXL/WAN variants to run, in this order, e.g. worker,cache (keys: {', '.join(VARIANTS)}; "
                            "default all)")
    every.add_argument("--model-configs", metavar="DIR",
                       help="the full-size architectures (default ../shared/model-configs beside the checkout)")

    compare = which.add_parser("compare", help="two `bench all` reports row by row: how far their ratios differ",
                               description="Pairs the rows of two report.json files (same benchmarks, same order) "
                                           "and prints each row's two ratios and how far apart they are, relative "
                                           "to the smaller: a run's figures checked against a run of the same.")
    compare.add_argument("first", help="a report.json, or the folder holding it")
    compare.add_argument("second", help="the other report.json, or its folder")
    compare.add_argument("--within", type=float, default=15.0, help="the agreement asked, in %% (default 15)")

    cold = which.add_parser("cold-start", help="a compiled worker's start, with an empty and a warm compile cache",
                            description="Starts the engine with its compile on twice, each in a fresh process: "
                                        "with an empty COMPILE_CACHE_DIR, then with what the first start left.")
    cold.add_argument("--engine", default="wan", choices=["wan", "sdxl"], help="which engine (default wan)")
    cold.add_argument("--device", help="cuda or cpu (default: DEVICE, else cuda)")
    cold.add_argument("--tiny", action="store_true", help="the tiny model; default: full-size random weights")
    cold.add_argument("--model-configs", metavar="DIR",
                      help="the full-size architectures (default ../shared/model-configs beside the checkout)")

    fleet = which.add_parser("fleet", help="the runtime against a one-job-at-a-time loop, on the sim engine",
                             description="Same jobs through the pipelined runtime and strictly serially, against a "
                                         "local backend with injected latency; or --workers N real worker processes.")
    fleet.add_argument("--jobs", type=int, default=20, help="jobs per run (default 20)")
    fleet.add_argument("--images", type=int, default=1, help="images per job (default 1)")
    fleet.add_argument("--gpu-seconds", type=float, default=1.0, help="simulated GPU time per image (default 1)")
    fleet.add_argument("--upload-latency", type=float, default=0.2, help="seconds per storage upload (default 0.2)")
    fleet.add_argument("--callback-latency", type=float, default=0.05, help="seconds per callback (default 0.05)")
    fleet.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    fleet.add_argument("--workers", type=int, default=0,
                       help="instead: start N sim worker processes on one Redis and count its commands")
    fleet.add_argument("--idle-seconds", type=float, default=20.0, help="with --workers: the idle window measured")

    sdxl = which.add_parser("sdxl", help="SDXL: plain diffusers vs this worker, alone and batched",
                            description="Times the same one-image jobs through a plain diffusers pipeline, this "
                                        "worker one job at a time, and this worker batching across jobs.")
    _model(sdxl, "an SDXL diffusers folder or .safetensors checkpoint", "../shared/model-configs/sdxl-base-1.0")
    sdxl.add_argument("--jobs", type=int, help="one-image jobs per mode (default 6 on CUDA, 2 on the CPU)")
    sdxl.add_argument("--steps", type=int, help="denoising steps (default 25 on CUDA, 8 on the CPU)")
    sdxl.add_argument("--size", type=int, help="image side in pixels (default 1024 on CUDA, 256 on the CPU)")
    sdxl.add_argument("--batch", type=int, help="images per call when batching (default 6 on CUDA, 2 on the CPU)")
    sdxl.add_argument("--compile", action="store_true", help="torch.compile the UNet")

    wan = which.add_parser("wan", help="WAN: plain diffusers vs this worker (and its step cache)",
                           description="Times one image job and one video job through plain WanPipeline calls, "
                                       "this worker, and this worker with first-block caching.")
    _model(wan, "a Wan 2.1 diffusers folder", "../shared/model-configs/wan2.1-t2v-1.3b")
    wan.add_argument("--size", help="WIDTHxHEIGHT (default 480x832 on CUDA, 128x128 on the CPU)")
    wan.add_argument("--frames", type=int, help="video frames (default 81 on CUDA, 9 on the CPU)")
    wan.add_argument("--steps", type=int, help="denoising steps (default 25 on CUDA, 4 on the CPU)")
    wan.add_argument("--no-cache", action="store_true", help="skip the first-block-cache run")

    chat = which.add_parser("chat", help="the chat worker over HTTP: concurrency, head-of-line, auth latency",
                            description="A real chat worker driven over loopback HTTP from a second process; "
                                        "and its decoder against transformers.generate on the same batch.")
    _model(chat, "a Qwen2.5 folder", "../shared/model-configs/qwen2.5-7b-instruct")
    chat.add_argument("--max-tokens", type=int, help="tokens per answer (default 64 on CUDA, 16 on the CPU)")
    chat.add_argument("--concurrency", help="concurrent callers to measure (default 16,64 on CUDA, 4,8 on the CPU)")
    chat.add_argument("--long-tokens", type=int,
                      help="the long request a short one is sent beside (default 512 on CUDA, 64 on the CPU)")
    chat.add_argument("--backend", default="transformers", choices=["transformers", "vllm"],
                      help="generator to measure (default transformers)")

    for parser in (every, compare, cold, fleet, sdxl, wan, chat):
        parser.add_argument("--json", action="store_true", help="print the whole report as JSON")


# A benchmark's sizes by device: the GPU's measure the real workload; the CPU's finish in a few
# minutes on the tiny models (1024² on a CPU took over 13 minutes) and still show every mode.
DEVICE_DEFAULTS = {
    "sdxl": {"cuda": {"jobs": 6, "steps": 25, "size": 1024, "batch": 6},
             "cpu": {"jobs": 2, "steps": 8, "size": 256, "batch": 2}},
    "wan": {"cuda": {"size": "480x832", "frames": 81, "steps": 25},
            "cpu": {"size": "128x128", "frames": 9, "steps": 4}},
    "chat": {"cuda": {"max_tokens": 64, "concurrency": "16,64", "long_tokens": 512},
             "cpu": {"max_tokens": 16, "concurrency": "4,8", "long_tokens": 64}},
}


def fill_device_defaults(args: argparse.Namespace) -> None:
    """What the command line left unset, from the table above for the device it runs on."""
    table = DEVICE_DEFAULTS.get(args.what)
    if table is None:
        return
    defaults = table["cuda" if str(args.device).startswith("cuda") else "cpu"]
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)

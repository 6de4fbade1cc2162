"""`ourvidz-worker bench cold-start`: how long a compiled worker takes to be ready, with an empty
compile cache and then with the cache the first start left (COMPILE_CACHE_DIR,
shared/ops/compile_cache.py).

Each start is a fresh process, as a restarted pod or a serverless cold start is: it loads the
model and runs the engine's own compiled warm-up. The report gives both starts' `ready_s`, the
warm-up's graphs and inductor's cache hits and misses, and the ratio warm / cold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.ops.settings import REPO_ROOT
from workers.bench.all_engines import MODEL_CONFIGS, sdxl_model, wan_model


def _engine(kind: str, model: str, random_weights: bool):
    """The engine with its compile on; every other setting from the environment (SDXL_*, WAN_*)."""
    if kind == "sdxl":
        from shared.ops.engine_settings import SDXLSettings
        from workers.bench.sdxl import random_weights_pipeline
        from workers.sdxl.engine import SDXLEngine, load_pipeline

        config = SDXLSettings(compile=True, compile_regional=True, compile_vae=True)
        return SDXLEngine(model, config, pipeline_factory=random_weights_pipeline if random_weights else load_pipeline)
    from shared.ops.engine_settings import WANSettings
    from workers.wan.engine import WANEngine

    return WANEngine(model, WANSettings(compile=True))


def start_once(kind: str, model: str, device: str, random_weights: bool) -> dict[str, Any]:
    """One start, in this process: the cache folder from COMPILE_CACHE_DIR, as a worker takes it."""
    from shared.ops.compile_cache import use_compile_cache
    from shared.ops.settings import Settings
    from workers.accel.compile_watch import compile_counts

    use_compile_cache(Settings().compile_cache_dir)
    begun = time.perf_counter()
    _engine(kind, model, random_weights).setup(device)
    return {"ready_s": round(time.perf_counter() - begun, 1), **compile_counts()}


def _start_in_a_new_process(kind: str, model: str, device: str, random_weights: bool, cache: Path) -> dict:
    code = ("import json, sys; from workers.bench.cold_start import start_once; "
            "print(json.dumps(start_once(*sys.argv[1:4], sys.argv[4] == '1')))")
    env = {**os.environ, "COMPILE_CACHE_DIR": str(cache), "LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-c", code, kind, model, device, "1" if random_weights else "0"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} start failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(kind: str, device: str, tiny: bool, configs: Path = MODEL_CONFIGS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        work = Path(tmp)
        if kind == "sdxl":  # the child process gets the loader as a flag: random weights or a folder
            model, random_weights = sdxl_model(tiny, work, configs)[0], not tiny
        else:
            model, random_weights = wan_model(tiny, work, configs), False
        starts = {name: _start_in_a_new_process(kind, model, device, random_weights, work / "compile-cache")
                  for name in ("empty cache", "warm cache")}
    cold, warm = starts["empty cache"]["ready_s"], starts["warm cache"]["ready_s"]
    ratio = round(warm / cold, 3) if cold else None
    lines = [f"cold start, {kind} compiled, {device}{' (tiny)' if tiny else ''}",
             "| start | ready (s) | graphs | cache hits | cache misses |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {s['ready_s']} | {s['graphs']} | {s['cache_hits']} | {s['cache_misses']} |"
              for name, s in starts.items()]
    lines.append(f"warm / cold: {ratio}")
    return {"engine": kind, "device": device, "tiny": tiny, "starts": starts, "ratio": ratio,
            "table": "\n".join(lines)}


def run_from_args(args) -> dict[str, Any]:
    return run(args.engine, args.device, args.tiny, Path(args.model_configs) if args.model_configs else MODEL_CONFIGS)

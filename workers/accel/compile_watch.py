"""What torch.compile did, in the log: at the warm-up, and in a job that paid for a compile.

A compiled engine warms up before it says ready so that no job waits for a compile (minutes on
a GPU for a whole SDXL UNet). `compile_warmed_up` says how long that took, how many graphs it
made and how many inductor found in its cache (shared/ops/compile_cache.py). If a job still brings a
shape the warm-up did not cover, torch compiles a new graph in the middle of it: the job is not
lost, only late; `compiled_during_job` says so, with the job's shape. `uncompile` undoes a compile
(a compile that failed, or that ran past its time budget).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from shared.ops.logging import get_logger

log = get_logger(component="compile")


def compile_counts() -> dict[str, int]:
    """Graphs torch.compile has made in this process so far (every backend counts), and how many
    of inductor's compiles its on-disk cache answered or not."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
            "cache_misses": counters["inductor"]["fxgraph_cache_miss"]}


def uncompile(module: torch.nn.Module) -> None:
    """Back to eager: every region that `Module.compile` compiled forgets its compiled call."""
    for part in module.modules():
        if getattr(part, "_compiled_call_impl", None) is not None:
            part._compiled_call_impl = None


def graphs_compiled() -> int:
    return compile_counts()["graphs"]


@contextmanager
def warm_up_logged(enabled: bool, engine: str):
    """Around a compiled engine's warm-up: one `compile_warmed_up` record."""
    if not enabled:
        yield
        return
    before, started = compile_counts(), time.monotonic()
    yield
    made = {key: value - before[key] for key, value in compile_counts().items()}
    log.info("compile_warmed_up", engine=engine, seconds=round(time.monotonic() - started, 1), **made)


@contextmanager
def compiles_logged(enabled: bool, engine: str, **shape):
    """Around a job's generation on a compiled engine: log a compile it paid for."""
    if not enabled:
        yield
        return
    before, started = graphs_compiled(), time.monotonic()
    yield
    made = graphs_compiled() - before
    if made:
        log.warning("compiled_during_job", engine=engine, graphs=made, seconds=round(time.monotonic() - started, 1),
                    hint="the warm-up did not cover this shape", **shape)

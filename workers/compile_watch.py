"""Compiles that a job paid for.

A compiled engine warms up before it says ready so that no job waits for a compile (minutes on
a GPU for a whole SDXL UNet). If a job still brings a shape the warm-up did not cover, torch
compiles a new graph in the middle of it: the job is not lost, only late. This makes that
visible: a `compiled_during_job` warning with the job's shape, and the graph count for tests.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from shared.logging import get_logger

log = get_logger(component="compile")


def graphs_compiled() -> int:
    """Graphs torch.compile has made in this process so far (every backend counts)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


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

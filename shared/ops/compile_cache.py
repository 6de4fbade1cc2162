"""torch.compile's on-disk cache, in a folder that outlives the container (COMPILE_CACHE_DIR).

A compiled worker compiles its graphs during the warm-up, before it says ready. Inductor keeps
what it generates (FX graphs, AOT autograd results, Triton kernels, autotuning picks) under
TORCHINDUCTOR_CACHE_DIR, by default in /tmp, which a new container does not have. With the cache
on the models volume, a restarted pod or a serverless cold start loads them instead of compiling
again (`ourvidz-worker bench cold-start` measures it). Dynamo still traces every graph; only
inductor's share is cached. Entries are keyed by torch version, device and source, so one
folder serves different cards and releases side by side.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shared.ops.logging import get_logger

log = get_logger(component="compile")


def use_compile_cache(directory: str | None) -> str | None:
    """Point torch.compile's caches at `directory` (before anything compiles). Unset: torch's own
    default. A folder that cannot be written (a read-only volume) is logged and left alone: the
    worker still compiles, only not from the cache. Returns the folder in use, or None."""
    if not directory:
        return None
    path = Path(directory).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        log.warning("compile_cache_unusable", directory=str(path), error=f"{type(exc).__name__}: {exc.strerror}")
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read by inductor on each use, Triton's cache below it
    return str(path)

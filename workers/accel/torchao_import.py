"""torchao only when an FP8 switch asks for it.

diffusers and transformers import torchao whenever it is installed, and torchao then warns about
kernels it cannot load on this machine (`_C_mxfp8`, "Detected no triton", torch's `register_constant`
deprecation): lines on every command for a library nothing uses while `SDXL_FP8` and `WAN_FP8`
are off. Marking it absent before they are imported keeps them from importing it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

FP8_SWITCHES = ("SDXL_FP8", "WAN_FP8")


def fp8_asked(environ: Mapping[str, str] = os.environ) -> bool:
    return any(environ.get(name, "off").strip().lower() not in ("", "off") for name in FP8_SWITCHES)


def hide_torchao_unless_asked(environ: Mapping[str, str] = os.environ) -> bool:
    """Make `import torchao` fail (and its probes find nothing) unless an FP8 switch is on; True
    when it was hidden. Does nothing once torchao is imported."""
    if fp8_asked(environ) or "torchao" in sys.modules:
        return False
    sys.modules["torchao"] = None  # find_spec answers None, import raises ImportError
    _hidden.append(True)
    return True


_hidden: list[bool] = []  # whether this module hid it (a torchao that is really absent stays absent)


def reveal_torchao() -> None:
    """Before FP8 is applied (workers/accel/fp8.py, a benchmark's fp8 variant): importable again."""
    if _hidden and sys.modules.get("torchao", False) is None:
        del sys.modules["torchao"]
        _hidden.clear()

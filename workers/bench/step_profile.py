"""Where one stream's decoding time goes: one request decoded under torch's profiler.

The last GPU run measured 8 ms a token for one stream of a 7B model whose weights take about
3.3 ms to read, and could not say where the rest went. The answer decides the next change:
- the device busy for most of a token's wall time: the kernels themselves are slow or too many
  (fuse them: a compiled decoding step);
- the device mostly idle: the host is the step (Python, sampling, the copy of each token).
So this reports, per token: the wall time, the device's busy time (kernels, overlaps counted
once), how many kernels ran, and the kernels (or, on a CPU, the operators) that took longest.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from shared.ops.logging import get_logger

log = get_logger(component="bench")
TOP = 6


@contextlib.contextmanager
def _native_stderr_kept() -> Iterator[None]:
    """The profiler's C++ side (kineto) prints start and stop lines straight to file descriptor 2,
    past Python's logging: hold fd 2 in a file meanwhile, then pass our own JSON records on and
    turn the rest into debug records, as the library lines of every command are."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines():
                if line.startswith("{"):
                    print(line, file=sys.stderr)
                elif line.strip():
                    log.debug("library_output", line=line[:500])


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) intervals: kernels on two streams count once."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def decoding_step_profile(generator, prompt_ids: list[int], max_tokens: int = 32) -> dict[str, Any]:
    """Decode one greedy request (`prompt_ids`, then `max_tokens` tokens) under the profiler, after
    one unprofiled warm-up; figures per token. Never raises: a profiler that fails gives {"error": ...}."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from workers.chat.generator import Request

    request = Request(list(prompt_ids), max_tokens=max_tokens, temperature=0, ignore_eos=True)
    cuda = str(generator.device).startswith("cuda")
    try:
        generator.generate([request])  # warm-up: allocations and any first-use work stay out
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with _native_stderr_kept(), profile(activities=activities) as prof:
            if cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
            generator.generate([request])
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - began
        events = prof.events()
    except Exception as exc:  # noqa: BLE001 - a figure missing is better than a bench row lost
        generator.reset()  # a request cut off mid-way would hold its row
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}

    def ms_per_token(microseconds: float) -> float:
        return microseconds / 1000 / max_tokens

    result: dict[str, Any] = {"tokens": max_tokens, "includes_prefill": True,
                              "wall_ms_per_token": round(wall * 1000 / max_tokens, 3)}
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    # the host's operators (self time: a nested operator is not counted twice); on a GPU they only launch
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    result["operators_per_token"] = round(len(ops) / max_tokens, 1)
    result["device_busy_ms_per_token"] = None
    if cuda and not kernels:  # not expected; said rather than shown as an idle device
        result["note"] = "the profiler recorded no device kernels"
    totals: dict[str, list[float]] = {}
    if kernels:
        busy = _busy_us([(e.time_range.start, e.time_range.end) for e in kernels])
        result["device_busy_ms_per_token"] = round(ms_per_token(busy), 3)
        result["kernels_per_token"] = round(len(kernels) / max_tokens, 1)
        for e in kernels:
            totals.setdefault(e.name, [0.0, 0])[0] += e.time_range.elapsed_us()
            totals[e.name][1] += 1
        unit = "kernel"
    else:
        for e in ops:
            totals.setdefault(e.name, [0.0, 0])[0] += e.self_cpu_time_total
            totals[e.name][1] += 1
        unit = "operator"
    spent = sum(t for t, _ in totals.values()) or 1.0
    result["top"] = [{unit: name[:120], "ms_per_token": round(ms_per_token(t), 4), "share": round(t / spent, 3),
                      "calls_per_token": round(n / max_tokens, 1)}
                     for name, (t, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:TOP]]
    return result


def summary(profile: dict[str, Any]) -> str:
    """One line for the reports."""
    if "error" in profile:
        return f"decoding step profile failed: {profile['error']}"
    busy = profile.get("device_busy_ms_per_token")
    count = (f"{profile['kernels_per_token']:g} kernels" if "kernels_per_token" in profile
             else f"{profile['operators_per_token']:g} operators")
    first = profile["top"][0] if profile["top"] else None
    head = (f"; the largest: {next(iter(first.values()))} ({first['share'] * 100:.0f} %)" if first else "")
    return (f"one stream, {profile['tokens']} tokens (prefill included): {profile['wall_ms_per_token']:g} ms a token"
            + (f", the device busy {busy:g} ms of it" if busy is not None else "") + f", {count} a token{head}"
            + (f" ({profile['note']})" if "note" in profile else ""))

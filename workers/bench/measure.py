"""What the benchmarks measure beyond wall time: the card's peak, FLOPs per model call, time per step.

- `peak_tflops`: the machine's own matmul throughput (bf16 on CUDA, fp32 on a CPU), measured,
  not read from a spec sheet: model FLOPs utilisation is reported against it.
- `CapturedCall` + `call_flops`: the arguments of a model's first real call during a generation,
  replayed once under torch's FLOP counter.
- `pixel_difference`: how far one variant's pixels are from another's on the same jobs and seeds.
- `graph_state`: what a module's CUDA graphs did in a variant.
- `StepClock`: a run context that notes when each denoising step ends (ms per step, excluding
  text encoding and VAE decoding), without slowing the run it times.
- `repeated` / `figure`: a timed figure is the median of repeated samples, with its spread: one
  sample on a shared machine swings by 2x. `interleaved`: the samples of things compared taken
  in turn, so that the machine's drift moves both sides of a ratio alike.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from shared.engine.contract import NoStops
from shared.ops.gpu import synchronize

MIN_SAMPLES = 3  # every timed figure is the median of at least this many samples
SAMPLE_BUDGET_S = 1.0  # short samples repeat until this much was timed ...
MAX_SAMPLES = 9  # ... up to this many


def timed(call: Callable[[], Any], device: str) -> float:
    """Wall seconds of one call, the device's queued work included (synchronized before and after)."""
    synchronize(device)
    started = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - started


def figure(values: Iterable[float]) -> dict[str, Any]:
    """Samples as a figure: the median, the spread (min and max) and the samples themselves."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "samples": [round(v, 5) for v in values]}


def repeated(sample: Callable[[], float], minimum: int = MIN_SAMPLES, budget_s: float | None = None,
             maximum: int = MAX_SAMPLES) -> dict[str, Any]:
    """Call `sample` (which times one run and returns its figure) at least `minimum` times, and
    again while the samples so far took under `budget_s` (default SAMPLE_BUDGET_S; at most
    `maximum`): a `figure`."""
    budget_s = SAMPLE_BUDGET_S if budget_s is None else budget_s
    values, spent = [], 0.0
    while len(values) < minimum or (spent < budget_s and len(values) < maximum):
        begun = time.perf_counter()
        values.append(sample())
        spent += time.perf_counter() - begun
    return figure(values)


def interleaved(samplers: dict[str, Callable[[], float]], minimum: int = MIN_SAMPLES, budget_s: float | None = None,
                maximum: int = MAX_SAMPLES) -> dict[str, dict[str, Any]]:
    """`repeated` for several things compared with each other, sampled in rounds (a, b, a, b, ...):
    a machine whose speed drifts during a run (a shared CPU does, by 2x) moves every side alike,
    so their ratio holds where blocks of samples taken minutes apart would not. A `figure` each."""
    budget_s = 1.5 * SAMPLE_BUDGET_S * len(samplers) if budget_s is None else budget_s  # rounds are long: more of them
    values: dict[str, list[float]] = {name: [] for name in samplers}
    spent, rounds = 0.0, 0
    while rounds < minimum or (spent < budget_s and rounds < maximum):
        begun = time.perf_counter()
        for name, sample in samplers.items():
            values[name].append(sample())
        spent += time.perf_counter() - begun
        rounds += 1
    return {name: figure(v) for name, v in values.items()}


def paired(baseline: dict[str, Any] | Callable[[], float], ours: Callable[[], float]) -> tuple[dict, dict]:
    """A row's two figures. `baseline` is a sampler or a figure taken before. The tiny models'
    samples are short and a shared CPU's speed drifts by 2x within a run, so their baseline is a
    sampler, sampled again for each row in turn with ours (`interleaved`); at full size its figure
    was taken once, before its weights made room for the worker's."""
    if not callable(baseline):
        return baseline, repeated(ours)
    figures = interleaved({"baseline": baseline, "ours": ours})
    return figures["baseline"], figures["ours"]


def per(amount: float, seconds: dict[str, Any]) -> dict[str, Any]:
    """A figure of seconds as a figure of `amount` per second (tokens, images)."""
    return figure(amount / s for s in seconds["samples"])


def peak_tflops(device: str, size: int | None = None, repeats: int = 10) -> float:
    """Dense matmul throughput in TFLOP/s: bf16 on CUDA (what the models run in), fp32 on a CPU."""
    cuda = device.startswith("cuda")
    size = size or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


class CapturedCall:
    """Counts a module's calls and keeps the arguments of the first (`with CapturedCall(module):`)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls, self.args, self.kwargs = module, 0, None, None

    def _hook(self, _module, args, kwargs):
        self.calls += 1
        if self.args is None:
            self.args, self.kwargs = args, dict(kwargs)

    def __enter__(self) -> CapturedCall:
        self.handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def flops(self) -> int:
        """FLOPs of one call with the captured arguments (0 if it was never called)."""
        if self.args is None:
            return 0
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        # A diffusers model with a step cache wants a cache context around every call; a fresh
        # one computes every block, so the count is the model's full FLOPs.
        context = getattr(self.module, "cache_context", None)
        with torch.inference_mode(), (context("flops") if context else contextlib.nullcontext()), counter:
            self.module(*self.args, **self.kwargs)
        return int(counter.get_total_flops())


class StepClock(NoStops):
    """A run context that never stops anything and notes when each step ends: a CUDA event on a GPU
    (no synchronising, which would stall the launch queue and slow the run it measures), the host
    clock on a CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.marks: list = []
        self._step = None

    def progress(self, item: Any, step: int, total: int) -> None:
        if step == self._step:  # a batch reports each step once per input: one mark per step
            return
        self._step = step
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def ms_per_step(self) -> float | None:
        """Mean time between the first and the last step's end (call after the run has finished)."""
        if len(self.marks) < 2:
            return None
        first, last = self.marks[0], self.marks[-1]
        if self.cuda:
            last.synchronize()
            elapsed = first.elapsed_time(last)
        else:
            elapsed = (last - first) * 1000
        return elapsed / (len(self.marks) - 1)


def utilisation(flops_per_step: float, ms_per_step: float | None, peak: float) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the measured peak."""
    if not ms_per_step or not peak or not flops_per_step:
        return None
    return flops_per_step / (ms_per_step / 1000) / (peak * 1e12)


def pixel_difference(results, reference) -> dict[str, float] | None:
    """Mean and largest |difference| of two runs' pixels, on a 0-1 scale (same jobs, same seeds)."""
    if reference is None:
        return None
    ours, theirs = _pixels(results), _pixels(reference)
    if ours is None or theirs is None or ours.shape != theirs.shape:
        return None
    delta = np.abs(ours - theirs)
    return {"mean": round(float(delta.mean()), 5), "max": round(float(delta.max()), 4)}


def _pixels(results) -> np.ndarray | None:
    arrays = []
    for result in results:
        for output in getattr(result, "items", []):
            data = getattr(output, "frames", None)
            data = np.asarray(output.image if data is None else data)
            arrays.append(data.astype(np.float32) / 255.0 if data.dtype == np.uint8 else data.astype(np.float32))
    return np.stack(arrays) if arrays else None


def graph_state(graphs) -> dict | None:
    """What a module's CUDA graphs did in a variant: captured, replayed, ran eagerly, or failed."""
    if graphs is None:
        return None
    return {"graphs": len(graphs.graphs), "replays": graphs.replays, "eager_calls": graphs.eager_calls,
            "failed": graphs.failed}


def free_memory(device: str) -> None:
    """Between variants: memory back, and the peak counter restarted for the next one."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    """GPU memory the variant has held at most so far (load, warm-up and runs), in GiB."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None

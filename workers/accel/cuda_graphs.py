"""A module's forward replayed from CUDA graphs: one graph per input signature, captured on first use.

Why: at small work per call (an SDXL image at batch 1, a one-frame WAN image) the GPU finishes
each kernel before Python has launched the next, so a step costs the launches, not the math. A
CUDA graph records every kernel of one forward once and replays them with one launch. Same
kernels, same order: the output is the eager output (tests/test_cuda_graphs.py and the GPU
bench compare them).

How: the call's tensors are copied into static buffers the graph was recorded on, the graph is
replayed, and its outputs are cloned before anything else runs (so a later replay, or another
graph sharing the memory pool, cannot overwrite what the caller holds). A signature is every
tensor's shape, dtype and device plus every other argument's value: another shape is another
graph, and an argument that is neither a tensor nor a plain value (an object such as a KV cache
may hold tensors that change under the graph), or a call with gradients on, runs eagerly. A
capture that fails (an operation CUDA cannot record) is logged once and the module runs eagerly
from then on: slower, never a lost job. All graphs
of one module share one memory pool: they are never replayed at the same time, so the pool is as
large as the largest forward, not their sum.

Each graph's first replay on new inputs is checked once against an eager call of the same inputs
(`differs`); a graph that disagrees turns the module's graphs off (logged) and the call returns the
eager result. So a capture that is wrong on some card or driver costs one forward, never an image.

CPU tests replace the capture (`capture=`) with a stand-in that reruns the forward on the static
buffers: that checks the keying, the copies and the fallbacks; the graphs themselves run only on
a GPU (the bench's pixel difference against eager).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from shared.ops.logging import get_logger

log = get_logger(component="cuda_graphs")

Capture = Callable[[Callable[[], Any], Any], Callable[[], None]]


def graphs_wanted(setting, device: str, name: str) -> bool:
    """A `*_CUDA_GRAPHS` setting: `auto` means on CUDA; `true` off CUDA is refused (no graphs there)."""
    cuda = device.startswith("cuda")
    wanted = cuda if setting == "auto" else bool(setting)
    if wanted and not cuda:
        raise ValueError(f"{name}=true needs a CUDA GPU, and this worker runs on {device}")
    return wanted


def cuda_capture(run: Callable[[], Any], pool) -> tuple[Callable[[], None], Any]:
    """Records `run` (after two eager runs on a side stream, which load kernels and settle the
    allocator) into a CUDA graph; returns (replay, outputs the graph writes)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a delivery thread's CUDA call during the capture is not this capture's business
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        outputs = run()
    return graph.replay, outputs


class GraphedForward:
    """`with GraphedForward(module):` or `.install()` / `.remove()`: the module's forward answers
    from graphs while installed; the graphs are kept across installs (capture once per shape)."""

    def __init__(self, module: torch.nn.Module, max_graphs: int = 64, capture: Capture | None = None,
                 device: str = "cuda"):
        self.module, self.max_graphs, self.device = module, max_graphs, device
        self._capture = capture or cuda_capture
        self._pool = torch.cuda.graph_pool_handle() if capture is None else None
        self.graphs: dict[Any, list] = {}  # signature -> [replay, static inputs, outputs, verified]
        self.replays = self.eager_calls = 0
        self.failed: str | None = None  # a capture that failed: logged once, then every call runs eagerly
        self._original: Callable | None = None
        self._full_logged = False

    def install(self) -> GraphedForward:
        if self._original is None:
            self._original = self.module.forward
            self.module.forward = self
        return self

    def remove(self) -> None:
        if self._original is not None:
            if self.module.__dict__.get("forward") is self:
                del self.module.forward  # back to the class's own forward
            self._original = None

    __enter__ = install

    def __exit__(self, *exc) -> None:
        self.remove()

    def __call__(self, *args, **kwargs):
        original = self._original
        assert original is not None, "GraphedForward called while not installed"
        leaves, spec = tree_flatten((args, kwargs))
        key = None if self.failed else self._signature(leaves, spec)
        if key is None or torch.is_grad_enabled():
            self.eager_calls += 1
            return original(*args, **kwargs)
        entry = self.graphs.get(key)
        fresh = entry is None  # recorded on these very inputs: checked on the next, new ones
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                if not self._full_logged:
                    log.warning("cuda_graphs_full", graphs=len(self.graphs), hint="further shapes run eagerly")
                    self._full_logged = True
                self.eager_calls += 1
                return original(*args, **kwargs)
            try:
                entry = self._record(original, leaves, spec)
            except Exception as exc:  # noqa: BLE001 - the job goes on eagerly; the log says why
                self.failed = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("cuda_graph_capture_failed", error=self.failed, fallback="eager")
                self.eager_calls += 1
                return original(*args, **kwargs)
            self.graphs[key] = entry
        replay, static, outputs, verified = entry
        for buffer, leaf in zip(static, (leaf for leaf in leaves if torch.is_tensor(leaf)), strict=True):
            buffer.copy_(leaf)
        replay()
        self.replays += 1
        out_leaves, out_spec = tree_flatten(outputs)
        result = tree_unflatten([leaf.clone() if torch.is_tensor(leaf) else leaf for leaf in out_leaves], out_spec)
        if not verified and not fresh:  # its first replay on new inputs: checked once against an eager call
            eager = original(*args, **kwargs)
            mismatch = differs(result, eager)
            if mismatch:
                self.failed = f"replay differs from eager: {mismatch}"
                log.warning("cuda_graph_replay_differs", error=self.failed, fallback="eager")
                self.graphs.clear()
                return eager
            entry[3] = True
        return result

    def _signature(self, leaves: list, spec) -> tuple | None:
        parts: list = [str(spec)]
        for leaf in leaves:
            if torch.is_tensor(leaf):
                parts.append((tuple(leaf.shape), leaf.dtype, str(leaf.device)))
            elif leaf is None or isinstance(leaf, (bool, int, float, str, torch.dtype)):
                parts.append(leaf)
            else:  # an object (a KV cache, say) may hold tensors the graph would not see change
                return None
        return tuple(parts)

    def _record(self, original: Callable, leaves: list, spec):
        # Static buffers on the module's device: a CPU tensor (a 0-d timestep, say) would otherwise be
        # copied host-to-device inside the graph from memory the graph does not own.
        static, call_leaves = [], []
        for leaf in leaves:
            if torch.is_tensor(leaf):
                buffer = leaf.detach().to(self.device if leaf.device.type == "cpu" else leaf.device, copy=True)
                static.append(buffer)
                call_leaves.append(buffer)
            else:
                call_leaves.append(leaf)
        args, kwargs = tree_unflatten(call_leaves, spec)
        replay, outputs = self._capture(lambda: original(*args, **kwargs), self._pool)
        log.info("cuda_graph_captured", graphs=len(self.graphs) + 1,
                 shapes=[tuple(t.shape) for t in static][:4])
        return [replay, static, outputs, False]


def differs(got, want, tolerance: float = 1e-2) -> str | None:
    """Whether a replay's outputs are not an eager call's (same kernels: equal but for float noise);
    the largest difference when they are not. A gross-error check: a graph that read stale inputs
    or memory gives differences the size of the values themselves."""
    for a, b in zip(tree_flatten(got)[0], tree_flatten(want)[0], strict=True):
        if not torch.is_tensor(a):
            continue
        a, b = a.float(), b.float()
        largest, scale = float((a - b).abs().max()), float(b.abs().max())
        if not largest <= tolerance * scale + 1e-6:  # also NaN
            return f"max |difference| {largest:.4g} against values up to {scale:.4g}"
    return None

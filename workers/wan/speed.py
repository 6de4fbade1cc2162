"""WAN speed switches (WAN_* settings), each on by default only where a GPU measured it faster.

- `WAN_COMPILE` (`auto`, the default: on CUDA; an H200 made a 480x832x81 clip in 29.8 s instead of
  34.7): torch.compile the transformer's repeated blocks (diffusers' regional compilation: the 30
  identical blocks compile once, so start-up stays short), shape-dynamic, warmed up before ready
  with an image and a clip at the presets' size. A compile that fails there (no C compiler for
  Triton, say) is undone and the worker runs eagerly. Exact math.
- `WAN_BATCHED_GUIDANCE`: classifier-free guidance needs the transformer twice per step, once with
  the prompt and once with the negative prompt; diffusers' WanPipeline makes two calls. This runs
  both as one batch of two (more arithmetic per kernel launch, half the weight reads), at the cost
  of the activations of a second sample. Exact math (equal within float error). T2V models only.
  `images`: one-frame jobs only, whose calls are too small to fill the GPU on their own.
- `WAN_ATTENTION=sdpa|cudnn|flash|sage`: the self-attention kernel (workers/wan/attention.py).
- `WAN_CUDA_GRAPHS` (`auto`, the default: on CUDA; an H200 made a 480x832 image in 0.92 s instead of
  2.04): one-frame images run both guidance passes as one batch, replayed from a CUDA graph
  (workers/accel/cuda_graphs.py): an image's call is ~1,560 tokens, so its step was launch-bound. Exact
  (pixels within 0.0012 of the eager image on the H200).
- `WAN_VAE_DTYPE=bf16`: decode in bfloat16 instead of float32. Approximate (docs/benchmarks.md gives the bound).
- `WAN_CACHE=first_block` for the presets in `WAN_CACHE_PRESETS`: diffusers' first-block cache.
  Approximate.
- `WAN_FP8=dynamic|weights`: FP8 layers through torchao (workers/accel/fp8.py). Approximate; off.
"""

from __future__ import annotations

import torch

from shared.ops.engine_settings import WANSettings
from workers.accel.cuda_graphs import graphs_wanted
from workers.accel.fp8 import quantize_fp8
from workers.wan.attention import apply_attention


def compiles(config: WANSettings, device: str) -> bool:
    """`auto`: on CUDA, where it was measured faster; never on a CPU, where compiling takes minutes."""
    return device.startswith("cuda") if config.compile == "auto" else bool(config.compile)


def graphs_on(config: WANSettings, device: str) -> bool:
    """`WAN_CUDA_GRAPHS`: `auto` means on CUDA; never off CUDA, where there are no graphs."""
    return graphs_wanted(config.cuda_graphs, device, "WAN_CUDA_GRAPHS")


def batches_guidance(config: WANSettings, frames: int, image_graphs: bool = False) -> bool:
    """Whether a job of `frames` frames runs both guidance passes as one batch: WAN_BATCHED_GUIDANCE,
    and one-frame images replayed from CUDA graphs (one replay a step; how the H200 measured them)."""
    one_frame = frames == 1 and (config.batched_guidance == "images" or image_graphs)
    return config.batched_guidance is True or one_frame


def apply_switches(pipe, config: WANSettings, device: str) -> None:
    """At setup: the switches that change the loaded modules."""
    if config.vae_dtype == "bf16":
        pipe.vae.to(torch.bfloat16)
    apply_attention(pipe.transformer, config.attention, device)  # before compiling, which traces the kernel
    quantize_fp8(pipe.transformer, config.fp8, device)  # before compiling, which then traces the FP8 layers
    if compiles(config, device):
        pipe.transformer.compile_repeated_blocks(mode=config.compile_mode, backend=config.compile_backend,
                                                 fullgraph=False, dynamic=True)


# The presets' native size: an image and a full clip. Inductor tunes a shape-dynamic kernel for the
# sizes it compiles with, so the compiled warm-up runs at these (as the H200 figures did).
PRESET_SHAPES = ((480, 832, 1), (480, 832, 81))
SMALL_SHAPES = ((64, 64, 1), (64, 64, 5))


def warmup_shapes(compiled: bool, max_positions: int, batched_guidance: bool | str = False,
                  image_graphs: bool = False) -> list[tuple[int, int, int, float]]:
    """(width, height, frames, guidance) to run before ready. Compiled: an image and a clip (one
    frame is a graph of its own; the clip's covers every other length and size), at the presets'
    size where the model's position table (`max_positions` per axis) reaches, else small. With
    batched guidance the blocks see a batch of 2, and a job without guidance (guidance 1) a batch
    of 1, a graph of its own: both are warmed up. With CUDA graphs for images, the presets' image
    is captured before ready. Eager: one tiny image that loads the kernels."""

    def fits(width: int, height: int, frames: int) -> bool:  # 8x VAE, 2x2 patches; 4 frames a latent
        return max(width, height) // 16 <= max_positions and (frames - 1) // 4 + 1 <= max_positions

    shapes = [shape if fits(*shape) else small for shape, small in zip(PRESET_SHAPES, SMALL_SHAPES, strict=True)]
    if not compiled:
        return [(*shapes[0], 5.0)] if image_graphs else [(32, 32, 1, 5.0)]
    guidances = (5.0, 1.0) if batched_guidance is True else (5.0,)
    return [(*shape, guidance) for guidance in guidances for shape in shapes]


def module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def encoder_placement(free_bytes: int, encoder_bytes: int, model_bytes: int, headroom_gb: float) -> str:
    """`WAN_TEXT_ENCODER_DEVICE=auto` on CUDA: `gpu` when the card, with the model and UMT5 on it,
    keeps `headroom_gb` free for a generation's activations and decoding; else `cpu` (seconds per
    job of encoding on the CPU instead of an out-of-memory)."""
    return "gpu" if free_bytes - model_bytes - encoder_bytes >= headroom_gb * 2**30 else "cpu"


def uses_cache(config: WANSettings, quality: str, job_type: str | None) -> bool:
    """Whether a job's preset takes the step cache (WAN_CACHE_PRESETS: qualities or job types)."""
    wanted = {p.strip() for p in config.cache_presets.split(",") if p.strip()}
    return config.cache != "none" and (quality in wanted or (job_type is not None and job_type in wanted))


class BatchedGuidance:
    """For one pipeline call: the transformer's conditional call runs the unconditional one in the
    same batch and keeps its result; the unconditional call that follows returns it.

    diffusers' WanPipeline alternates the two calls every step (prompt first), so the second call
    of each pair is answered without computing. Installed on the module instance for the call
    only (`with BatchedGuidance(transformer, negative_embeds):`).
    """

    def __init__(self, transformer, negative_embeds: torch.Tensor):
        self.transformer = transformer
        self.negative = negative_embeds
        self.kept: torch.Tensor | None = None
        self.calls = 0  # transformer forwards actually run (tests)

    def __enter__(self) -> BatchedGuidance:
        self.original = self.transformer.forward
        self.installed_before = self.transformer.__dict__.get("forward")  # CUDA graphs, say
        self.transformer.forward = self._forward
        return self

    def __exit__(self, *exc) -> None:
        if self.installed_before is None:
            del self.transformer.forward  # back to the class's own forward
        else:
            self.transformer.forward = self.installed_before
        self.kept = None

    def _forward(self, hidden_states, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        if self.kept is not None:  # the unconditional call: computed with the conditional one
            out, self.kept = self.kept, None
            return (out,) if not return_dict else _output(out)
        self.calls += 1
        negative = self.negative.to(encoder_hidden_states.device, encoder_hidden_states.dtype)
        both = self.original(
            torch.cat([hidden_states, hidden_states]),
            torch.cat([timestep, timestep]) if timestep.ndim else timestep,
            torch.cat([encoder_hidden_states, negative]), *args, return_dict=False, **kwargs)[0]
        out, self.kept = both.chunk(2)
        return (out,) if not return_dict else _output(out)


def _output(sample: torch.Tensor):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)

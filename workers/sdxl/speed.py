"""SDXL speed switches (SDXL_* settings), each on by default only where a GPU measured it faster.

- `SDXL_COMPILE`: torch.compile the UNet (`SDXL_COMPILE_REGIONAL`: only its repeated transformer
  blocks, which compiles much faster: 4 graphs in 19 s on the H200, ready in 26 s from an empty
  cache; with graphs 1.40 s an image instead of 1.52; off by default, see docs/benchmarks.md) and with `SDXL_COMPILE_VAE` the VAE decoder, shape-dynamic,
  then warmed up at every size the presets serve, so no job pays for a compile.
  `SDXL_COMPILE_MODE=reduce-overhead` adds CUDA graphs. Exact math (within float error).
- `SDXL_CUDA_GRAPHS` (`auto`, the default: on CUDA; an H200 made a 1024² image at batch 1 in
  1.52 s instead of 2.12, 44 ms a step instead of 64): the UNet replayed from a CUDA graph per
  shape (workers/accel/cuda_graphs.py), captured at the warm-up for every served size, each graph checked
  once against an eager call. Exact. Not with a whole-UNet compile (its own `reduce-overhead` mode
  does graphs there) nor for DeepCache's steps, which change what runs per step.
- `SDXL_CUDNN_BENCHMARK`: cuDNN times its convolution algorithms per shape and keeps the fastest.
  Exact math.
- `SDXL_VAE_DTYPE=bf16` (the default on CUDA: 1.95 s an image against 2.51 with diffusers' float32
  upcast, H200, 1024², 30 steps): decode in bfloat16. SDXL's VAE overflows in float16 (NaNs:
  diffusers upcasts it to float32 then); bfloat16 has float32's range, so it decodes without NaNs
  and without the upcast. Approximate (docs/benchmarks.md gives the bound). `model`: diffusers' own behaviour.
- `SDXL_FP8=dynamic|weights`: FP8 layers through torchao (workers/accel/fp8.py). Approximate; off.
"""

from __future__ import annotations

import torch

from shared.ops.engine_settings import SDXLSettings
from workers.accel.cuda_graphs import graphs_wanted
from workers.accel.fp8 import quantize_fp8

# Sizes the presets and the 2026-04 backend's `resolution` ask for (configs/presets.toml).
SERVED_SIZES = ((1024, 1024), (1024, 576), (576, 1024))
VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def vae_dtype(config: SDXLSettings, device: str) -> str:
    """`auto`: bf16 on CUDA (measured faster there); elsewhere the model's own."""
    if config.vae_dtype == "auto":
        return "bf16" if device.startswith("cuda") else "model"
    return config.vae_dtype


def graphs_on(config: SDXLSettings, device: str) -> bool:
    """`SDXL_CUDA_GRAPHS`: `auto` means on CUDA unless the whole UNet is compiled (whose own mode
    `reduce-overhead` is the way to graphs there). `true` is refused off CUDA and with a whole-UNet compile."""
    whole_unet = config.compile and not config.compile_regional
    wanted = graphs_wanted(config.cuda_graphs, device, "SDXL_CUDA_GRAPHS")
    if config.cuda_graphs == "auto":
        return wanted and not whole_unet
    if wanted and whole_unet:
        raise ValueError("SDXL_CUDA_GRAPHS with a whole-UNet SDXL_COMPILE: use SDXL_COMPILE_MODE=reduce-overhead "
                         "(torch.compile's own CUDA graphs) or SDXL_COMPILE_REGIONAL=true")
    return wanted


def apply_switches(pipe, config: SDXLSettings, device: str) -> None:
    """At setup, after the pipeline is on its device."""
    torch.backends.cudnn.benchmark = config.cudnn_benchmark  # process-wide: set either way, never left over
    vae = vae_dtype(config, device)
    if vae != "model":
        dtype = VAE_DTYPES[vae]
        pipe.vae.to(dtype)
        # fp16 keeps diffusers' upcast (its NaN guard); bf16 and fp32 need none.
        pipe.vae.config.force_upcast = vae == "fp16"
        # The pipeline hands the VAE latents (and references) in the UNet's dtype: convert them at its door.
        for part in (pipe.vae.encoder, pipe.vae.decoder, pipe.vae.quant_conv, pipe.vae.post_quant_conv):
            if part is not None:
                part.register_forward_pre_hook(_in_dtype(dtype))
    quantize_fp8(pipe.unet, config.fp8, device)  # before compiling, which then traces the FP8 layers
    if config.compile:
        options = dict(mode=config.compile_mode, backend=config.compile_backend, fullgraph=False, dynamic=True)
        if config.compile_regional:
            pipe.unet.compile_repeated_blocks(**options)
        else:
            pipe.unet = torch.compile(pipe.unet, **options)
        if config.compile_vae:
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, **options)


def _in_dtype(dtype: torch.dtype):
    def cast(_module, args):
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    return cast


def warmup_sizes(config: SDXLSettings, device: str, sizes=SERVED_SIZES) -> list[tuple[int, int, int, float]]:
    """(width, height, batch, guidance) to run before the worker says ready.

    Compiled: every served size at one image and at a full batch, so no job pays for a compile.
    The order matters. A shape-dynamic compile still makes a graph of its own for a dimension of
    size 1, and ties together dimensions that happen to be equal on its first call: a square first
    call ties height to width, and every non-square job would compile again. So a non-square full
    batch comes first; then one image with guidance 1, which skips classifier-free guidance as
    exact-copy jobs do (a UNet batch of 1); then a batch of 2, because a convolution's choice of
    kernel can fix the first call's batch size in the VAE decoder's graph (the CPU's does). The
    rest then compile nothing (tests/test_compile_warmup.py counts the graphs).
    With CUDA graphs the same shapes are captured. Otherwise: one small call that loads the kernels."""
    if not (config.compile or graphs_on(config, device)) or not device.startswith("cuda"):
        side = 1024 if device.startswith("cuda") else 64
        return [(side, side, 1, 5.0)]
    wide = max(sizes, key=lambda size: size[0] / size[1])
    full = config.max_batch_images
    order = [(*wide, full, 5.0), (*wide, 1, 1.0), (*wide, 2, 5.0)]
    order += [(w, h, b, 5.0) for w, h in sizes for b in (full, 1)]
    return [shape for i, shape in enumerate(order) if shape not in order[:i] and shape[2] <= full]

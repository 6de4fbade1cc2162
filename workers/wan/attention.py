"""`WAN_ATTENTION`: which attention kernel WAN's self-attention runs (at 480x832x81, 32,760 tokens,
most of a clip's FLOPs are there).

| name | kernel | how | math |
|---|---|---|---|
| `sdpa` (default) | PyTorch's SDPA, its own choice of kernel | diffusers' `native` backend | exact |
| `cudnn` | cuDNN's fused attention through SDPA | diffusers' `_native_cudnn` backend | exact |
| `flash` | PyTorch's built-in FlashAttention through SDPA | diffusers' `_native_flash` backend | exact |
| `sage` | SageAttention 1.0.6 (`pip install sageattention==1.0.6`: Triton, no build step): INT8 Q·K, FP16 P·V | our processor, self-attention only | approximate |

diffusers' own `sage` backend asks for sageattention >= 2.1.1, which has no wheel on the package
index (a CUDA build from source), so `sage` goes through a processor of ours on the self-attention
layers (`attn1`); cross-attention to the 512 text tokens is small and stays on SDPA. The processor
applies WAN's rotary embedding exactly as diffusers' `WanAttnProcessor` does (a CPU test compares
the two with the same kernel).

A kernel that this machine cannot run is a clear error at start (`AttentionUnavailable`), never a
silent fallback: `check_kernel` runs it once on small random inputs and compares it with exact
attention. Exact kernels must agree within bf16 error; `sage` within its stated bound.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

KERNELS = ("sdpa", "cudnn", "flash", "sage")
EXACT = {"sdpa", "cudnn", "flash"}
DIFFUSERS_BACKENDS = {"sdpa": "native", "cudnn": "_native_cudnn", "flash": "_native_flash"}
# Largest mean |difference| from exact attention on the start-up probe (unit-variance inputs):
# bf16 rounding for the exact kernels, INT8 quantisation of Q and K for sage.
PROBE_BOUND = {"exact": 0.02, "sage": 0.05}


class AttentionUnavailable(RuntimeError):
    """WAN_ATTENTION names a kernel this machine cannot run."""


def label(kernel: str) -> str:
    return "exact" if kernel in EXACT else "approximate"


def kernel_function(kernel: str, device: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Attention over (batch, tokens, heads, head_dim) tensors with the chosen kernel; raises
    `AttentionUnavailable` with the reason and the fix when it cannot run here."""
    if kernel not in KERNELS:
        raise AttentionUnavailable(f"WAN_ATTENTION={kernel!r} is not one of {', '.join(KERNELS)}")
    if kernel != "sdpa" and not device.startswith("cuda"):
        raise AttentionUnavailable(f"WAN_ATTENTION={kernel} needs a CUDA GPU; on {device} use WAN_ATTENTION=sdpa")
    if kernel == "sage":
        if importlib.util.find_spec("sageattention") is None:
            raise AttentionUnavailable("WAN_ATTENTION=sage needs SageAttention: pip install sageattention==1.0.6 "
                                       "(Triton kernels, no build step), or WAN_ATTENTION=sdpa")
        from sageattention import sageattn

        def sage(q, k, v):  # sageattn shifts K by its mean in place (smooth_k): hand it a copy
            return sageattn(q, k.clone(), v, tensor_layout="NHD", is_causal=False)

        return sage
    backend = {"sdpa": None, "cudnn": torch.nn.attention.SDPBackend.CUDNN_ATTENTION,
               "flash": torch.nn.attention.SDPBackend.FLASH_ATTENTION}[kernel]

    def sdpa(q, k, v):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        with torch.nn.attention.sdpa_kernel(backend):  # only this kernel: an error, not a fallback
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)

    return sdpa


def check_kernel(kernel: str, device: str, dtype: torch.dtype = torch.bfloat16, heads: int = 12,
                 head_dim: int = 128, tokens: int = 1024) -> float:
    """Runs the kernel once against exact attention (float32 math) on random inputs of WAN's head
    size; returns the mean |difference|, or raises `AttentionUnavailable`."""
    attend = kernel_function(kernel, device)
    if kernel == "sdpa" and not device.startswith("cuda"):
        dtype = torch.float32  # the CPU runs WAN in float32
    gen = torch.Generator("cpu").manual_seed(0)
    q, k, v = (torch.randn(1, tokens, heads, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    try:
        out = attend(q, k, v).float()
    except Exception as exc:  # noqa: BLE001 - the reason, said at start
        raise AttentionUnavailable(f"WAN_ATTENTION={kernel} does not run on this machine: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    exact = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    difference = float((out - exact).abs().mean())
    bound = PROBE_BOUND["exact" if kernel in EXACT else kernel]
    if not difference <= bound:  # also NaN
        raise AttentionUnavailable(f"WAN_ATTENTION={kernel} gives wrong results on this machine "
                                   f"(mean |difference| {difference:.4f} from exact attention, bound {bound})")
    return difference


class KernelSelfAttention:
    """WAN self-attention (`attn1`) with a kernel of ours: projections, RMS norms and rotary
    embedding as diffusers computes them, then `attend` over (batch, tokens, heads, head_dim)."""

    def __init__(self, attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]):
        self.attend = attend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("KernelSelfAttention serves WAN's self-attention only (no context, no mask)")
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        if rotary_emb is not None:
            q, k = _rotate(q, *rotary_emb), _rotate(k, *rotary_emb)
        out = self.attend(q, k, v).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """WAN's rotary embedding: channel pairs (2i, 2i+1) turned by the angle whose cos and sin sit at
    2i and 2i+1 of `cos` and `sin`, in the tables' precision (float64 on CPU, float32 on CUDA)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2).type_as(x)


def apply_attention(transformer, kernel: str, device: str) -> float:
    """At setup, before compiling: the kernel on every self-attention layer of the transformer.
    Returns the start-up probe's difference from exact attention."""
    difference = check_kernel(kernel, device, transformer.dtype)
    if kernel in DIFFUSERS_BACKENDS:
        if kernel != "sdpa":
            transformer.set_attention_backend(DIFFUSERS_BACKENDS[kernel])
        return difference
    processor = KernelSelfAttention(kernel_function(kernel, device))
    for block in transformer.blocks:
        block.attn1.set_processor(processor)
    return difference

"""FP8 weights through torchao for the SDXL UNet and the WAN transformer (`SDXL_FP8`, `WAN_FP8`).

Off by default: no GPU has measured either mode yet.
- `dynamic`: weights and activations in float8 (e4m3) with a scale per row, so the matmuls run on
  FP8 tensor cores. It needs an FP8 card, compute capability 8.9 or later (L4, L40S, RTX 4090,
  H100, H200); on any other device the worker refuses to start rather than run something else.
- `weights`: float8 weights, turned back into the model's dtype for each matmul. Half the weight
  memory of bf16 and no FP8 arithmetic, so it runs anywhere (the CPU tests use it).

Only linear layers whose both sides are multiples of 16 are converted, since FP8 matmuls accept
no others; the rest stay as they were. Approximate: docs/benchmarks.md gives the bound.
"""

from __future__ import annotations

import torch

from workers.accel.torchao_import import reveal_torchao

FP8_CARD = (8, 9)  # the first compute capability with FP8 tensor cores (Ada)


def quantize_fp8(module: torch.nn.Module, mode: str, device: str) -> int:
    """Converts `module`'s eligible linear layers in place; returns how many it converted."""
    if mode == "off":
        return 0
    reveal_torchao()
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8WeightOnlyConfig,
            PerRow,
            quantize_,
        )
    except ImportError as exc:
        raise RuntimeError("FP8 needs torchao: pip install 'ourvidz-workers[fp8]' (a torchao built for this "
                           "torch)") from exc
    if mode == "dynamic":
        _require_fp8_card(device)
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    else:
        config = Float8WeightOnlyConfig(set_inductor_config=False)
    converted: list[str] = []

    def eligible(layer: torch.nn.Module, name: str) -> bool:
        if isinstance(layer, torch.nn.Linear) and layer.in_features % 16 == 0 and layer.out_features % 16 == 0:
            converted.append(name)
            return True
        return False

    quantize_(module, config, filter_fn=eligible)
    return len(converted)


def _require_fp8_card(device: str) -> None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise RuntimeError(f"FP8 mode dynamic needs an FP8 GPU (compute capability 8.9 or later), not {device}: "
                           "use weights or off")
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < FP8_CARD:
        name = torch.cuda.get_device_name(torch.device(device))
        raise RuntimeError(f"FP8 mode dynamic needs compute capability 8.9 or later; {name} has "
                           f"{capability[0]}.{capability[1]}: use weights or off")

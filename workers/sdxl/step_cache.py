"""A DeepCache-style step cache for the SDXL UNet (`SDXL_CACHE=deep`, fast presets only).

Between two denoising steps a UNet's deep features change little; its outermost blocks, which
carry the fine detail, change more. So every `interval`-th UNet call runs in full and keeps what
the deep part hands the outermost up block; the calls between compute only `conv_in`, the first
down block, the last up block and `conv_out`, and reuse the kept features in place of everything
deeper. Approximate (docs/benchmarks.md gives the bound the CPU test holds it to); off by default because no
GPU has measured it yet.

diffusers' first-block cache hooks transformer blocks and does not apply to a UNet, hence this.
"""

from __future__ import annotations

import torch


class DeepCache:
    """For one pipeline call (`with DeepCache(unet, interval):`): the deep blocks answer from
    the cache on all but every `interval`-th call. Installed on the module instances for the call
    only; the UNet is as it was afterwards."""

    def __init__(self, unet: torch.nn.Module, interval: int):
        if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
            raise ValueError("a step cache needs a UNet with at least two down and two up blocks")
        self.unet, self.interval = unet, max(1, interval)
        self.calls = 0
        self.kept: torch.Tensor | None = None
        self.cached = False  # whether the stand-ins are installed now

    def __enter__(self) -> DeepCache:
        unet = self.unet
        self.deep = [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]
        self.handles = [unet.register_forward_pre_hook(self._before_call),
                        unet.up_blocks[-2].register_forward_hook(self._keep)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self._run_deep_blocks()
        self.kept = None

    def _before_call(self, _module, _args) -> None:
        full = self.kept is None or self.calls % self.interval == 0
        self.calls += 1
        if full and self.cached:  # switch only when the mode changes, not on every step
            self._run_deep_blocks()
        elif not full and not self.cached:
            self._answer_from_cache()

    def _keep(self, _module, _args, output) -> None:
        self.kept = output

    def _run_deep_blocks(self) -> None:
        for block in self.deep:
            block.__dict__.pop("forward", None)  # back to the class's own forward
        self.cached = False

    def _answer_from_cache(self) -> None:
        """Stand-ins that only keep the UNet's bookkeeping right: each down block still hands back
        as many skip tensors as the up blocks will take (those it feeds are stand-ins too), and the
        last deep up block returns the kept features."""
        unet = self.unet
        for block in unet.down_blocks[1:]:
            skips = len(block.resnets) + len(getattr(block, "downsamplers", None) or [])
            block.forward = _passing(skips)
        unet.mid_block.forward = _passing(None)
        for block in unet.up_blocks[:-2]:
            block.forward = _passing(None)
        unet.up_blocks[-2].forward = lambda *args, **kwargs: self.kept
        self.cached = True


def _passing(skips: int | None):
    def forward(hidden_states, *args, **kwargs):
        return hidden_states if skips is None else (hidden_states, (hidden_states,) * skips)

    return forward

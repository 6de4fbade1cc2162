"""WAN speed switches (WAN_* settings), each off until measured faster on a GPU.

- `WAN_COMPILE`: torch.compile the transformer's repeated blocks (diffusers' regional
  compilation: the 30 identical blocks compile once, so start-up stays short). Exact math.
- `WAN_BATCHED_GUIDANCE`: classifier-free guidance needs the transformer twice per step, once with
  the prompt and once with the negative prompt; diffusers' WanPipeline makes two calls. This runs
  both as one batch of two (more arithmetic per kernel launch, half the weight reads), at the cost
  of the activations of a second sample. Exact math (equal within float error). T2V models only.
- `WAN_VAE_DTYPE=bf16`: decode in bfloat16 instead of float32. Approximate (see README's bound).
- `WAN_CACHE=first_block` for the presets in `WAN_CACHE_PRESETS`: diffusers' first-block cache.
  Approximate.
"""

from __future__ import annotations

import torch

from shared.engine_settings import WANSettings


def apply_switches(pipe, config: WANSettings) -> None:
    """At setup: the switches that change the loaded modules."""
    if config.vae_dtype == "bf16":
        pipe.vae.to(torch.bfloat16)
    if config.compile:
        pipe.transformer.compile_repeated_blocks(mode=config.compile_mode, backend=config.compile_backend,
                                                 fullgraph=False, dynamic=True)


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
        self.transformer.forward = self._forward
        return self

    def __exit__(self, *exc) -> None:
        del self.transformer.forward  # back to the class's own forward
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

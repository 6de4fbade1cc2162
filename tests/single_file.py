"""SDXL single-file checkpoints: the original (LDM/"A1111") layout that fine-tunes ship in.

Production loads one `.safetensors` fine-tune with the architecture from a local diffusers
config folder (no hub access). For tests, `save_ldm_checkpoint` writes a diffusers pipeline back
into that layout, so the real loading path is exercised on a tiny model. The key layout is
SDXL's: UNet levels of `layers_per_block` resnets (+ attention), a KL VAE, CLIP-L as
`conditioner.embedders.0`, OpenCLIP-bigG as `conditioner.embedders.1`.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
CLIP_G = "conditioner.embedders.1.model."

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_inside(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_prefix_map(unet) -> dict[str, str]:
    """diffusers module prefix → LDM module prefix, from the UNet's own structure."""
    per_level = unet.config.layers_per_block
    levels = len(unet.config.block_out_channels)
    mapping = {
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(levels):
        for j in range(per_level):
            block = 1 + i * (per_level + 1) + j
            mapping[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{block}.0."
            mapping[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{block}.1."
        if i < levels - 1:
            mapping[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (per_level + 1)}.0.op."
        has_attention = hasattr(unet.up_blocks[i], "attentions")
        for j in range(per_level + 1):
            block = i * (per_level + 1) + j
            mapping[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{block}.0."
            mapping[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{block}.1."
        if i < levels - 1:
            slot = 2 if has_attention else 1
            mapping[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (per_level + 1) + per_level}.{slot}."
    return mapping


def _unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    prefixes = sorted(_unet_prefix_map(unet).items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key, value in unet.state_dict().items():
        for new, old in prefixes:
            if key.startswith(new):
                rest = key[len(new):]
                if ".resnets." in new or new.startswith("mid_block.resnets"):
                    rest = _rename_inside(rest, _RESNET)
                out[UNET + old + rest] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
    return out


def _vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        name = key
        for side in ("encoder.", "decoder."):
            if not key.startswith(side):
                continue
            rest = key[len(side):]
            parts = rest.split(".")
            if parts[0] in ("down_blocks", "up_blocks"):
                level = int(parts[1]) if parts[0] == "down_blocks" else levels - 1 - int(parts[1])
                ldm_side = "down" if parts[0] == "down_blocks" else "up"
                if parts[2] == "resnets":
                    inner = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                    rest = f"{ldm_side}.{level}.block.{parts[3]}.{inner}"
                else:  # downsamplers.0.conv / upsamplers.0.conv
                    rest = f"{ldm_side}.{level}.{'downsample' if ldm_side == 'down' else 'upsample'}.{'.'.join(parts[4:])}"
            elif parts[0] == "mid_block":
                if parts[1] == "resnets":
                    rest = f"mid.block_{int(parts[2]) + 1}." + ".".join(parts[3:]).replace("conv_shortcut", "nin_shortcut")
                else:
                    rest = "mid.attn_1." + _rename_inside(".".join(parts[3:]), _VAE_ATTENTION)
                    if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                        value = value[:, :, None, None]
            elif parts[0] == "conv_norm_out":
                rest = "norm_out." + ".".join(parts[1:])
            name = side + rest
        out[VAE + name] = value
    return out


def _open_clip_to_ldm(encoder) -> dict[str, torch.Tensor]:
    sd = encoder.state_dict()
    out = {
        CLIP_G + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        CLIP_G + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        CLIP_G + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        CLIP_G + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        CLIP_G + "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{CLIP_G}transformer.resblocks.{i}."
        for new, old in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
            for kind in ("weight", "bias"):
                out[f"{dst}{old}.{kind}"] = sd[f"{src}{new}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
            )
    return out


def save_ldm_checkpoint(pipe, path: str | Path) -> Path:
    """Write an SDXL diffusers pipeline as one LDM-layout `.safetensors` file."""
    from safetensors.torch import save_file

    state = _unet_to_ldm(pipe.unet)
    state.update(_vae_to_ldm(pipe.vae))
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.`); the LDM layout keeps it.
    state.update({CLIP_L + (k if k.startswith("text_model.") else "text_model." + k): v
                  for k, v in pipe.text_encoder.state_dict().items()})
    state.update(_open_clip_to_ldm(pipe.text_encoder_2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path

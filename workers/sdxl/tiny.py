"""`ourvidz-worker make-tiny-model sdxl DIR`: a random-weight SDXL small enough for CPU tests.

It keeps SDXL's shape (three UNet levels with two layers each, attention below the first level,
two CLIP text encoders of different widths feeding `text_time` conditioning, a KL VAE), so the
production code paths run unchanged. Written as a diffusers directory (the tests also write it as
a single-file LDM checkpoint, with tests/single_file.py, to check that loading path).
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_sdxl_pipeline(seed: int = 0):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from workers.tiny_clip import build_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")
    def clip_config(hidden: int, layers: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden, hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    text_encoder = CLIPTextModel(clip_config(16, 2))
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(32, 2))
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=16 + 32,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop ids + pooled text
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        timestep_spacing="leading", steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
    )


def make_tiny_sdxl(directory: str | Path) -> Path:
    directory = Path(directory)
    build_tiny_sdxl_pipeline().save_pretrained(directory)
    return directory

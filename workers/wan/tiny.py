"""`ourvidz-worker make-tiny-model wan DIR [--vace]`: a random-weight Wan 2.1 for CPU tests.

Wan's shape at toy size: a `WanTransformer3DModel` (or `WanVACETransformer3DModel`, which takes
reference frames), the causal video VAE, a UMT5 text encoder and an in-memory Unigram tokenizer.
Saved as a diffusers folder and loaded with the same `from_pretrained` as Wan2.1-T2V-1.3B.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch


def build_t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>"] + list(string.ascii_letters + string.digits + string.punctuation) + ["▁"]
    return T5Tokenizer(vocab=[(p, 0.0 if i < 3 else -1.0) for i, p in enumerate(pieces)], extra_ids=0)


def build_tiny_wan_pipeline(vace: bool = False, seed: int = 0):
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
        WanVACEPipeline,
        WanVACETransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))
    common = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
                  text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    if vace:
        transformer = WanVACETransformer3DModel(**common, vace_layers=[0, 1], vace_in_channels=96)
    else:
        transformer = WanTransformer3DModel(**common)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    cls = WanVACEPipeline if vace else WanPipeline
    return cls(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)


def make_tiny_wan(directory: str | Path, vace: bool = False) -> Path:
    directory = Path(directory)
    build_tiny_wan_pipeline(vace=vace).save_pretrained(directory)
    return directory


def make_tiny_vace(directory: str | Path) -> Path:
    """`make-tiny-model wan-vace DIR`: the same, with VACE reference-frame conditioning."""
    return make_tiny_wan(directory, vace=True)

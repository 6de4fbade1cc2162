"""SDXL worker settings (environment, prefix SDXL_); the defaults are what production should run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SDXLSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SDXL_", extra="ignore", protected_namespaces=())

    config_dir: str | None = Field(
        default=None, description="diffusers config folder for a single-file checkpoint (default: the checkpoint's folder)")
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(default="auto", description="auto: bf16 on CUDA, fp32 on CPU")
    max_batch_images: int = Field(default=6, ge=1, le=32, description="images per pipeline call across jobs")
    channels_last: bool = Field(default=True, description="channels-last memory format for UNet and VAE")
    fuse_qkv: bool = Field(default=True, description="fused QKV attention projections")
    compile: bool = Field(default=False, description="torch.compile the UNet (warmed up before ready)")
    compile_mode: str = Field(default="max-autotune-no-cudagraphs")
    vae_tiling_above: int = Field(default=1024, description="VAE tiling when width or height exceeds this")
    reference_resize: Literal["cover", "contain", "stretch"] = Field(
        default="cover", description="fit a reference to the job size: crop, pad, or distort")
    warmup: bool = Field(default=True, description="one short generation before the worker reports ready")

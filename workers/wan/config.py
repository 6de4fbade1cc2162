"""WAN worker settings (environment, prefix WAN_); defaults are what production should run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WANSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAN_", extra="ignore", protected_namespaces=())

    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(default="auto", description="transformer dtype; the VAE is fp32")
    text_encoder_device: Literal["gpu", "cpu"] = Field(
        default="gpu", description="cpu keeps UMT5 (~11 GB in bf16) off the GPU, at some seconds per job")
    reference_policy: Literal["fail", "t2v"] = Field(
        default="fail", description="reference frames on a text-to-video-only model: fail, or generate without them")
    enhance_timeout_seconds: float = Field(default=30.0, gt=0, description="wait for the chat worker's rewrite")
    cache: Literal["none", "first_block"] = Field(default="none", description="step caching for fast presets")
    cache_threshold: float = Field(default=0.05, gt=0)
    warmup: bool = Field(default=True)

"""The engines' branches of the settings tree (environment, prefixes SDXL_, WAN_, CHAT_).

`shared.ops.settings.Settings` holds one of each (`settings.sdxl`, `settings.wan`, `settings.chat`);
the defaults are what production should run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SDXLSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SDXL_", extra="ignore", protected_namespaces=())

    config_dir: str | None = Field(
        default=None, description="diffusers config folder for a single-file checkpoint (default: the checkpoint's folder)")
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(default="auto", description="auto: bf16 on CUDA, fp32 on CPU")
    max_batch_images: int = Field(default=6, ge=1, le=32, description="images per pipeline call across jobs")
    channels_last: bool = Field(default=True, description="channels-last memory format for UNet and VAE")
    fuse_qkv: bool = Field(default=True, description="fused QKV attention projections")
    # GPU speed switches (workers/sdxl/speed.py). On by default only what an H200 measured faster: see docs/benchmarks.md.
    compile: bool = Field(default=False, description="torch.compile the UNet (warmed up before ready)")
    # `default`, as WAN's: max-autotune times Triton kernels for every matmul shape, and on the H200
    # that compile did not finish in 200 s. Speed of either mode on SDXL: not measured.
    compile_mode: str = Field(default="default", description="torch.compile mode; reduce-overhead adds CUDA graphs")
    compile_vae: bool = Field(default=False, description="with SDXL_COMPILE: the VAE decoder too")
    compile_regional: bool = Field(default=False,
                                   description="with SDXL_COMPILE: only the repeated transformer blocks (faster compile)")
    compile_backend: str = Field(default="inductor", description="torch.compile backend (tests use eager)")
    compile_budget_seconds: float = Field(
        default=120.0, gt=0, description="with SDXL_COMPILE: a warm-up still compiling past this many seconds stops "
                                         "compiling and serves eagerly (a worker's start stays bounded)")
    cudnn_benchmark: bool = Field(default=False, description="let cuDNN pick the fastest convolution per shape")
    cuda_graphs: Literal["auto"] | bool = Field(
        default="auto", description="replay the UNet from CUDA graphs, one per shape, captured at the warm-up "
                                    "(auto: on CUDA)")
    vae_dtype: Literal["auto", "model", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="VAE decode precision; auto: bf16 on CUDA, else the model's (model: diffusers' "
                                    "own, which upcasts fp16 and bf16 to fp32)")
    fp8: Literal["off", "weights", "dynamic"] = Field(
        default="off", description="FP8 UNet through torchao: dynamic (FP8 cards) or weights only (workers/accel/fp8.py)")
    cache: Literal["none", "deep"] = Field(
        default="none", description="deep: DeepCache-style step cache for fast-preset jobs (approximate)")
    cache_interval: int = Field(default=3, ge=2, le=10, description="with SDXL_CACHE: the full UNet every N steps")
    vae_tiling_above: int = Field(default=1024, description="VAE tiling when width or height exceeds this")
    reference_resize: Literal["cover", "contain", "stretch"] = Field(
        default="cover", description="fit a reference to the job size: crop, pad, or distort")
    warmup: bool = Field(default=True, description="one short generation before ready (always when compiled)")


class WANSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAN_", extra="ignore", protected_namespaces=())

    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(default="auto", description="transformer dtype")
    text_encoder_device: Literal["gpu", "cpu", "auto"] = Field(
        default="gpu", description="cpu keeps UMT5 (~11 GB in bf16) off the GPU, at some seconds per job; auto: on "
                                   "the GPU if the card keeps WAN_TEXT_ENCODER_HEADROOM_GB free beside the model")
    text_encoder_headroom_gb: float = Field(
        default=8.0, ge=0, description="with auto: GPU memory left for generating (an assumption, not measured)")
    reference_policy: Literal["fail", "t2v"] = Field(
        default="fail", description="reference frames on a text-to-video-only model: fail, or generate without them")
    enhance_timeout_seconds: float = Field(default=30.0, gt=0, description="wait for the chat worker's rewrite")
    cache: Literal["none", "first_block"] = Field(default="none", description="step caching (approximate)")
    cache_threshold: float = Field(default=0.05, gt=0)
    cache_presets: str = Field(default="fast", description="qualities or job types the step cache applies to")
    # GPU speed switches (workers/wan/speed.py). On by default only what an H200 measured faster: see docs/benchmarks.md.
    compile: Literal["auto"] | bool = Field(
        default="auto", description="torch.compile the transformer's repeated blocks; auto: on CUDA")
    compile_mode: str = Field(default="default", description="torch.compile mode")
    compile_backend: str = Field(default="inductor", description="torch.compile backend (tests use eager)")
    batched_guidance: Literal["images"] | bool = Field(
        default=False, description="conditional and unconditional passes in one batch (T2V models); images: "
                                   "one-frame jobs only")
    attention: Literal["sdpa", "cudnn", "flash", "sage"] = Field(
        default="sdpa", description="self-attention kernel (workers/wan/attention.py); sage is approximate")
    cuda_graphs: Literal["auto"] | bool = Field(
        default="auto", description="one-frame images: both guidance passes in one batch, replayed from CUDA "
                                    "graphs (auto: on CUDA)")
    vae_dtype: Literal["fp32", "bf16"] = Field(default="fp32", description="VAE decode precision")
    fp8: Literal["off", "weights", "dynamic"] = Field(
        default="off", description="FP8 transformer through torchao: dynamic (FP8 cards) or weights only")
    warmup: bool = Field(default=True)


DEFAULT_ENHANCE_SYSTEM_PROMPT = (
    "You rewrite prompts for an AI {media} generator. Keep the subject and intent, add concrete visual "
    "detail (composition, lighting, style, camera{motion}), and answer with the rewritten prompt only, "
    "in one paragraph of at most 120 words."
)


class ChatSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", protected_namespaces=(), populate_by_name=True)

    chat_api_key: SecretStr | None = Field(default=None, validation_alias="CHAT_WORKER_API_KEY")
    wan_api_key: SecretStr | None = Field(default=None, validation_alias="WAN_WORKER_API_KEY")
    allow_unauthenticated_enhance: bool = Field(
        default=True, validation_alias="CHAT_ALLOW_UNAUTHENTICATED_ENHANCE",
        description="one backend caller of /enhance sends no key")
    allow_unauthenticated_chat: bool = Field(
        default=False, validation_alias="CHAT_ALLOW_UNAUTHENTICATED_CHAT",
        description="the 2026-04 scene-narrative and 2025-08 roleplay-chat functions post /chat with no key")
    allow_unauthenticated_generate: bool = Field(
        default=False, validation_alias="CHAT_ALLOW_UNAUTHENTICATED_GENERATE",
        description="the 2025-08 enhance-prompt posts qwen_base work to {WAN worker}/generate with no key")
    port: int = Field(default=7861, validation_alias=AliasChoices("CHAT_PORT", "PORT"))
    base_model: str | None = Field(default=None, validation_alias="CHAT_BASE_MODEL")
    # The hub ids the backend may name in `model` (the 2025-08 backend sends the instruct model's).
    model_id: str = Field(default="Qwen/Qwen2.5-7B-Instruct", validation_alias="CHAT_MODEL_ID")
    base_model_id: str = Field(default="Qwen/Qwen2.5-7B", validation_alias="CHAT_BASE_MODEL_ID")
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(default="auto", validation_alias="CHAT_DTYPE")
    max_batch: int = Field(default=64, ge=1, le=256, validation_alias="CHAT_MAX_BATCH",
                           description="rows decoded together; requests past it wait for a row to free")
    batch_wait_ms: int = Field(default=0, ge=0, validation_alias="CHAT_BATCH_WAIT_MS",
                               description="wait for company before the first step (later arrivals join between steps)")
    max_request_bytes: int = Field(default=1024 * 1024, gt=0, validation_alias="CHAT_MAX_REQUEST_BYTES")
    max_context_tokens: int | None = Field(default=None, validation_alias="CHAT_MAX_CONTEXT_TOKENS")
    default_max_tokens: int = Field(default=512, ge=1, validation_alias="CHAT_DEFAULT_MAX_TOKENS")
    max_tokens_limit: int = Field(default=4096, ge=1, validation_alias="CHAT_MAX_TOKENS_LIMIT")
    request_timeout_seconds: float = Field(default=120.0, gt=0, validation_alias="CHAT_REQUEST_TIMEOUT_SECONDS")
    max_messages: int = Field(default=2000, ge=1, validation_alias="CHAT_MAX_MESSAGES",
                              description="messages (or history turns) in one request; past it, a 400")
    enhance_system_prompt: str = Field(default=DEFAULT_ENHANCE_SYSTEM_PROMPT, validation_alias="CHAT_ENHANCE_SYSTEM_PROMPT")
    backend: Literal["auto", "transformers", "vllm"] = Field(
        default="auto", validation_alias="CHAT_BACKEND", description="auto: vllm on CUDA when installed, else transformers")
    vllm_gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1,
                                               validation_alias="CHAT_VLLM_GPU_MEMORY_UTILIZATION")
    consume_queue: bool = Field(default=True, validation_alias="CHAT_CONSUME_QUEUE")
    cuda_graphs: Literal["auto"] | bool = Field(
        default="auto", validation_alias="CHAT_CUDA_GRAPHS",
        description="transformers backend: decoding steps from CUDA graphs over a static KV cache (auto: on CUDA)")

    def api_keys(self) -> list[str]:
        return [k.get_secret_value() for k in (self.chat_api_key, self.wan_api_key) if k and k.get_secret_value()]

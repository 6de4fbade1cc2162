"""Configuration from the environment (12-factor): one pydantic-settings tree, every knob a deployment turns.

`Settings` holds the fleet-wide values and one branch per engine (`settings.sdxl`, `.wan`,
`.chat`, from shared/ops/engine_settings.py). Secrets are fields (SecretStr), read here and nowhere
else, so the log redactor knows all of them.
"""

from __future__ import annotations

import os
import re
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlparse

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.ops.engine_settings import ChatSettings, SDXLSettings, WANSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PRESETS = REPO_ROOT / "configs" / "presets.toml"


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    upstash_redis_rest_url: str | None = Field(default=None, validation_alias="UPSTASH_REDIS_REST_URL")
    upstash_redis_rest_token: SecretStr | None = Field(default=None, validation_alias="UPSTASH_REDIS_REST_TOKEN")

    contract: Literal["v1", "v2"] = Field(default="v1", validation_alias="CONTRACT")
    storage_url: str = Field(default="file://./outputs", validation_alias="STORAGE_URL")
    callback_url_setting: str | None = Field(default=None, validation_alias="CALLBACK_URL")
    supabase_url: str | None = Field(default=None, validation_alias="SUPABASE_URL")
    supabase_service_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_KEY")
    )
    job_callback_secret: SecretStr | None = Field(default=None, validation_alias="JOB_CALLBACK_SECRET")

    lease_seconds: float = Field(default=30.0, gt=0, validation_alias="LEASE_SECONDS")
    max_attempts: int = Field(default=3, ge=1, validation_alias="MAX_ATTEMPTS")
    job_timeout_seconds: float = Field(default=1800.0, gt=0, validation_alias="JOB_TIMEOUT_SECONDS")
    shutdown_grace_seconds: float = Field(default=60.0, ge=0, validation_alias="SHUTDOWN_GRACE_SECONDS")
    batch_wait_ms: int = Field(default=50, ge=0, validation_alias="BATCH_WAIT_MS")
    # None: sized from the engine's output per batch (see Worker), so deliveries keep up with it.
    post_workers: int | None = Field(default=None, ge=1, validation_alias="POST_WORKERS")
    upload_concurrency: int = Field(default=16, ge=1, validation_alias="UPLOAD_CONCURRENCY")
    prefetch_jobs: int = Field(default=2, ge=0, validation_alias="PREFETCH_JOBS")
    presets_file: Path = Field(default=DEFAULT_PRESETS, validation_alias="PRESETS_FILE")
    preset_policy: Literal["payload", "preset"] = Field(default="payload", validation_alias="PRESET_POLICY")
    result_ttl_seconds: int = Field(default=7 * 86400, ge=60, validation_alias="RESULT_TTL_SECONDS")
    callback_timeout_seconds: float = Field(default=10.0, gt=0, validation_alias="CALLBACK_TIMEOUT_SECONDS")
    callback_retries: int = Field(default=3, ge=1, validation_alias="CALLBACK_RETRIES")
    storage_retries: int = Field(default=5, ge=1, validation_alias="STORAGE_RETRIES")
    retry_base_seconds: float = Field(default=0.5, gt=0, validation_alias="RETRY_BASE_SECONDS")
    reference_allowed_hosts: str | None = Field(default=None, validation_alias="REFERENCE_ALLOWED_HOSTS")
    reference_allow_private: bool = Field(default=False, validation_alias="REFERENCE_ALLOW_PRIVATE")
    reference_max_bytes: int = Field(default=20 * 1024 * 1024, gt=0, validation_alias="REFERENCE_MAX_BYTES")
    reference_max_pixels: int = Field(default=40_000_000, gt=0, validation_alias="REFERENCE_MAX_PIXELS")
    reference_timeout_seconds: float = Field(default=20.0, gt=0, validation_alias="REFERENCE_TIMEOUT_SECONDS")
    gpu_memory_gb: float | None = Field(default=None, gt=0, validation_alias="GPU_MEMORY_GB")
    compile_cache_dir: str | None = Field(
        default=None, validation_alias="COMPILE_CACHE_DIR",
        description="torch.compile's cache, kept across restarts (default: torch's own, in /tmp)")
    worker_id: str = Field(default_factory=default_worker_id, validation_alias="WORKER_ID")
    health_port: int | None = Field(default=None, validation_alias="HEALTH_PORT")
    http_header_timeout_seconds: float = Field(
        default=10.0, gt=0, validation_alias="HTTP_HEADER_TIMEOUT_SECONDS",
        description="a connection's request head (or its first byte) must arrive within this; else 408 and close")
    http_body_timeout_seconds: float = Field(
        default=30.0, gt=0, validation_alias="HTTP_BODY_TIMEOUT_SECONDS",
        description="a request's whole body must arrive within this of its head; else 408 and close")
    http_max_connections: int = Field(
        default=1000, ge=1, validation_alias="HTTP_MAX_CONNECTIONS",
        description="open connections past this are answered 503 and closed")
    device: str = Field(default="cuda", validation_alias="DEVICE", description="torch device for `run` (--device wins)")
    redis_wait_seconds: float = Field(default=10.0, ge=0, validation_alias="REDIS_WAIT_SECONDS",
                                      description="how long `run` waits for Redis to answer before giving up")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(default="INFO",
                                                                              validation_alias="LOG_LEVEL")
    log_format: Literal["json", "console"] = Field(default="json", validation_alias="LOG_FORMAT")
    aws_secret_access_key: SecretStr | None = Field(default=None, validation_alias="AWS_SECRET_ACCESS_KEY")
    hf_token: SecretStr | None = Field(default=None, validation_alias="HF_TOKEN")

    # The engines' branches, each read from its own prefix (SDXL_*, WAN_*, CHAT_*).
    sdxl: SDXLSettings = Field(default_factory=SDXLSettings, validation_alias="OURVIDZ_SDXL_SETTINGS")
    wan: WANSettings = Field(default_factory=WANSettings, validation_alias="OURVIDZ_WAN_SETTINGS")
    chat: ChatSettings = Field(default_factory=ChatSettings, validation_alias="OURVIDZ_CHAT_SETTINGS")

    @field_validator("worker_id")
    @classmethod
    def _safe_worker_id(cls, v: str) -> str:
        # It is part of Redis key names and SCAN patterns: no glob or separator characters.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", v):
            raise ValueError(f"WORKER_ID {v!r} must be letters, digits, '.', '-' and '_'")
        return v

    @field_validator("supabase_url", "upstash_redis_rest_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        if v and urlparse(v).scheme not in ("http", "https"):
            raise ValueError("must be an http(s):// URL")
        return v.rstrip("/") if v else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, v):
        return v.upper() if isinstance(v, str) else v

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, v):
        return v.lower() if isinstance(v, str) else v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v and urlparse(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0")
        return v

    @field_validator("presets_file")
    @classmethod
    def _presets_exist(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"no presets file at {v} (the project ships configs/presets.toml)")
        return v

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, v: str) -> str:
        if v != "supabase" and urlparse(v).scheme not in ("file", "s3"):
            raise ValueError("must be file://DIR, supabase, or s3://BUCKET?...")
        return v

    @model_validator(mode="after")
    def _storage_needs_supabase(self) -> Settings:
        if self.storage_url == "supabase" and not self.supabase_url:
            raise ValueError("STORAGE_URL=supabase needs SUPABASE_URL (the backend's project URL)")
        return self

    @cached_property
    def effective_redis_url(self) -> str:
        """REDIS_URL, else the Redis-protocol address of the backend's Upstash database."""
        if self.redis_url:
            return self.redis_url
        if self.upstash_redis_rest_url and self.upstash_redis_rest_token:
            host = urlparse(self.upstash_redis_rest_url).hostname or self.upstash_redis_rest_url
            token = quote(self.upstash_redis_rest_token.get_secret_value(), safe="")
            return f"rediss://default:{token}@{host}:6379"
        return "redis://127.0.0.1:6379/0"

    @property
    def callback_url(self) -> str:
        if self.callback_url_setting:
            return self.callback_url_setting
        if self.supabase_url:
            return f"{self.supabase_url}/functions/v1/job-callback"
        return "file://./outputs/callbacks.jsonl"

    def allowed_reference_hosts(self) -> list[str]:
        """Hosts reference images may come from: the setting, else the Supabase host (and its port,
        when SUPABASE_URL names one) alone."""
        if self.reference_allowed_hosts:
            return [h.strip().lower() for h in self.reference_allowed_hosts.split(",") if h.strip()]
        parsed = urlparse(self.supabase_url) if self.supabase_url else None
        if parsed is None or not parsed.hostname:
            return []
        host = parsed.hostname.lower()
        if ":" in host:
            host = f"[{host}]"
        return [f"{host}:{parsed.port}" if parsed.port else host]

    def secret_values(self) -> list[str]:
        """Every secret this process knows, so the log redactor can scrub them from any text."""
        secrets = (self.upstash_redis_rest_token, self.supabase_service_key, self.job_callback_secret,
                   self.aws_secret_access_key, self.hf_token, self.chat.chat_api_key, self.chat.wan_api_key)
        values = [s.get_secret_value() for s in secrets if s is not None]
        password = urlparse(self.effective_redis_url).password
        if password:
            values.append(password)
        return [v for v in values if len(v) >= 4]


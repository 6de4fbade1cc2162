"""The callback body the backend reads, formatted for the deployment's contract era, and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from shared.source.element import Era

COMPLETED = "completed"
FAILED = "failed"
PROCESSING = "processing"
CANCELLED = "cancelled"
TERMINAL = (COMPLETED, FAILED, CANCELLED)


@dataclass(frozen=True)
class Asset:
    """One stored output: its object key, its thumbnail's key, and what reproduces it."""

    type: str  # image | video
    key: str
    thumbnail_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def build_callback(
    era: Era,
    job_id: str,
    status: str,
    assets: list[Asset] | None = None,
    error_message: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metadata = dict(metadata or {})
    if status == CANCELLED and era == "v1":
        # v1 has no cancelled status: a failure the backend can tell apart by error_type.
        status = FAILED
        metadata.setdefault("error_type", "cancelled")
        error_message = error_message or "cancelled"
    if era == "v1":
        wire_assets: list[Any] = [a.key for a in assets or []]
    else:
        wire_assets = [
            {"type": a.type, "url": a.key, "thumbnail_url": a.thumbnail_key, "metadata": a.metadata}
            for a in assets or []
        ]
    return {
        "job_id": job_id,
        "status": status,
        "assets": wire_assets,
        "error_message": error_message,
        "metadata": metadata,
    }


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes sent, and signed; compact and stable so a re-send signs identically."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=False).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """What the backend does with X-Callback-Signature; used by tests and the local receiver."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)

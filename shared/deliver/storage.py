"""Where outputs go: a local directory, Supabase Storage, or any S3-compatible store.

Every backend takes the same (bucket, key) layout, writes with upsert (a retried job overwrites
its own outputs instead of adding more), and is checked against the bucket's size and type
limits before any byte is sent. Transient failures retry with backoff; a 4xx fails the job with
the store's own message.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, quote, urlparse

import httpx

from shared.decode.presets import Presets
from shared.engine.errors import JobError
from shared.ops.downloads import read_capped
from shared.ops.retry import PermanentError, TransientError, is_transient_status, with_retries
from shared.ops.settings import Settings


class Storage(Protocol):
    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, bucket: str, key: str, max_bytes: int) -> bytes: ...
    def describe(self) -> str: ...
    def check(self) -> str: ...


class BucketPolicy:
    """The bucket limits from configs/presets.toml: size cap and accepted content types."""

    def __init__(self, presets: Presets):
        self.buckets = presets.buckets

    def accepts(self, bucket: str, content_type: str) -> bool:
        spec = self.buckets.get(bucket)
        return spec is None or content_type in spec["mime"]

    def check(self, bucket: str, key: str, size: int, content_type: str) -> None:
        spec = self.buckets.get(bucket)
        if spec is None:
            return
        if content_type not in spec["mime"]:
            raise JobError("upload_rejected", f"bucket {bucket} does not accept {content_type} ({key})")
        limit = int(spec["max_mib"] * 1024 * 1024)
        if size > limit:
            raise JobError(
                "upload_too_large",
                f"{key} is {size / 1048576:.1f} MiB; bucket {bucket} accepts at most {spec['max_mib']} MiB",
            )


def _safe_key(bucket: str, key: str) -> None:
    for part in [bucket, *key.split("/")]:
        if part in ("", ".", "..") or "\\" in part or "\x00" in part:
            raise JobError("invalid_parameter", f"unsafe storage path {bucket}/{key}")


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # no /proc: read it by setting it back at once
    os.umask(current)
    return current


class FileStorage:
    """The embedded default: `DIR/{bucket}/{key}`, the same layout the cloud buckets use."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        # mkstemp makes 0600 files; outputs are for a web server or another user to read, as the
        # umask allows (0644 under the usual 022), like any file the process creates.
        self.file_mode = 0o666 & ~_umask()

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        _safe_key(bucket, key)
        path = self.root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader (or a crash) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, self.file_mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        _safe_key(bucket, key)
        path = self.root / bucket / key
        if not path.is_file():
            raise JobError("reference_error", f"{bucket}/{key} does not exist in {self.describe()}")
        if path.stat().st_size > max_bytes:
            raise JobError("reference_error", f"{bucket}/{key} is larger than {max_bytes} bytes")
        return path.read_bytes()

    def describe(self) -> str:
        return f"file://{self.root}"

    def check(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".doctor-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
        return f"writable directory {self.root.resolve()}"


class SupabaseStorage:
    """Supabase Storage REST: `POST /storage/v1/object/{bucket}/{key}` with `x-upsert: true`."""

    def __init__(self, base_url: str, service_key: str, http: httpx.Client | None = None):
        self.base_url = base_url.rstrip("/")
        self.service_key = service_key
        self.http = http or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.service_key}", "apikey": self.service_key}
        if content_type:
            headers.update({"Content-Type": content_type, "x-upsert": "true", "Cache-Control": "3600"})
        return headers

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        _safe_key(bucket, key)
        url = f"{self.base_url}/storage/v1/object/{quote(bucket)}/{quote(key)}"
        response = self.http.post(url, content=data, headers=self._headers(content_type))
        if response.status_code in (200, 201):
            return
        detail = _error_detail(response)
        if is_transient_status(response.status_code):
            raise TransientError(f"storage answered {response.status_code}: {detail}")
        raise PermanentError(f"storage refused {bucket}/{key} ({response.status_code}): {detail}", response.status_code, detail)

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """An authenticated download (the backend hands us raw keys when URL signing failed)."""
        _safe_key(bucket, key)
        url = f"{self.base_url}/storage/v1/object/authenticated/{quote(bucket)}/{quote(key)}"
        with self.http.stream("GET", url, headers=self._headers()) as response:
            if response.status_code != 200:
                response.read()
                raise JobError("reference_error", f"storage answered {response.status_code} for {bucket}/{key}: "
                               f"{_error_detail(response)}")
            return read_capped(response, max_bytes, f"{bucket}/{key}")

    def describe(self) -> str:
        return f"supabase {self.base_url}"

    def check(self) -> str:
        response = self.http.get(f"{self.base_url}/storage/v1/bucket", headers=self._headers())
        if response.status_code != 200:
            raise RuntimeError(f"storage answered {response.status_code}: {_error_detail(response)}")
        return f"{len(response.json())} buckets visible at {self.base_url}"


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("message") or body.get("error") or body)[:300]
    except ValueError:
        pass
    return response.text[:300]


class S3Storage:
    """Any S3-compatible store: `s3://BUCKET?endpoint=URL&region=R&prefix=P`.

    The contract's bucket becomes the first folder under the prefix; credentials come from the
    usual AWS environment variables. Needs the `s3` extra (boto3).
    """

    def __init__(self, url: str):
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise RuntimeError("STORAGE_URL=s3://… needs the s3 extra: pip install 'ourvidz-workers[s3]'") from exc
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        self.bucket = parsed.netloc
        self.prefix = query.get("prefix", "").strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=query.get("endpoint"),
            region_name=query.get("region"),
            config=Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=60),
        )
        self._client_error = __import__("botocore.exceptions", fromlist=["ClientError"]).ClientError

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        _safe_key(bucket, key)
        object_key = "/".join(p for p in (self.prefix, bucket, key) if p)
        try:
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=data, ContentType=content_type)
        except self._client_error as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = exc.response.get("Error", {}).get("Message", str(exc))
            if is_transient_status(status):
                raise TransientError(f"s3 answered {status}: {message}") from exc
            raise PermanentError(f"s3 refused {object_key} ({status}): {message}", status, message) from exc
        except Exception as exc:  # botocore's connection errors
            raise TransientError(f"s3 unreachable: {exc}") from exc

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        _safe_key(bucket, key)
        object_key = "/".join(p for p in (self.prefix, bucket, key) if p)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=object_key)
        except self._client_error as exc:
            raise JobError("reference_error", f"s3 has no {object_key}: {exc.response.get('Error', {}).get('Message')}") from exc
        if obj["ContentLength"] > max_bytes:
            raise JobError("reference_error", f"{object_key} is {obj['ContentLength']} bytes, the limit is {max_bytes}")
        return obj["Body"].read()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def check(self) -> str:
        self.client.head_bucket(Bucket=self.bucket)
        return f"bucket {self.bucket} reachable"


def make_storage(settings: Settings) -> Storage:
    url = settings.storage_url
    if url.startswith("file://"):
        return FileStorage(url.removeprefix("file://"))
    if url == "supabase":
        if not settings.supabase_url or not settings.supabase_service_key:
            raise ValueError("STORAGE_URL=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        return SupabaseStorage(settings.supabase_url, settings.supabase_service_key.get_secret_value())
    if url.startswith("s3://"):
        return S3Storage(url)
    raise ValueError(f"STORAGE_URL must be file://DIR, supabase or s3://BUCKET, got {url.split('?')[0]!r}")


class Uploader:
    """Limits first, then the upload with retries; turns store errors into job errors."""

    def __init__(self, storage: Storage, policy: BucketPolicy, attempts: int = 5, base_delay: float = 0.5):
        self.storage = storage
        self.policy = policy
        self.attempts = attempts
        self.base_delay = base_delay

    def upload(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self.policy.check(bucket, key, len(data), content_type)
        try:
            with_retries(lambda: self.storage.put(bucket, key, data, content_type), self.attempts, self.base_delay)
        except PermanentError as exc:
            raise JobError("storage_error", str(exc)) from exc
        except (TransientError, httpx.TransportError) as exc:
            raise JobError("storage_unavailable", f"upload of {bucket}/{key} failed: {exc}", retryable=True) from exc

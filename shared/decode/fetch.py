"""Downloading reference images safely: the payload's URL is user-influenced input.

Only http(s) to the hosts allowed by configuration (the Supabase host by default), never to a
private, loopback or link-local address unless allowed, redirects re-checked hop by hop, a byte
cap while streaming, the content sniffed as PNG/JPEG/WEBP whatever the headers say, and a pixel
limit read from the header before anything is decoded. A raw storage key (`user-library/…`,
what the backend sends when URL signing failed) is read through the configured storage.
"""

from __future__ import annotations

import io
import ipaddress
import re
import socket
from typing import Protocol
from urllib.parse import urljoin, urlparse

import httpx
from PIL import Image

from shared.engine.errors import JobError
from shared.ops.downloads import read_capped
from shared.ops.settings import Settings

MAX_REDIRECTS = 3
REFERENCE_BUCKETS = ("user-library", "workspace-temp", "reference_images")  # the backend's bucket names


class ObjectReader(Protocol):
    """What a reference read from the bucket needs of storage (every store in shared/deliver/storage.py)."""

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes: ...


_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def _fail(message: str) -> JobError:
    return JobError("reference_error", message)


def sniff_image_format(data: bytes) -> str | None:
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


class ReferenceFetcher:
    def __init__(self, settings: Settings, storage: ObjectReader | None = None, http: httpx.Client | None = None):
        self.allowed_hosts = settings.allowed_reference_hosts()
        self.allow_private = settings.reference_allow_private
        self.max_bytes = settings.reference_max_bytes
        self.max_pixels = settings.reference_max_pixels
        self.storage = storage
        self.http = http or httpx.Client(timeout=settings.reference_timeout_seconds, follow_redirects=False)

    def fetch_image(self, reference: str) -> Image.Image:
        data = self.fetch_bytes(reference)
        return self.decode(data, _describe(reference))

    def fetch_bytes(self, reference: str) -> bytes:
        if reference.startswith(("http://", "https://")):
            return self._download(reference)
        if "://" in reference:
            raise _fail(f"reference {_describe(reference)} must be an http(s) URL or a storage key")
        bucket, _, key = reference.lstrip("/").partition("/")
        if bucket not in REFERENCE_BUCKETS or not key:
            raise _fail(f"reference {_describe(reference)} is neither a URL nor a key in {', '.join(REFERENCE_BUCKETS)}")
        if self.storage is None:
            raise _fail("reference is a storage key but no storage is configured")
        return self.storage.get(bucket, key, self.max_bytes)

    # ------------------------------------------------------------------------ checks

    def check_url(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise _fail(f"reference {_describe(url)} is not an http(s) URL")
        host = parsed.hostname.lower()
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise _fail(f"reference {_describe(url)} has an invalid port") from None
        if "*" not in self.allowed_hosts and not any(host_allowed(entry, host, port) for entry in self.allowed_hosts):
            where = f"{host}:{port}" if parsed.port else host
            raise _fail(f"reference host {where} is not allowed (REFERENCE_ALLOWED_HOSTS)")
        if self.allow_private:
            return
        try:
            infos = socket.getaddrinfo(host, port)
        except socket.gaierror as exc:
            raise _fail(f"reference host {host} does not resolve") from exc
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if not address.is_global or address.is_multicast:
                raise _fail(f"reference host {host} resolves to a non-public address ({address})")

    def _download(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            self.check_url(url)
            try:
                with self.http.stream("GET", url) as response:
                    if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise _fail(f"reference download answered {response.status_code} ({_describe(url)})")
                    return read_capped(response, self.max_bytes, f"reference {_describe(url)}")
            except httpx.HTTPError as exc:
                raise JobError("reference_error", f"reference download failed: {type(exc).__name__}",
                               retryable=True) from exc
        raise _fail(f"reference redirected more than {MAX_REDIRECTS} times")

    def decode(self, data: bytes, what: str = "reference") -> Image.Image:
        kind = sniff_image_format(data)
        if kind is None:
            raise _fail(f"{what} is not a PNG, JPEG or WEBP image")
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # header only: nothing decoded yet
            if width * height > self.max_pixels:
                raise _fail(f"{what} is {width}x{height}, more than {self.max_pixels} pixels")
            image.load()
        except JobError:
            raise
        except Exception as exc:
            raise _fail(f"{what} is a damaged {kind} image") from exc
        return image.convert("RGB")


def host_allowed(entry: str, host: str, port: int) -> bool:
    """One REFERENCE_ALLOWED_HOSTS entry against a URL's host and (effective) port.

    `example.com` and `*.example.com` allow any port; `example.com:8443`, `127.0.0.1:54321` and
    `[::1]:8080` allow that port only.
    """
    name, wanted_port = entry, None
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+):(\d+)", entry)
    if match:
        name = match[1] or match[3]
        wanted_port = match[2] or match[4]
    if wanted_port is not None and int(wanted_port) != port:
        return False
    return host == name or (name.startswith("*.") and host.endswith(name[1:]))


def _describe(reference: str) -> str:
    """A reference as it may appear in errors and logs: signed URLs lose their token."""
    parsed = urlparse(reference)
    if parsed.scheme in ("http", "https"):
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{parsed.hostname}{port}{parsed.path[:120]}"
    return reference[:120]

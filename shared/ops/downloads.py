"""Reading a remote body within a byte limit: a declared length over it is refused before reading,
an undeclared one is counted as it streams (a reference, an object read back from storage)."""

from __future__ import annotations

import httpx

from shared.engine.errors import JobError


def read_capped(response: httpx.Response, max_bytes: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise JobError("reference_error", f"{what} is {int(declared)} bytes, the limit is {max_bytes}")
    chunks, total = [], 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise JobError("reference_error", f"{what} is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

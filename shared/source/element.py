"""What a queue element is to a source: its era, its size bound, its wrapping, and the job id it carries.

A source never interprets a payload (shared/decode/ does), but it must unwrap an element to read
its job id: to report an element that cannot be read under that id, to cancel a queued job, to
list dead letters. The element is read within bounds (shared/ops/bounded_json.py).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from shared.engine.errors import BadPayload
from shared.ops import bounded_json

Era = Literal["v1", "v2"]
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ID_FIELDS = ("id", "job_id", "jobId")
# Real elements are a few KiB (prompts are capped at 10,000 characters); this leaves room for any of them.
MAX_ELEMENT_BYTES = 1024 * 1024


def decode_element(raw: str | bytes | dict | list) -> dict[str, Any]:
    """One queue element → the payload object, whatever wrapping the backend's era used.

    Read within bounds (shared/ops/bounded_json.py: size, depth, number length); an element that
    cannot be read raises `BadPayload` carrying the job id whenever its top level names one.
    """
    if isinstance(raw, str | bytes) and len(raw) > MAX_ELEMENT_BYTES:
        raise BadPayload(f"payload is {len(raw)} bytes, the limit is {MAX_ELEMENT_BYTES}", element_job_id(raw),
                         error_type="bad_payload")
    if isinstance(raw, str) and not _is_utf8(raw):  # bytes that were not UTF-8, as the Redis client hands them over
        raise BadPayload("payload is not UTF-8 text", element_job_id(raw), error_type="bad_payload")
    value: Any = raw
    for _ in range(4):  # text → array → text → object is the deepest real wrapping
        if isinstance(value, str | bytes):
            try:
                value = bounded_json.loads(value)
            except bounded_json.JsonRefused as exc:
                raise BadPayload(f"payload is {exc}" if str(exc).startswith("not ") else f"payload: {exc}",
                                 element_job_id(raw), error_type="bad_payload") from None
            continue
        if isinstance(value, list):
            if len(value) != 1:
                raise BadPayload(f"payload is an array of {len(value)} elements, expected one", error_type="bad_payload")
            value = value[0]
            continue
        break
    if not isinstance(value, dict):
        raise BadPayload(f"payload is a JSON {type(value).__name__}, expected an object", error_type="bad_payload")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def peek_job_id(payload: dict[str, Any]) -> str | None:
    """The job id, if one that is safe to send back can be read at all."""
    for key in ID_FIELDS:
        value = payload.get(key)
        if isinstance(value, str) and SAFE_ID.match(value):
            return value
    return None


def element_job_id(raw: Any) -> str | None:
    """The job id a queue element carries at its top level, read even when the element as a whole
    cannot be (too deep, too long, broken): the id its failure is reported under, or None."""
    if isinstance(raw, dict):
        return peek_job_id(raw)
    if not isinstance(raw, str | bytes):
        return None
    return bounded_json.top_level_string(raw, ID_FIELDS, lambda value: bool(SAFE_ID.match(value)))

"""The one reader of numbers from payloads and request bodies.

A number from outside is refused with a reason, never converted into a surprise: booleans,
non-finite values (`NaN`, `Infinity`, `1e400`), text longer than any real number, fractions where
a whole number belongs, and anything outside the field's range. Big integers are compared as
integers (never through a float, which overflows past 1e308). Callers turn `NumberRefused` into
their own error (a job's `invalid_parameter`, a request's 400); the ranges themselves live with
the callers (configs/presets.toml for jobs, workers/chat/service.py for chat), listed in docs/configuration.md.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_TEXT_CHARS = 40  # "9007199254740991" is 16; nothing longer is a number anyone means
_INTEGER_TEXT = re.compile(r"[+-]?\d+")


class NumberRefused(ValueError):
    """A value that is not an acceptable number for its field; the message says why."""


def shown(value: Any) -> str:
    """A value as an error message may quote it: short, whatever its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_number(name: str, value: Any, *, whole: bool = False, low: float | None = None,
                high: float | None = None, text_ok: bool = True) -> int | float:
    """`value` as a finite number (an int when `whole`) within [low, high], or `NumberRefused`.

    `text_ok`: numbers written as text ("12", "0.5") are accepted, as the queue's payloads send them.
    """
    number = value
    if isinstance(value, str) and text_ok:
        text = value.strip()
        if len(text) > MAX_TEXT_CHARS:
            raise NumberRefused(f"{name} must be a number, got text {len(text)} characters long")
        try:
            number = int(text) if _INTEGER_TEXT.fullmatch(text) else float(text)
        except ValueError:
            raise NumberRefused(f"{name} must be a number, got {shown(value)}") from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise NumberRefused(f"{name} must be a number, got {shown(value)}")
    if isinstance(number, float):
        if not math.isfinite(number):
            raise NumberRefused(f"{name} must be a finite number, got {shown(value)}")
        if whole:
            if not number.is_integer():
                raise NumberRefused(f"{name} must be a whole number, got {shown(value)}")
            number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        raise NumberRefused(f"{name}={shown(value)} is outside [{low}, {high}]")
    return number

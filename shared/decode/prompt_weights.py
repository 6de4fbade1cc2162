"""The payload's `compel_weights`, turned into text that Compel reads, and joined to the prompt.

The replaced SDXL worker appended the weights string to the prompt (`f"{prompt} {weights}"`) and
encoded the result with Compel; this does the same. The backend writes weights in the A1111 form
`(masterpiece:1.2)`, which Compel's grammar does not know (it would keep `:1 . 2` as words), so
that form is rewritten to Compel's `(masterpiece)1.2`. A JSON object of term → weight (the shape
of the backend's `compel_weights` column) and a list of terms are accepted as well.
"""

from __future__ import annotations

import re
from typing import Any

from shared.ops import bounded_json
from shared.ops.numbers import NumberRefused, read_number

# `(some words:1.25)`: no nested parentheses inside, a signed decimal weight after the colon
_A1111_WEIGHT = re.compile(r"\(\s*([^():]+?)\s*:\s*([+-]?\d+(?:\.\d+)?)\s*\)")
MAX_WEIGHTS_CHARS = 4000
WEIGHT_RANGE = (-10.0, 10.0)  # Compel multiplies embeddings by these; past ±10 an image is noise


class WeightsError(ValueError):
    """`compel_weights` is present but cannot be read as weights."""


def _format_weight(value: Any, term: str, text_ok: bool = False) -> str:
    try:
        weight = read_number(f"compel_weights: the weight of {term[:40]!r}", value, low=WEIGHT_RANGE[0],
                             high=WEIGHT_RANGE[1], text_ok=text_ok)
    except NumberRefused as exc:
        raise WeightsError(str(exc)) from None
    return f"{float(weight):g}"


def normalize_weights(value: Any) -> str | None:
    """`compel_weights` as Compel syntax, or None when there are none."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") or text.startswith("["):
            try:  # the JSON text of an object or list: some backend paths double-encode
                return normalize_weights(bounded_json.loads(text, max_bytes=MAX_WEIGHTS_CHARS))
            except bounded_json.JsonRefused:
                pass  # a prompt fragment that merely starts with a bracket
        if len(text) > MAX_WEIGHTS_CHARS:
            raise WeightsError(f"compel_weights is {len(text)} characters, the limit is {MAX_WEIGHTS_CHARS}")
        return _A1111_WEIGHT.sub(lambda m: f"({m[1]}){_format_weight(m[2], m[1], text_ok=True)}", text) or None
    if isinstance(value, dict):
        parts = [f"({str(term).strip()}){_format_weight(weight, str(term))}" for term, weight in value.items()
                 if str(term).strip()]
        return normalize_weights(", ".join(parts)) if parts else None
    if isinstance(value, list):
        parts = [normalize_weights(item) for item in value]
        return normalize_weights(", ".join(p for p in parts if p)) if any(parts) else None
    raise WeightsError(f"compel_weights must be text, an object of term to weight, or a list, "
                       f"got a {type(value).__name__}")


def weighted_prompt(prompt: str, weights: str | None) -> str:
    """The text Compel encodes: the prompt, then the weights, joined by a space."""
    return " ".join(part for part in (prompt.strip(), weights or "") if part)

"""JSON from strangers, read within bounds: size, nesting depth and number length checked first.

Python's `json.loads` recurses once per nesting level (10,000 levels raise `RecursionError`),
refuses integer literals past 4,300 digits with a plain `ValueError`, and takes `1e400` as
infinity. Queue elements and HTTP bodies are read here instead, so every one of those cases is a
`JsonRefused` saying what is wrong, raised before the parser can recurse: the depth is counted by
a linear scan that skips string contents.

`top_level_string` reads one field (the job id) from text that could not be parsed: a payload
at fault still gets its failed callback under its own id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MAX_DEPTH = 32  # real payloads and chat bodies nest 3 to 5 levels
MAX_NUMBER_CHARS = 100  # a literal longer than this is no seed, size or weight anyone means

# A JSON string literal (escapes included), written so the regex engine never backtracks.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the JSON escape of any surrogate, paired or not
_SURROGATE = re.compile("[\ud800-\udfff]")  # what json.loads leaves of a lone one
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')


class JsonRefused(ValueError):
    """Text that is not read: too large, too deep, a number too long, or not JSON at all."""


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text`, string contents aside (linear, no recursion)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _number_literal(kind):
    def parse(literal: str):
        if len(literal) > MAX_NUMBER_CHARS:
            raise JsonRefused(f"a number {len(literal)} characters long (the limit is {MAX_NUMBER_CHARS})")
        return kind(literal)
    return parse


def loads(text: str | bytes, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` with its surprises turned into `JsonRefused` (see the module doc)."""
    if max_bytes is not None and len(text) > max_bytes:
        raise JsonRefused(f"{len(text)} bytes, the limit is {max_bytes}")
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonRefused("not UTF-8 text") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JsonRefused(f"nested {depth} levels deep, the limit is {max_depth}")
    try:
        value = json.loads(text, parse_int=_number_literal(int), parse_float=_number_literal(float))
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:  # a deep stack already in use; the depth bound makes this unreachable otherwise
        raise JsonRefused(f"nested too deep to read (limit {max_depth})") from None
    return _whole_text(value) if _SURROGATE_ESCAPE.search(text) else value


def _whole_text(value: Any) -> Any:
    """Strings with lone surrogates made whole: `"\\ud83d"` with no partner (a JavaScript string cut
    mid-emoji spells it so) is no Unicode text, and would fail wherever it is encoded later (a
    callback, a reply), so each becomes U+FFFD. Depth is already bounded here."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_whole_text(item) for item in value]
    if isinstance(value, dict):
        return {_whole_text(key): _whole_text(item) for key, item in value.items()}
    return value


def top_level_string(text: str | bytes, names: Iterable[str], accept) -> str | None:
    """The first of `names` whose string value at the top level of the object in `text` passes
    `accept`, read without parsing the whole text (it may be too deep, too long or broken).

    Follows the wrappings queue elements come in: the object, a JSON string holding it, or an
    array whose first element is either. Values nested inside other values are never taken.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    for _ in range(4):
        text = text.lstrip()
        if text.startswith('"'):
            literal = _STRING.match(text)
            if literal is None:
                return None
            try:
                text = json.loads(literal.group())  # one flat string: nothing to recurse into
            except ValueError:
                return None
        elif text.startswith("["):
            text = text[1:]
        else:
            break
    if not text.startswith("{"):
        return None
    found: dict[str, str] = {}
    depth, recent = 0, []
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
            if depth == 0:
                break
        elif depth == 1:
            recent = (recent + [token])[-3:]
            key, colon, value = ([None] * 3 + recent)[-3:]
            if colon == ":" and _quoted(key) and _quoted(value):
                found[_text(key)] = _text(value)  # a later repeat wins, as json.loads has it
            continue
        recent = []  # a nested value sits between this key and whatever comes next
    for name in names:
        value = found.get(name)
        if value is not None and accept(value):
            return value
    return None


def _quoted(token: str | None) -> bool:
    return token is not None and token.startswith('"')


def _text(literal: str) -> str | None:
    try:
        return json.loads(literal)
    except ValueError:
        return None

"""Hostile inputs, generated: queue elements of both eras and chat request bodies (Hypothesis strategies).

A generated element remembers the job id it carries at its top level (None when it carries
none), so a test can check where its answer went without trusting the parser under test.
Values JSON cannot spell from Python (a 5,000-digit literal, `Infinity`, 10,000 brackets) are
written into the element's text as they are, where a `Raw` stands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.backend_payloads import build_payload

JOB_TYPES = ("sdxl_image_fast", "sdxl_image_high", "image_fast", "video_fast")


@dataclass(frozen=True)
class Raw:
    """Text that goes into a JSON document as it is."""

    text: str


def dumps(value) -> str:
    """`json.dumps`, with every `Raw` in `value` written out verbatim."""
    raws: list[str] = []

    def mark(v):
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"\u0000raw{len(raws) - 1}\u0000"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    text = json.dumps(mark(value))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\u0000raw{i}\u0000"), raw, 1)
    return text


def deep(depth: int, kind: str) -> Raw:
    return Raw("[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth)


hostile_values = st.one_of(
    st.builds(deep, st.integers(33, 12_000), st.sampled_from(["array", "object"])),
    st.builds(lambda n, sign: Raw(sign + "9" * n), st.integers(20, 6_000), st.sampled_from(["", "-"])),
    st.sampled_from([Raw("Infinity"), Raw("-Infinity"), Raw("NaN"), Raw("1e400"), Raw("-1e400"), Raw("1e-400")]),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["Infinity", "NaN", "1e400", "-1", "12", "0x10", " 7 ", "9" * 60]),
    st.sampled_from(["a fox \ud83d", "\udc00 half an emoji", "\u0000 nul"]),  # lone surrogates: no Unicode text
    st.booleans(), st.none(), st.text(max_size=30),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(lambda n: "x" * n, st.integers(10_001, 30_000)),
    st.builds(lambda w: Raw(json.dumps({"red": 1}).replace("1", w)), st.sampled_from(["1" + "0" * 400, "1e400", "NaN"])),
)

FIELDS = [
    ("seed",), ("num_images",), ("prompt",), ("negative_prompt",), ("compel_weights",), ("compel_enabled",),
    ("quality",), ("type",), ("user_id",), ("config",), ("metadata",), ("junk",),
    ("config", "seed"), ("config", "num_inference_steps"), ("config", "guidance_scale"), ("config", "width"),
    ("config", "height"), ("config", "resolution"), ("config", "size"), ("config", "frame_num"),
    ("config", "num_images"), ("config", "denoise_strength"), ("config", "sample_shift"), ("config", "fps"),
    ("config", "scheduler"), ("config", "junk"), ("metadata", "reference_strength"),
    ("metadata", "denoise_strength"), ("metadata", "seed"), ("metadata", "compel_weights"), ("metadata", "junk"),
]

ID_FATES = ["kept"] * 6 + ["removed", "unsafe", "number", "too long", "deep"]


@dataclass(frozen=True)
class Element:
    text: str  # bytes that are not UTF-8 appear as lone surrogates, as the worker's Redis client reads them
    job_id: str | None  # the id its top level carries, or None
    era: str
    queue: str

    @property
    def data(self) -> bytes:
        """The element as stored in Redis."""
        return self.text.encode("utf-8", "surrogateescape")


@st.composite
def elements(draw, era: str, job_id: str):
    """One queue element of `era` for job `job_id`, hostile in one to three places."""
    job_type = draw(st.sampled_from(JOB_TYPES))
    payload = build_payload(era, job_type, "a red fox", job_id=job_id, width=64, height=64, steps=2,
                            frames=1 if "video" in job_type else None)
    id_keys = [k for k in ("id", "job_id") if k in payload]
    payload = {**{k: payload[k] for k in id_keys}, **{k: v for k, v in payload.items() if k not in id_keys}}
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        target = payload
        for part in field[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[field[-1]] = draw(hostile_values)
    fate = draw(st.sampled_from(ID_FATES))
    carried = job_id if fate == "kept" else None
    for key in id_keys:
        payload[key] = {"kept": job_id, "unsafe": "../" + job_id, "number": 12345, "too long": "a" * 200,
                        "deep": deep(5, "array")}.get(fate, job_id)
        if fate == "removed":
            del payload[key]
    text = dumps(payload)
    damage = draw(st.sampled_from(["none"] * 4 + ["truncated", "junk after", "double-encoded", "not UTF-8"]))
    after_id = text.index(json.dumps(job_id)) + len(json.dumps(job_id)) if carried is not None else 0
    if damage == "truncated" and carried is not None:
        text = text[:draw(st.integers(after_id, len(text) - 1))]
    elif damage == "not UTF-8":  # a byte that is not UTF-8 (0xff), as a surrogate: see `Element.data`
        at = draw(st.integers(after_id, len(text)))
        text = text[:at] + "\udcff" + text[at:]
    elif damage == "junk after":
        text += draw(st.sampled_from(["}", "]]]", ",", "xyz", "\u0000"]))
    elif damage == "double-encoded":
        text = json.dumps(text)
    if era == "v2":
        text = json.dumps([text])
    from shared.source.keys import queue_for_type

    return Element(text=text, job_id=carried, era=era, queue=queue_for_type(job_type))


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

CHAT_FIELDS = ["messages", "message", "prompt", "inputs", "max_tokens", "temperature", "top_p", "seed",
               "repetition_penalty", "presence_penalty", "conversation_history", "system_prompt", "parameters",
               "model", "stream", "n", "stop", "max_completion_tokens", "ignore_eos", "job_type"]


@st.composite
def chat_bodies(draw) -> bytes:
    """A request body for any chat route: an honest base with hostile fields, or no JSON at all."""
    shape = draw(st.sampled_from(["fields", "fields", "fields", "deep", "number", "garbage", "json"]))
    if shape == "deep":
        return dumps({"messages": deep(draw(st.integers(33, 5_000)), draw(st.sampled_from(["array", "object"])))}).encode()
    if shape == "number":
        return f'{{"message": "hi", "max_tokens": {"9" * draw(st.integers(20, 6_000))}}}'.encode()
    if shape == "garbage":
        return draw(st.binary(max_size=200))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    body = {"messages": [{"role": "user", "content": "hello"}], "message": "hello", "prompt": "a cat", "max_tokens": 4}
    for field in draw(st.lists(st.sampled_from(CHAT_FIELDS), min_size=1, max_size=3)):
        body[field] = draw(st.one_of(hostile_values, json_values))
    return dumps(body).encode()

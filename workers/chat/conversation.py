"""Requests in either backend shape → chat messages that fit the model's context.

v2 sends `messages: [{role, content}]`; v1 sends `message`, `system_prompt` and
`conversation_history: [{sender, content}]`. When the conversation is longer than the context
allows, the oldest turns go first: the system prompt and the newest turn always stay (the
replaced worker cut the newest).
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


class BadRequest(ValueError):
    """A request the API answers with 400 and this message."""


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def messages_from_request(body: dict[str, Any]) -> list[dict[str, str]]:
    if isinstance(body.get("messages"), list):
        messages = []
        for i, m in enumerate(body["messages"]):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise BadRequest(f"messages[{i}] needs a role of system, user or assistant")
            messages.append({"role": m["role"], "content": _text(m.get("content", ""), f"messages[{i}].content")})
        if not messages:
            raise BadRequest("messages is empty")
        return messages
    if "message" in body:
        messages = []
        if body.get("system_prompt"):
            messages.append({"role": "system", "content": _text(body["system_prompt"], "system_prompt")})
        history = body.get("conversation_history") or []
        if not isinstance(history, list):
            raise BadRequest("conversation_history must be a list")
        for i, turn in enumerate(history):
            if not isinstance(turn, dict):
                raise BadRequest(f"conversation_history[{i}] must be an object")
            role = "user" if turn.get("sender") == "user" else "assistant"
            messages.append({"role": role, "content": _text(turn.get("content", ""), f"conversation_history[{i}].content")})
        messages.append({"role": "user", "content": _text(body["message"], "message")})
        return messages
    raise BadRequest("send `messages` (a list of {role, content}) or `message`")


def fit_to_context(messages: list[dict[str, str]], count_tokens, budget: int) -> tuple[list[dict[str, str]], int]:
    """Drop the oldest non-system turns until the prompt fits `budget` tokens. Returns (kept, dropped)."""
    system = [m for m in messages if m["role"] == "system"][:1]
    turns = [m for m in messages if m not in system]
    dropped = 0
    while len(turns) > 1 and count_tokens(system + turns) > budget:
        turns.pop(0)
        dropped += 1
    kept = system + turns
    if count_tokens(kept) > budget:
        raise BadRequest(f"the system prompt and newest message alone are longer than the {budget}-token context")
    return kept, dropped

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


def messages_from_request(body: dict[str, Any], max_messages: int | None = None) -> list[dict[str, str]]:
    given = body.get("messages") if isinstance(body.get("messages"), list) else body.get("conversation_history")
    if max_messages is not None and isinstance(given, list) and len(given) > max_messages:
        raise BadRequest(f"{len(given)} messages, the limit is {max_messages} (CHAT_MAX_MESSAGES)")
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
    if "prompt" in body:  # the 2025-08 roleplay-chat: one text already holding the character and the history
        prompt = _text(body["prompt"], "prompt")
        if not prompt.strip():
            raise BadRequest("prompt is empty")
        return [{"role": "user", "content": prompt}]
    raise BadRequest("send `messages` (a list of {role, content}), `message` or `prompt`")


def fit_to_context(messages: list[dict[str, str]], count_tokens, budget: int, count_text=None,
                   stop=None) -> tuple[list[dict[str, str]], int]:
    """Drop the oldest non-system turns until the prompt fits `budget` tokens. Returns (kept, dropped).

    Linear in what is kept, never in what is dropped: turns are measured one at a time from the
    newest (`count_text`, the tokens of one text) until the estimate passes the budget, so the
    oldest turns of a long conversation are never tokenized. The estimate (each turn's tokens plus
    the template's per-turn overhead) is then checked with exact counts of the kept prompt, which
    drop one more turn each while it is still too long (rare: merges across the template's seams).
    `stop()`, polled between turns, ends the work when the caller is gone or out of time.
    """
    count_text = count_text or (lambda text: count_tokens([{"role": "user", "content": text}]))
    system = [m for m in messages if m["role"] == "system"][:1]
    turns = [m for m in messages if m not in system]
    blank = {"role": "user", "content": ""}
    overhead = count_tokens(system + [blank, blank]) - count_tokens(system + [blank])
    spent = count_tokens(system + [blank]) - overhead  # the system prompt and the reply's opening
    first, costs = len(turns), {}  # turns[first:] are kept; costs: their estimated tokens
    while first > 0:
        if stop is not None and stop():
            raise TimeoutError("the request ended while its conversation was being fitted")
        cost = overhead + count_text(turns[first - 1]["content"])
        newest = first == len(turns)
        if spent + cost > budget and (not newest or spent + cost > 2 * budget):
            if newest:  # far too long on its own: no exact count of a megabyte to say so
                raise BadRequest(f"the newest message alone is longer than the {budget}-token context")
            break
        spent, first, costs[first - 1] = spent + cost, first - 1, cost
    while True:
        kept = system + turns[first:]
        excess = count_tokens(kept) - budget
        if excess <= 0:
            return kept, first
        if first >= len(turns) - 1:
            raise BadRequest(f"the system prompt and newest message alone are longer than the {budget}-token context")
        dropped = 0  # the estimate was short: drop at least the excess, by the estimates, then count again
        while dropped < excess and first < len(turns) - 1:
            dropped, first = dropped + costs[first], first + 1

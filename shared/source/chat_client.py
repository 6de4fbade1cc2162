"""Asking the chat worker for something through Redis: a request/reply job on chat_queue.

The WAN worker rewrites `*_enhanced` prompts this way. The request carries a reply key; the chat
worker pushes its answer there; the caller waits on it with a timeout and, on timeout, takes
its request back out of the queue so nobody works on an answer no one will read.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from shared.source import keys
from shared.source.admin import remove_queued
from shared.source.element import Era
from shared.source.producer import push_raw
from shared.source.queue import longest_block


def request_reply(client: redis.Redis, era: Era, kind: str, body: dict[str, Any], timeout: float = 30.0) -> dict | None:
    """Send a `chat` or `enhance` request; the reply dict, or None if none came within `timeout`."""
    request_id = uuid.uuid4().hex
    reply_key = keys.reply(request_id)
    payload = {**body, "id": request_id, "type": kind, "reply_to": reply_key, "created_at": time.time(),
               "timeout": timeout}
    element = json.dumps(payload)
    push_raw(client, era, keys.CHAT_QUEUE, element)
    answer = _wait_for_reply(client, reply_key, timeout)
    if answer is None:
        remove_queued(client, keys.CHAT_QUEUE, request_id)
        return None
    client.delete(reply_key)
    return json.loads(answer[1])


def _wait_for_reply(client: redis.Redis, reply_key: str, timeout: float):
    """BLPOP on the reply key for `timeout` seconds in all, in waits the client's socket allows."""
    deadline = time.monotonic() + timeout
    step = longest_block(client)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        answer = client.blpop([reply_key], timeout=max(0.01, min(remaining, step)))
        if answer is not None:
            return answer


def request_enhancement(client: redis.Redis, era: Era, prompt: str, job_type: str, timeout: float = 30.0) -> str | None:
    """The enhanced prompt, or None (timeout or error): the caller then uses the original."""
    reply = request_reply(client, era, "enhance", {"prompt": prompt, "job_type": job_type}, timeout)
    if not reply or not reply.get("success"):
        return None
    return reply.get("enhanced_prompt") or None

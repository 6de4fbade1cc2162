"""Operator-side helpers for `ourvidz-worker queue|dlq|cancel`: look into the queues, fix what is stuck.

Unlike the worker's queue source, these may read payloads (to find a job by its id).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import redis

from shared.engine.errors import BadPayload
from shared.source import keys
from shared.source.element import Era, decode_element, peek_job_id
from shared.source.producer import push_raw
from shared.source.queue import element_key


def job_id_of(raw: str) -> str | None:
    """The job id in a queue element, if one can be read."""
    try:
        return peek_job_id(decode_element(raw))
    except BadPayload as exc:  # unreadable as a whole: the id its top level carries, as the worker reads it
        return exc.job_id
    except Exception:  # an element no rule names has no id to match
        return None


def remove_queued(client: redis.Redis, queue: str, job_id: str) -> str | None:
    """Take a not-yet-claimed job out of a queue; returns its element, or None if it is not there."""
    for raw in client.lrange(queue, 0, -1):
        if job_id_of(raw) == job_id and client.lrem(queue, 1, raw):
            return raw
    return None


def find_in_flight(client: redis.Redis, job_id: str) -> tuple[str, bool] | None:
    """The worker holding this job (claimed, running or being delivered), from the registry, and
    whether the job is on its engine now; None if no worker holds it."""
    for worker, queues in client.hgetall(keys.WORKER_QUEUES).items():
        for queue in json.loads(queues or "[]"):
            for raw in client.lrange(keys.processing(worker, queue), 0, -1):
                if job_id_of(raw) == job_id:
                    return worker, bool(client.sismember(keys.running(worker), element_key(raw)))
    return None


def element_age(raw: str | None, now: float | None = None) -> float | None:
    """Seconds since a queue element's `created_at` (the backend's timestamp): 0 for no element,
    None when it carries no usable timestamp."""
    if raw is None:
        return 0.0
    try:
        created = str(decode_element(raw).get("created_at"))
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except Exception:  # no usable timestamp: no age to report
        return None
    if stamp.tzinfo is None:
        return None
    return max(0.0, (now or time.time()) - stamp.timestamp())


def dead_letters(client: redis.Redis, start: int = 0, end: int = -1) -> list[dict[str, Any]]:
    return [json.loads(r) for r in client.lrange(keys.DEAD_LETTER, start, end)]


def drop_dead_letters(client: redis.Redis, job_ids: list[str] | None = None) -> list[str | None]:
    """Remove dead-lettered jobs for good (these ids, or all of them when None); their attempt
    counts go with them. Returns the job ids of those removed (None for an element without one)."""
    dropped = []
    for record_text in client.lrange(keys.DEAD_LETTER, 0, -1):
        record = json.loads(record_text)
        if job_ids is not None and record.get("job_id") not in job_ids:
            continue
        pipe = client.pipeline(transaction=True)
        pipe.lrem(keys.DEAD_LETTER, 1, record_text)
        pipe.hdel(keys.ATTEMPTS, element_key(record["raw"]))
        if pipe.execute()[0]:
            dropped.append(record.get("job_id"))
    return dropped


def requeue_dead_letter(client: redis.Redis, era: Era, job_id: str | None = None) -> int:
    """Put dead-lettered jobs (one, or all when job_id is None) back on their queues, attempts reset."""
    moved = 0
    for record_text in client.lrange(keys.DEAD_LETTER, 0, -1):
        record = json.loads(record_text)
        if job_id is not None and record.get("job_id") != job_id:
            continue
        pipe = client.pipeline(transaction=True)
        pipe.lrem(keys.DEAD_LETTER, 1, record_text)
        push_raw(pipe, era, record["queue"], record["raw"])
        pipe.hdel(keys.ATTEMPTS, element_key(record["raw"]))
        if record.get("job_id"):
            pipe.delete(keys.result(record["job_id"]))
        removed = pipe.execute()[0]
        moved += int(bool(removed))
    return moved


def queue_report(client: redis.Redis, queues: tuple[str, ...]) -> dict[str, Any]:
    """Queue depths, jobs in flight per worker (from the registry, never a SCAN), and what is stuck."""
    now = time.time()
    leases = dict(client.zrange(keys.LEASES, 0, -1, withscores=True))
    registry = client.hgetall(keys.WORKER_QUEUES)
    workers = sorted(set(leases) | set(registry))
    in_flight = {w: sum(client.llen(keys.processing(w, q)) for q in json.loads(registry.get(w) or "[]"))
                 for w in workers}
    return {
        "queues": {q: client.llen(q) for q in queues},
        "in_flight": in_flight,
        "workers_alive": {w: leases.get(w, 0) > now for w in workers},
        "dead_letters": client.llen(keys.DEAD_LETTER),
        "outbox": client.zcard(keys.OUTBOX) + sum(client.zcard(keys.outbox_sending(w)) for w in workers),
        "callbacks_rejected": client.llen(keys.CALLBACK_REJECTED),
    }

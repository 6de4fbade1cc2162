"""At-least-once job queue on plain Redis lists: no job is ever lost.

- claim: `BLMOVE` from the backend's queue (from the end that makes the era FIFO) into this
  worker's processing list, so a job is always in exactly one list.
- lease: a key with an expiry that the heartbeat renews; while it exists the worker is alive.
- reap: any worker moves the processing lists of a worker whose lease has expired back to the
  queue (a crash, kill -9, a lost pod).
- attempts: counted per job at claim; past MAX_ATTEMPTS the job is dead-lettered.
- finish: the job leaves its processing list in the same transaction that records its result
  (and, if the callback could not be delivered yet, hands the callback to the outbox).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from shared import keys
from shared.contract import Era, decode_element, peek_job_id


def pop_end(era: Era) -> str:
    """v1 LPUSHes, so its oldest job is on the right; v2 RPUSHes, so its oldest is on the left."""
    return "RIGHT" if era == "v1" else "LEFT"


def push_end(era: Era) -> str:
    return "LEFT" if era == "v1" else "RIGHT"


def job_key_of(raw: str) -> str:
    """The id attempts are counted under: the job id, or a digest when the payload has none."""
    try:
        job_id = peek_job_id(decode_element(raw))
    except Exception:  # unparseable payloads are still counted, by content
        job_id = None
    return job_id or "raw:" + hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class Claimed:
    """A queue element this worker holds: exactly as it was stored, and where it is held."""

    raw: str
    queue: str
    processing_key: str
    attempt_key: str
    attempts: int
    claimed_at: float


SOCKET_TIMEOUT = 15.0  # seconds; every blocking command waits less than its client's socket timeout


def connect(url: str, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A client whose socket timeout is set here, not left to the library's default (redis-py 8: 5 s)."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, socket_keepalive=True,
                                socket_timeout=socket_timeout, socket_connect_timeout=min(socket_timeout, 10.0))


def socket_timeout_of(client: redis.Redis) -> float | None:
    """The client's socket timeout: what it was given, else its connection class's default."""
    pool = client.connection_pool
    if "socket_timeout" in pool.connection_kwargs:
        return pool.connection_kwargs["socket_timeout"]
    # Ask an unconnected connection built like the pool's (no socket is opened).
    return getattr(pool.connection_class(**pool.connection_kwargs), "socket_timeout", None)


def longest_block(client: redis.Redis) -> float:
    """How long one blocking command (BLMOVE, BLPOP) may wait on this client.

    A blocking command that waits past the socket timeout raises `TimeoutError` instead of
    returning empty-handed, so a longer wait is made of several shorter ones.
    """
    timeout = socket_timeout_of(client)
    return float("inf") if not timeout else max(0.05, timeout * 0.8)


class JobQueue:
    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        queues: tuple[str, ...] | list[str],
        era: Era = "v1",
        lease_seconds: float = 30.0,
        max_attempts: int = 3,
    ):
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.redis = client
        self.worker_id = worker_id
        self.queues = tuple(queues)
        self.era = era
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._rotation = 0

    # ------------------------------------------------------------------- life of a worker

    def register(self) -> int:
        """Take the lease, then return to the queue anything a previous run under this id held."""
        self.heartbeat()
        return self.reap_worker(self.worker_id)

    def heartbeat(self) -> None:
        pipe = self.redis.pipeline()
        pipe.set(keys.lease(self.worker_id), str(time.time()), px=int(self.lease_seconds * 1000))
        # Re-added every beat: a worker that was briefly presumed dead becomes visible again.
        pipe.sadd(keys.WORKERS, self.worker_id)
        pipe.execute()

    def deregister(self) -> None:
        """Clean exit: nothing is held any more, so the worker need not be watched."""
        if any(self.redis.llen(keys.processing(self.worker_id, q)) for q in self.queues):
            return  # keep the lease record; a reaper returns what is left once it expires
        pipe = self.redis.pipeline()
        pipe.srem(keys.WORKERS, self.worker_id)
        pipe.delete(keys.lease(self.worker_id))
        pipe.execute()

    def reap_dead_workers(self) -> int:
        """Return the jobs of every worker whose lease has expired to their queues."""
        returned = 0
        for worker in self.redis.smembers(keys.WORKERS):
            if worker == self.worker_id or self.redis.exists(keys.lease(worker)):
                continue
            returned += self.reap_worker(worker)
            if not any(self.redis.exists(k) for k in self._processing_keys_of(worker)):
                self.redis.srem(keys.WORKERS, worker)
        return returned

    def _processing_keys_of(self, worker: str) -> list[str]:
        return list(self.redis.scan_iter(match=f"{keys.PREFIX}processing:{worker}:*", count=100))

    def reap_worker(self, worker: str) -> int:
        """Move a worker's held jobs back to the front of their queues, one atomic LMOVE each."""
        returned = 0
        prefix = f"{keys.PREFIX}processing:{worker}:"
        for pkey in self._processing_keys_of(worker):
            queue = pkey[len(prefix):]
            while self.redis.lmove(pkey, queue, "RIGHT", pop_end(self.era)) is not None:
                returned += 1
        return returned

    # ------------------------------------------------------------------------- claiming

    def claim(self, block_seconds: float = 1.0) -> Claimed | None:
        """Take the oldest waiting job from any of this worker's queues, or None after blocking."""
        src = pop_end(self.era)
        n = len(self.queues)
        for i in range(n):
            queue = self.queues[(self._rotation + i) % n]
            raw = self.redis.lmove(queue, keys.processing(self.worker_id, queue), src, "LEFT")
            if raw is not None:
                self._rotation = (self._rotation + i + 1) % n
                return self._claimed(raw, queue)
        if block_seconds <= 0:
            return None
        # Nothing anywhere: block on one queue (rotating) so an idle worker costs Redis nothing.
        queue = self.queues[self._rotation % n]
        self._rotation = (self._rotation + 1) % n
        wait = min(max(0.01, block_seconds / n) if n > 1 else block_seconds, longest_block(self.redis))
        raw = self.redis.blmove(queue, keys.processing(self.worker_id, queue), wait, src, "LEFT")
        return self._claimed(raw, queue) if raw is not None else None

    def _claimed(self, raw: str, queue: str) -> Claimed:
        attempt_key = job_key_of(raw)
        attempts = int(self.redis.hincrby(keys.ATTEMPTS, attempt_key, 1))
        return Claimed(raw, queue, keys.processing(self.worker_id, queue), attempt_key, attempts, time.time())

    def over_attempts(self, claimed: Claimed) -> bool:
        return claimed.attempts > self.max_attempts

    def still_held(self, claimed: Claimed) -> bool:
        """False when a reaper took the job back (this worker was presumed dead)."""
        return self.redis.lpos(claimed.processing_key, claimed.raw) is not None

    # ------------------------------------------------------------------------ finishing

    def finish(
        self,
        claimed: Claimed,
        result: dict[str, Any] | None = None,
        result_ttl: int = 7 * 86400,
        outbox_member: str | None = None,
    ) -> bool:
        """The job is done (its terminal callback accepted or in the outbox): let go of it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(claimed.processing_key, 1, claimed.raw)
        pipe.hdel(keys.ATTEMPTS, claimed.attempt_key)
        if result is not None and not claimed.attempt_key.startswith("raw:"):
            pipe.set(keys.result(claimed.attempt_key), json.dumps(result), ex=result_ttl)
        if outbox_member is not None:
            pipe.zadd(keys.OUTBOX, {outbox_member: time.time()})
        removed = pipe.execute()[0]
        return bool(removed)

    def requeue(self, claimed: Claimed, count_attempt: bool = False) -> None:
        """Give a job back untouched (shutdown, or a transient failure) to be claimed next."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(claimed.processing_key, 1, claimed.raw)
        if pop_end(self.era) == "RIGHT":
            pipe.rpush(claimed.queue, claimed.raw)
        else:
            pipe.lpush(claimed.queue, claimed.raw)
        if not count_attempt:
            pipe.hincrby(keys.ATTEMPTS, claimed.attempt_key, -1)
        pipe.execute()

    def dead_letter(self, claimed: Claimed, reason: str, outbox_member: str | None = None) -> None:
        record = {
            "job_id": None if claimed.attempt_key.startswith("raw:") else claimed.attempt_key,
            "queue": claimed.queue,
            "raw": claimed.raw,
            "reason": reason,
            "attempts": claimed.attempts,
            "worker_id": self.worker_id,
            "at": time.time(),
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(claimed.processing_key, 1, claimed.raw)
        pipe.lpush(keys.DEAD_LETTER, json.dumps(record))
        pipe.hdel(keys.ATTEMPTS, claimed.attempt_key)
        if outbox_member is not None:
            pipe.zadd(keys.OUTBOX, {outbox_member: time.time()})
        pipe.execute()


# ------------------------------------------------------------------ operator-side helpers


def request_cancel(client: redis.Redis, job_id: str, ttl: int = 86400) -> None:
    client.set(keys.cancel(job_id), "1", ex=ttl)


def is_cancelled(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(keys.cancel(job_id)))


def remove_queued(client: redis.Redis, queue: str, job_id: str) -> str | None:
    """Take a not-yet-claimed job out of a queue; returns its element, or None if it is not there."""
    for raw in client.lrange(queue, 0, -1):
        if job_key_of(raw) == job_id and client.lrem(queue, 1, raw):
            return raw
    return None


def dead_letters(client: redis.Redis, start: int = 0, end: int = -1) -> list[dict[str, Any]]:
    return [json.loads(r) for r in client.lrange(keys.DEAD_LETTER, start, end)]


def requeue_dead_letter(client: redis.Redis, era: Era, job_id: str | None = None) -> int:
    """Put dead-lettered jobs (one, or all when job_id is None) back on their queues, attempts reset."""
    moved = 0
    for record_text in client.lrange(keys.DEAD_LETTER, 0, -1):
        record = json.loads(record_text)
        if job_id is not None and record.get("job_id") != job_id:
            continue
        pipe = client.pipeline(transaction=True)
        pipe.lrem(keys.DEAD_LETTER, 1, record_text)
        if push_end(era) == "LEFT":
            pipe.lpush(record["queue"], record["raw"])
        else:
            pipe.rpush(record["queue"], record["raw"])
        pipe.hdel(keys.ATTEMPTS, job_key_of(record["raw"]))
        if record.get("job_id"):
            pipe.delete(keys.result(record["job_id"]))
        removed = pipe.execute()[0]
        moved += int(bool(removed))
    return moved


def queue_report(client: redis.Redis, queues: tuple[str, ...]) -> dict[str, Any]:
    workers = sorted(client.smembers(keys.WORKERS))
    in_flight: dict[str, int] = {}
    alive: dict[str, bool] = {}
    for worker in workers:
        alive[worker] = bool(client.exists(keys.lease(worker)))
        total = 0
        for pkey in client.scan_iter(match=f"{keys.PREFIX}processing:{worker}:*", count=100):
            total += client.llen(pkey)
        in_flight[worker] = total
    return {
        "queues": {q: client.llen(q) for q in queues},
        "in_flight": in_flight,
        "workers_alive": alive,
        "dead_letters": client.llen(keys.DEAD_LETTER),
        "outbox": client.zcard(keys.OUTBOX),
        "callbacks_rejected": client.llen(keys.CALLBACK_REJECTED),
    }

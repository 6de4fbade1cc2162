"""The Redis queues as a source: raw elements moved and leased, never parsed. No job is ever lost.

- claim: `BLMOVE` from the backend's queue (from the end that makes the era FIFO) into this
  worker's processing list, so an element is always in exactly one list.
- attempts: counted per element (its SHA-1, so nothing is parsed) in the same atomic step that
  returns it to the queue: a reaped job (its worker died) or a job given back for a retry. A
  claim reads the count; a job past MAX_ATTEMPTS is dead-lettered.
- lease: a key with an expiry that the heartbeat renews; while it exists the worker is alive.
- reap: any worker moves the processing lists of a worker whose lease expired back to the queue.
- finish: the element leaves its processing list in the same transaction that records the
  job's result (and, when the callback could not be delivered yet, hands it to the outbox).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from shared import keys
from shared.job import Era

SOCKET_TIMEOUT = 15.0  # seconds; every blocking command waits less than its client's socket timeout

# Return every element of a processing list to its queue, charging each one an attempt.
_RETURN_ALL = """
local returned = 0
while true do
  local element = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', ARGV[1])
  if not element then return returned end
  redis.call('HINCRBY', KEYS[3], redis.sha1hex(element), 1)
  returned = returned + 1
end
"""


# A dead worker's callbacks in flight: back to the outbox, due now.
_RETURN_SENDING = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, member in ipairs(members) do redis.call('ZADD', KEYS[2], ARGV[1], member) end
redis.call('DEL', KEYS[1])
return #members
"""


def pop_end(era: Era) -> str:
    """v1 LPUSHes, so its oldest job is on the right; v2 RPUSHes, so its oldest is on the left."""
    return "RIGHT" if era == "v1" else "LEFT"


def push_end(era: Era) -> str:
    return "LEFT" if era == "v1" else "RIGHT"


def element_key(raw: str) -> str:
    """What attempts are counted under: the element's SHA-1 (what Redis's `sha1hex` computes)."""
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Claimed:
    """A queue element this worker holds: exactly as it was stored, and where it is held."""

    raw: str
    queue: str
    processing_key: str
    attempt_key: str
    attempts: int  # this attempt's number: 1 the first time
    claimed_at: float


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
        self._return_all = client.register_script(_RETURN_ALL)
        self._return_sending = client.register_script(_RETURN_SENDING)

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
        """Move a worker's held jobs back to the front of their queues, charging each an attempt, and
        the callbacks it was sending from the outbox back to the outbox."""
        returned = 0
        prefix = f"{keys.PREFIX}processing:{worker}:"
        for pkey in self._processing_keys_of(worker):
            returned += int(self._return_all(keys=[pkey, pkey[len(prefix):], keys.ATTEMPTS],
                                             args=[pop_end(self.era)]))
        self._return_sending(keys=[keys.outbox_sending(worker), keys.OUTBOX], args=[time.time()])
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
        attempt_key = element_key(raw)
        earlier = int(self.redis.hget(keys.ATTEMPTS, attempt_key) or 0)
        return Claimed(raw, queue, keys.processing(self.worker_id, queue), attempt_key, earlier + 1, time.time())

    def over_attempts(self, claimed: Claimed) -> bool:
        return claimed.attempts > self.max_attempts

    def still_held(self, claimed: Claimed) -> bool:
        """False when a reaper took the job back (this worker was presumed dead)."""
        return self.redis.lpos(claimed.processing_key, claimed.raw) is not None

    # ------------------------------------------------------------------------ finishing

    def finish(self, claimed: Claimed, job_id: str | None = None, result: dict[str, Any] | None = None,
               result_ttl: int = 7 * 86400, outbox_member: str | None = None) -> bool:
        """The job is done (its terminal callback accepted or in the outbox): let go of it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(claimed.processing_key, 1, claimed.raw)
        pipe.hdel(keys.ATTEMPTS, claimed.attempt_key)
        if result is not None and job_id is not None:
            pipe.set(keys.result(job_id), json.dumps(result), ex=result_ttl)
        if outbox_member is not None:
            pipe.zadd(keys.OUTBOX, {outbox_member: time.time()})
        removed = pipe.execute()[0]
        return bool(removed)

    def requeue(self, claimed: Claimed, count_attempt: bool = False) -> None:
        """Give a job back untouched to be claimed next: after a transient failure (the attempt
        counts) or at shutdown (it does not: not the job's fault)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(claimed.processing_key, 1, claimed.raw)
        (pipe.rpush if pop_end(self.era) == "RIGHT" else pipe.lpush)(claimed.queue, claimed.raw)
        if count_attempt:
            pipe.hincrby(keys.ATTEMPTS, claimed.attempt_key, 1)
        pipe.execute()

    def dead_letter(self, claimed: Claimed, reason: str, job_id: str | None = None,
                    outbox_member: str | None = None, result: dict[str, Any] | None = None,
                    result_ttl: int = 7 * 86400) -> None:
        record = {"job_id": job_id, "queue": claimed.queue, "raw": claimed.raw, "reason": reason,
                  "attempts": claimed.attempts, "worker_id": self.worker_id, "at": time.time()}
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(claimed.processing_key, 1, claimed.raw)
        pipe.lpush(keys.DEAD_LETTER, json.dumps(record))
        pipe.hdel(keys.ATTEMPTS, claimed.attempt_key)
        if result is not None and job_id is not None:
            pipe.set(keys.result(job_id), json.dumps(result), ex=result_ttl)
        if outbox_member is not None:
            pipe.zadd(keys.OUTBOX, {outbox_member: time.time()})
        pipe.execute()


# ------------------------------------------------------------------------- cancellation


def request_cancel(client: redis.Redis, job_id: str, ttl: int = 86400) -> None:
    client.set(keys.cancel(job_id), "1", ex=ttl)


def is_cancelled(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(keys.cancel(job_id)))

"""The Redis queues as a source: raw elements moved and leased, never parsed. No job is ever lost.

- claim: `BLMOVE` from the backend's queue (from the end that makes the era FIFO) into this
  worker's processing list, so an element is always in exactly one list.
- lease: one sorted set of lease deadlines for the whole fleet; a heartbeat is one `ZADD`, and
  one range query finds every dead worker. A registry (a hash) says which processing lists each
  worker may hold, so nothing is ever found by `SCAN` or `KEYS`, and an idle worker costs the
  same few commands a minute whether the fleet has 4 workers or 200.
- attempts count GPU runs: while a batch is on the engine its elements' SHA-1s are in the
  worker's running set. Reaping a dead worker returns all its jobs, and charges an attempt only
  to those that were on the engine when it died (jobs claimed ahead or already generated go back
  free). A retried job is charged when it is given back. A claim reads the count.
- finish: the element leaves its processing list in the same transaction that records the
  job's result (and, when the callback could not be delivered yet, hands it to the outbox).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from shared.source import keys
from shared.source.element import Era

SOCKET_TIMEOUT = 15.0  # seconds; every blocking command waits less than its client's socket timeout

# Reap one worker in one atomic step: its processing lists back to their queues (an attempt
# charged to the elements that were on its engine), its callbacks in flight back to the outbox,
# and its lease and registry entry gone. KEYS: leases, registry, attempts, running, sending,
# outbox, then (processing list, queue) pairs. ARGV: worker, now, the queue's pop end, and 1 to
# reap even a live lease (a restart under the same id takes its own jobs back). A callback in
# flight is due again once its attempt would have ended (its score), in case the worker only stalled.
_REAP = """
if ARGV[4] ~= '1' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) > tonumber(ARGV[2]) then return -1 end
end
local returned = 0
for i = 7, #KEYS, 2 do
  while true do
    local element = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'RIGHT', ARGV[3])
    if not element then break end
    local digest = redis.sha1hex(element)
    if redis.call('SISMEMBER', KEYS[4], digest) == 1 then redis.call('HINCRBY', KEYS[3], digest, 1) end
    returned = returned + 1
  end
end
local sending = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
for i = 1, #sending, 2 do
  redis.call('ZADD', KEYS[6], math.max(tonumber(ARGV[2]), tonumber(sending[i + 1])), sending[i])
end
redis.call('DEL', KEYS[4], KEYS[5])
if ARGV[4] ~= '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return returned
"""


# Hand a finished job over from the queue to its report, in one step, before the callback goes
# out: the element leaves the processing list (0 if a reaper took it: someone else reports), the
# callback is parked in this sender's set (a reaper returns it to the outbox if this worker dies
# while sending), and the result is recorded. From here no reaper can run the job again, so a
# worker that stalls past its lease while calling back cannot cause a second report. KEYS:
# processing, sending, attempts, result, dead letters, cancel. ARGV: element, callback entry,
# when its attempt is over, result JSON, result TTL, element SHA-1, dead-letter record, clear
# attempts, clear cancel.
_HANDOVER = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2]) end
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5]) end
if ARGV[8] == '1' then redis.call('HDEL', KEYS[3], ARGV[6]) end
if ARGV[7] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[7]) end
if ARGV[9] == '1' then redis.call('DEL', KEYS[6]) end
return 1
"""


def pop_end(era: Era) -> str:
    """v1 LPUSHes, so its oldest job is on the right; v2 RPUSHes, so its oldest is on the left."""
    return "RIGHT" if era == "v1" else "LEFT"


# An element that is not UTF-8 must still be claimed, reported and written back byte for byte:
# strict decoding would raise inside the claim (after the server moved the element), so bytes
# that are not UTF-8 become lone surrogates, which decode refuses and which encode back as they were.
ENCODING_ERRORS = "surrogateescape"


def element_key(raw: str) -> str:
    """What attempts are counted under: the element's SHA-1 (what Redis's `sha1hex` computes)."""
    return hashlib.sha1(raw.encode("utf-8", ENCODING_ERRORS)).hexdigest()  # the stored bytes, as Redis hashes them


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
    return redis.Redis.from_url(url, decode_responses=True, encoding_errors=ENCODING_ERRORS,
                                health_check_interval=30, socket_keepalive=True,
                                socket_timeout=socket_timeout, socket_connect_timeout=min(socket_timeout, 10.0))


def claim_client_for(client: redis.Redis) -> redis.Redis:
    """A second client to the same server for blocking claims, which never retries on its own: a
    claim cut short at shutdown must end, not reconnect and block again."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0), "encoding_errors": ENCODING_ERRORS}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


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
        claim_client: redis.Redis | None = None,
    ):
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.redis = client
        # Claims block; a client of their own lets a stopping worker cut a block short (see
        # `interrupt_claims`) without touching the connections its deliveries use.
        self.claim_redis = claim_client or client
        self.worker_id = worker_id
        self.queues = tuple(queues)
        self.era = era
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._rotation = 0
        self._idle = False  # the last claim found every queue empty: block at once next time
        self._reap = client.register_script(_REAP)
        self._handover = client.register_script(_HANDOVER)

    # ------------------------------------------------------------------- life of a worker

    def register(self) -> int:
        """Take the lease, record which lists this worker holds, and take back what a previous run
        under this id held (a restart after a crash need not wait for its lease to lapse)."""
        previous = self.redis.hget(keys.WORKER_QUEUES, self.worker_id)
        held = set(json.loads(previous)) if previous else set()
        returned = self._reap_lists(self.worker_id, held | set(self.queues), force=True)
        pipe = self.redis.pipeline()
        pipe.hset(keys.WORKER_QUEUES, self.worker_id, json.dumps(list(self.queues)))
        pipe.zadd(keys.LEASES, {self.worker_id: time.time() + self.lease_seconds})
        pipe.execute()
        return max(0, returned)

    def heartbeat(self) -> None:
        """One ZADD. If a reaper took this worker for dead meanwhile, it re-registers its lists."""
        added = self.redis.zadd(keys.LEASES, {self.worker_id: time.time() + self.lease_seconds})
        if added:
            self.redis.hset(keys.WORKER_QUEUES, self.worker_id, json.dumps(list(self.queues)))

    def deregister(self) -> None:
        """Clean exit: nothing is held any more, so the worker need not be watched."""
        if any(self.redis.llen(keys.processing(self.worker_id, q)) for q in self.queues):
            return  # keep the lease record; a reaper returns what is left once it expires
        pipe = self.redis.pipeline()
        pipe.zrem(keys.LEASES, self.worker_id)
        pipe.hdel(keys.WORKER_QUEUES, self.worker_id)
        pipe.hdel(keys.WORKER_STATUS, self.worker_id)
        pipe.delete(keys.running(self.worker_id))
        pipe.execute()

    def reap_dead_workers(self) -> int:
        """Return the jobs of every worker whose lease has lapsed: one range query, then per dead
        worker its registry entry and one atomic reap."""
        dead = [w for w in self.redis.zrangebyscore(keys.LEASES, "-inf", time.time()) if w != self.worker_id]
        returned = sum(max(0, self.reap_worker(w)) for w in dead)
        if dead:
            self.redis.hdel(keys.WORKER_STATUS, *dead)  # what `top` showed of them is over
        return returned

    def reap_worker(self, worker: str) -> int:
        """Move a dead worker's held jobs back to the front of their queues (charging the ones that
        were on its engine), and its callbacks in flight back to the outbox."""
        registered = self.redis.hget(keys.WORKER_QUEUES, worker)
        queues = set(json.loads(registered)) if registered else set(self.queues)
        return self._reap_lists(worker, queues, force=False)

    def return_orphans(self) -> int:
        """At a clean exit: anything still in this worker's processing lists is held by no task (a
        claim cut short as an element arrived): back to the front of its queue, uncharged."""
        return max(0, self._reap_lists(self.worker_id, self.queues, force=True))

    def _reap_lists(self, worker: str, queues: Iterable[str], force: bool) -> int:
        lists = [k for q in sorted(queues) for k in (keys.processing(worker, q), q)]
        return int(self._reap(keys=[keys.LEASES, keys.WORKER_QUEUES, keys.ATTEMPTS, keys.running(worker),
                                    keys.outbox_sending(worker), keys.OUTBOX, *lists],
                              args=[worker, time.time(), pop_end(self.era), "1" if force else "0"]))

    # ------------------------------------------------------------------------- claiming

    def claim(self, block_seconds: float = 1.0) -> Claimed | None:
        """Take the oldest waiting job from any of this worker's queues, or None after blocking.

        One queue: one BLMOVE, which returns at once when a job waits. Several: while busy, a
        sweep of non-blocking moves across them; once idle, one blocking move per call on each
        queue in turn, each waiting its share of `block_seconds` (a job on another queue waits at
        most that long).
        """
        src = pop_end(self.era)
        n = len(self.queues)
        if n > 1 and not self._idle:
            for i in range(n):
                queue = self.queues[(self._rotation + i) % n]
                raw = self.claim_redis.lmove(queue, keys.processing(self.worker_id, queue), src, "LEFT")
                if raw is not None:
                    self._rotation = (self._rotation + i + 1) % n
                    return self._claimed(raw, queue)
            self._idle = True
        if block_seconds <= 0:
            return None
        queue = self.queues[self._rotation % n]
        self._rotation = (self._rotation + 1) % n
        wait = max(0.01, min(block_seconds / n, longest_block(self.claim_redis)))
        raw = self.claim_redis.blmove(queue, keys.processing(self.worker_id, queue), wait, src, "LEFT")
        if raw is None:
            return None
        self._idle = False
        return self._claimed(raw, queue)

    def interrupt_claims(self) -> None:
        """End a blocking claim now (at shutdown). An element the server moved just as the
        connection closed stays in the processing list, where the reaper finds it."""
        if self.claim_redis is not self.redis:
            self.claim_redis.connection_pool.disconnect()

    def _claimed(self, raw: str, queue: str) -> Claimed:
        attempt_key = element_key(raw)
        earlier = int(self.redis.hget(keys.ATTEMPTS, attempt_key) or 0)
        return Claimed(raw, queue, keys.processing(self.worker_id, queue), attempt_key, earlier + 1, time.time())

    def over_attempts(self, claimed: Claimed) -> bool:
        return claimed.attempts > self.max_attempts

    def on_engine(self, claims: list[Claimed], job_ids: list[str] = ()) -> set[str]:
        """These jobs are on the GPU now: a death from here on is charged to them. In the same
        round trip, which of `job_ids` were cancelled while they waited (they never start)."""
        if not claims and not job_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        if job_ids:
            pipe.mget([keys.cancel(job_id) for job_id in job_ids])
        if claims:
            pipe.sadd(keys.running(self.worker_id), *{c.attempt_key for c in claims})
        answers = pipe.execute()
        flags = answers[0] if job_ids else []
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}

    def cancelled_among(self, job_ids: list[str]) -> set[str]:
        """Which of these jobs were cancelled: one MGET (none when Redis is away)."""
        if not job_ids:
            return set()
        try:
            flags = self.redis.mget([keys.cancel(j) for j in job_ids])
        except redis.RedisError:
            return set()
        return {j for j, flag in zip(job_ids, flags, strict=True) if flag}

    def off_engine(self, claims: list[Claimed]) -> None:
        """The engine is done with them: a death while they are delivered costs them nothing."""
        if claims:
            self.redis.srem(keys.running(self.worker_id), *{c.attempt_key for c in claims})

    # ------------------------------------------------------------------------ observing

    def scrape_view(self) -> dict[str, Any]:
        """Depth and the element next in line per queue (raw: a source never parses it), this
        worker's jobs in flight, and the fleet's dead letters, outbox and live workers: one
        pipeline, for /metrics."""
        head = -1 if pop_end(self.era) == "RIGHT" else 0
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.llen(queue)
            pipe.lindex(queue, head)
        for queue in self.queues:
            pipe.llen(keys.processing(self.worker_id, queue))
        pipe.llen(keys.DEAD_LETTER)
        pipe.zcard(keys.OUTBOX)
        pipe.zcount(keys.LEASES, time.time(), "+inf")
        replies = pipe.execute()
        n = len(self.queues)
        return {"depth": {q: replies[2 * i] for i, q in enumerate(self.queues)},
                "next_in_line": {q: replies[2 * i + 1] for i, q in enumerate(self.queues)},
                "in_flight": sum(replies[2 * n:3 * n]), "dead_letters": replies[3 * n], "outbox": replies[3 * n + 1],
                "workers_alive": replies[3 * n + 2]}

    # ------------------------------------------------------------------------ finishing

    def finish(self, claimed: Claimed, job_id: str | None = None, result: dict[str, Any] | None = None,
               result_ttl: int = 7 * 86400) -> bool:
        """Let go of a done job, recording its result (no callback to park: see `handover`)."""
        return self.handover(claimed, job_id, result, result_ttl=result_ttl)

    def handover(self, claimed: Claimed, job_id: str | None, result: dict[str, Any] | None = None,
                 callback_entry: str | None = None, result_ttl: int = 7 * 86400, dead_letter: str | None = None,
                 clear_cancel: bool = False, sending_until: float | None = None) -> bool:
        """Let go of a finished job before its callback is sent (see _HANDOVER), or dead-letter it.
        False: a reaper took it back, and the worker that has it now reports it."""
        dead = ""
        if dead_letter is not None:
            dead = json.dumps({"job_id": job_id, "queue": claimed.queue, "raw": claimed.raw, "reason": dead_letter,
                               "attempts": claimed.attempts, "worker_id": self.worker_id, "at": time.time()})
        result_key = keys.result(job_id) if job_id else keys.result("-")
        held = self._handover(
            keys=[claimed.processing_key, keys.outbox_sending(self.worker_id), keys.ATTEMPTS, result_key,
                  keys.DEAD_LETTER, keys.cancel(job_id or "-")],
            args=[claimed.raw, callback_entry or "", sending_until or time.time(),
                  json.dumps(result) if result and job_id else "",
                  result_ttl, claimed.attempt_key, dead, "1" if claimed.attempts > 1 or dead else "0",
                  "1" if (clear_cancel or dead) and job_id else "0"])
        return bool(held)

    def requeue(self, claimed: Claimed, count_attempt: bool = False) -> None:
        """Give a job back untouched to be claimed next: after a transient failure (the attempt
        counts) or at shutdown (it does not: not the job's fault)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(claimed.processing_key, 1, claimed.raw)
        (pipe.rpush if pop_end(self.era) == "RIGHT" else pipe.lpush)(claimed.queue, claimed.raw)
        if count_attempt:
            pipe.hincrby(keys.ATTEMPTS, claimed.attempt_key, 1)
        pipe.execute()

    def dead_letter(self, claimed: Claimed, reason: str, job_id: str | None = None) -> None:
        """Give up on a job that has no report to make (its payload has no id): to the dead-letter list."""
        self.handover(claimed, job_id, dead_letter=reason)


# ------------------------------------------------------------------------- cancellation


def request_cancel(client: redis.Redis, job_id: str, ttl: int = 86400) -> None:
    client.set(keys.cancel(job_id), "1", ex=ttl)

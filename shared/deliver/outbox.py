"""Delivering callbacks: a few quick retries, then a Redis outbox that any worker keeps re-sending.

A terminal callback is never dropped for an outage. If the backend is down, the callback body is
stored in a sorted set scored by its next delivery time; every worker's heartbeat thread flushes
due entries, so a callback outage, a worker crash or a restart loses nothing. Progress callbacks
(`processing`) are best-effort and never outboxed: re-sent late, one could overwrite a terminal
status.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from shared.deliver.callback import encode_body, sign
from shared.ops.logging import get_logger
from shared.ops.retry import PermanentError, TransientError, is_transient_status, with_retries
from shared.ops.settings import Settings
from shared.source import keys

log = get_logger(component="callback")

OUTBOX_MAX_DELAY = 300.0

# Entries being sent live in the sender's own sorted set, scored by when the attempt is over, so
# the outbox itself holds only entries nobody is sending, and two flushers never send one entry at
# the same time. A sender that dies mid-send gives them back when it is reaped (shared/source/queue.py),
# due once its attempt would have ended; a live one always puts an entry back or removes it.
# Claiming costs one script and one range query.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[2], ARGV[3], member)
end
return due
"""

# When the endpoint answers again, every waiting callback becomes due now: an outage that pushed
# the backoff far out must not keep results from the backend once it is back.
_ALL_DUE_NOW = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
for _, member in ipairs(members) do redis.call('ZADD', KEYS[1], ARGV[1], member) end
return #members
"""


class CallbackSender:
    def __init__(self, settings: Settings, client: redis.Redis, http: httpx.Client | None = None):
        self.settings = settings
        self.redis = client
        self.url = settings.callback_url
        self.http = http or httpx.Client(timeout=settings.callback_timeout_seconds)
        self._file_lock = threading.Lock()
        self._claim_due = client.register_script(_CLAIM_DUE)
        self.sending_key = keys.outbox_sending(settings.worker_id)
        self._all_due_now = client.register_script(_ALL_DUE_NOW)
        self._endpoint_failed = False  # this sender saw the endpoint fail since its last success

    # ------------------------------------------------------------------------ sending

    def post(self, body: bytes) -> None:
        """One delivery attempt. Raises TransientError or PermanentError."""
        if self.url.startswith("file://"):
            self._append_to_file(body)
            return
        headers = {"Content-Type": "application/json"}
        if self.settings.supabase_service_key:
            headers["Authorization"] = f"Bearer {self.settings.supabase_service_key.get_secret_value()}"
        if self.settings.job_callback_secret:
            headers["X-Callback-Signature"] = sign(body, self.settings.job_callback_secret.get_secret_value())
        response = self.http.post(self.url, content=body, headers=headers)
        if response.status_code < 300:
            return
        detail = response.text[:300]
        if is_transient_status(response.status_code):
            raise TransientError(f"callback endpoint answered {response.status_code}: {detail}")
        raise PermanentError(f"callback endpoint answered {response.status_code}: {detail}", response.status_code, detail)

    def _append_to_file(self, body: bytes) -> None:
        path = Path(self.url.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._file_lock:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, body + b"\n")  # one write per line: whole lines even across processes
            finally:
                os.close(fd)

    def send_progress(self, body: dict[str, Any]) -> bool:
        """Best effort, one try: a lost progress update costs nothing."""
        try:
            self.post(encode_body(body))
        except (TransientError, PermanentError, httpx.HTTPError) as exc:
            log.warning("progress_callback_failed", job_id=body.get("job_id"), error=str(exc))
            self._endpoint_failed = not isinstance(exc, PermanentError)
            return False
        self._endpoint_back()
        return True

    def send_terminal(self, body: dict[str, Any]) -> str:
        """Try a terminal callback a few times. Returns 'delivered', 'rejected' or 'undelivered'.

        'undelivered' means the caller must hand the body to the outbox (see `outbox_entry`)
        before it lets go of the job.
        """
        raw = encode_body(body)
        try:
            with_retries(lambda: self.post(raw), self.settings.callback_retries, self.settings.retry_base_seconds)
        except PermanentError as exc:
            self._record_rejected(raw, str(exc))
            return "rejected"
        except (TransientError, httpx.HTTPError, OSError) as exc:
            log.warning("callback_undelivered", job_id=body.get("job_id"), error=str(exc))
            self._endpoint_failed = True
            return "undelivered"
        return "delivered"  # the caller acknowledges the job first, then calls `endpoint_back`

    def sending_deadline(self) -> float:
        """When an attempt started now is over, delivered or not: an entry in this sender's set is
        scored by it, and if the sender is reaped its entries are due again no earlier (a sender
        that only stalled may still be finishing that attempt)."""
        return time.time() + self.settings.callback_timeout_seconds + 1.0

    def settle(self, entry: str, delivery: str) -> None:
        """After a handed-over callback was sent: done with it, or into the outbox to be re-sent."""
        pipe = self.redis.pipeline(transaction=False)  # one round trip; each step is safe on its own
        if delivery == "undelivered":
            pipe.zadd(keys.OUTBOX, {entry: time.time()})  # into the outbox first: never in neither
        else:  # a reaper that took this (stalled) worker for dead may have queued it again: not needed now
            pipe.zrem(keys.OUTBOX, entry)
        pipe.zrem(self.sending_key, entry)
        pipe.execute()

    def endpoint_back(self) -> None:
        self._endpoint_back()

    def _endpoint_back(self) -> None:
        """The endpoint answers again after failing: what waits in the outbox is sent next, not later."""
        if not self._endpoint_failed:
            return
        self._endpoint_failed = False
        try:
            due = self._all_due_now(keys=[keys.OUTBOX], args=[time.time()])
            if due:
                log.info("outbox_due_now", entries=int(due))
        except redis.RedisError as exc:  # the outbox keeps its own schedule
            log.warning("outbox_reschedule_failed", error=str(exc))

    def _record_rejected(self, raw: bytes, reason: str) -> None:
        # The backend saw it and said no (401 bad signature, 404 unknown job): re-sending will not
        # help, but an operator must be able to see it.
        log.error("callback_rejected", reason=reason)
        record = json.dumps({"body": raw.decode("utf-8"), "reason": reason, "at": time.time()})
        self.redis.pipeline().lpush(keys.CALLBACK_REJECTED, record).ltrim(keys.CALLBACK_REJECTED, 0, 9999).execute()

    # ------------------------------------------------------------------------- outbox

    @staticmethod
    def outbox_entry(body: dict[str, Any], attempts: int = 0) -> str:
        return json.dumps(
            {"id": uuid.uuid4().hex, "job_id": body.get("job_id"), "body": encode_body(body).decode("utf-8"),
             "attempts": attempts, "since": time.time()}
        )

    def add_to_outbox(self, body: dict[str, Any], pipe=None) -> None:
        target = pipe if pipe is not None else self.redis
        target.zadd(keys.OUTBOX, {self.outbox_entry(body): time.time()})

    def flush_outbox(self, limit: int = 20) -> int:
        """Send the due outbox entries once each; returns how many were delivered (or rejected)."""
        now = time.time()
        due = self._claim_due(keys=[keys.OUTBOX, self.sending_key], args=[now, limit, self.sending_deadline()])
        done = 0
        for member in due:
            member = member.decode() if isinstance(member, bytes) else member
            entry = json.loads(member)
            raw = entry["body"].encode("utf-8")
            try:
                self.post(raw)
                self.redis.zrem(self.sending_key, member)
                done += 1
                self._endpoint_back()
                log.info("outbox_delivered", job_id=entry.get("job_id"), attempts=entry["attempts"] + 1)
            except PermanentError as exc:
                self._record_rejected(raw, str(exc))
                self.redis.zrem(self.sending_key, member)
                done += 1
            except Exception as exc:  # transient, or anything unexpected: back in the outbox, later
                self._endpoint_failed = True
                entry["attempts"] += 1
                window = min(OUTBOX_MAX_DELAY, self.settings.retry_base_seconds * 2 ** entry["attempts"])
                retry_at = time.time() + max(1.0, random.uniform(window / 2, window))
                pipe = self.redis.pipeline(transaction=True)
                pipe.zrem(self.sending_key, member)
                pipe.zadd(keys.OUTBOX, {json.dumps(entry): retry_at})
                pipe.execute()
                log.warning("outbox_retry_later", job_id=entry.get("job_id"), attempts=entry["attempts"], error=str(exc))
        return done

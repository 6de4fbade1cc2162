"""Every Redis key the fleet reads or writes, named in one place.

The queue names are the backend's; everything else lives under the `ourvidz:` prefix so a shared
Upstash database stays tidy.
"""

SDXL_QUEUE = "sdxl_queue"
WAN_QUEUE = "wan_queue"
CHAT_QUEUE = "chat_queue"
JOB_QUEUES = (SDXL_QUEUE, WAN_QUEUE)

PREFIX = "ourvidz:"
LEASES = PREFIX + "leases"  # zset: worker id -> lease deadline (epoch s); one ZADD renews, one range finds the dead
WORKER_QUEUES = PREFIX + "worker_queues"  # hash: worker id -> JSON list of the queues it claims from
ATTEMPTS = PREFIX + "attempts"  # hash: element SHA-1 -> GPU runs that ended with the worker's death or a retry
DEAD_LETTER = PREFIX + "dead"  # list of JSON records {job_id, queue, raw, reason, at}
OUTBOX = PREFIX + "callback_outbox"  # zset: pending callback JSON -> next delivery time
CALLBACK_REJECTED = PREFIX + "callback_rejected"  # list: callbacks the backend refused (4xx)
WORKER_STATUS = PREFIX + "worker_status"  # hash: worker id -> JSON status (engine, state, jobs, counts), for `top`
FAILURES = PREFIX + "failures"  # list: the fleet's latest failed jobs, newest first (JSON), for `top`
FAILURES_KEPT = 50


def processing(worker_id: str, queue: str) -> str:
    """Jobs a worker has claimed from one queue and not yet acknowledged."""
    return f"{PREFIX}processing:{worker_id}:{queue}"


def outbox_sending(worker_id: str) -> str:
    """Outbox entries one worker is sending now -> when its claim lapses (returned if it dies)."""
    return f"{PREFIX}callback_sending:{worker_id}"


def running(worker_id: str) -> str:
    """SHA-1s of the elements a worker has on its engine now: the ones its death is charged to."""
    return f"{PREFIX}running:{worker_id}"


def cancel(job_id: str) -> str:
    return f"{PREFIX}cancel:{job_id}"


def result(job_id: str) -> str:
    """The terminal outcome of a job, kept a while for `submit --wait` and operators."""
    return f"{PREFIX}result:{job_id}"


def reply(request_id: str) -> str:
    """Where the chat worker pushes the answer to a queued request/reply job."""
    return f"{PREFIX}reply:{request_id}"


def queue_for_type(job_type: str) -> str:
    """The queue the backend routes a job type to."""
    if job_type.startswith("chat") or job_type in ("enhance",):
        return CHAT_QUEUE
    return SDXL_QUEUE if job_type.startswith("sdxl_") else WAN_QUEUE

"""Every Redis key the fleet reads or writes, named in one place.

The queue names are the backend's; everything else lives under the `ourvidz:` prefix so a shared
Upstash database stays tidy.
"""

SDXL_QUEUE = "sdxl_queue"
WAN_QUEUE = "wan_queue"
CHAT_QUEUE = "chat_queue"
JOB_QUEUES = (SDXL_QUEUE, WAN_QUEUE)

PREFIX = "ourvidz:"
WORKERS = PREFIX + "workers"  # set of worker ids that may hold processing lists
ATTEMPTS = PREFIX + "attempts"  # hash job_id -> times claimed
DEAD_LETTER = PREFIX + "dead"  # list of JSON records {job_id, queue, raw, reason, at}
OUTBOX = PREFIX + "callback_outbox"  # zset: pending callback JSON -> next delivery time
CALLBACK_REJECTED = PREFIX + "callback_rejected"  # list: callbacks the backend refused (4xx)


def processing(worker_id: str, queue: str) -> str:
    """Jobs a worker has claimed from one queue and not yet acknowledged."""
    return f"{PREFIX}processing:{worker_id}:{queue}"


def outbox_sending(worker_id: str) -> str:
    """Outbox entries one worker is sending now -> when its claim lapses (returned if it dies)."""
    return f"{PREFIX}callback_sending:{worker_id}"


def lease(worker_id: str) -> str:
    """Exists while the worker is alive; a heartbeat renews its expiry."""
    return f"{PREFIX}lease:{worker_id}"


def cancel(job_id: str) -> str:
    return f"{PREFIX}cancel:{job_id}"


def result(job_id: str) -> str:
    """The terminal outcome of a job, kept a while for `submit --wait` and operators."""
    return f"{PREFIX}result:{job_id}"


def reply(request_id: str) -> str:
    """Where the chat worker pushes the answer to a queued request/reply job."""
    return f"{PREFIX}reply:{request_id}"

import json
import time

from shared.source import keys
from shared.source.admin import dead_letters, job_id_of, queue_report, remove_queued, requeue_dead_letter
from shared.source.queue import JobQueue, element_key
from tests.backend_payloads import build_payload, push


def _push(client, era, n, job_type="sdxl_image_fast"):
    ids = []
    for i in range(n):
        payload = build_payload(era, job_type, f"prompt {i}", job_id=f"job-{era}-{i}")
        push(client, era, payload)
        ids.append(payload["id"])
    return ids


def _claimed_id(claimed):
    return job_id_of(claimed.raw)  # the queue itself never reads the payload


def test_v1_and_v2_are_both_first_in_first_out(redis_client):
    for era in ("v1", "v2"):
        redis_client.flushdb()
        ids = _push(redis_client, era, 3)
        queue = JobQueue(redis_client, "w1", keys.JOB_QUEUES, era)
        assert [_claimed_id(queue.claim(0)) for _ in ids] == ids


def test_claim_moves_the_element_verbatim_into_the_processing_list(redis_client):
    _push(redis_client, "v2", 1)
    queue = JobQueue(redis_client, "w1", keys.JOB_QUEUES, "v2")
    original = redis_client.lindex(keys.SDXL_QUEUE, 0)
    claimed = queue.claim(0)
    assert claimed.raw == original and claimed.attempts == 1
    assert redis_client.llen(keys.SDXL_QUEUE) == 0
    assert redis_client.lrange(keys.processing("w1", keys.SDXL_QUEUE), 0, -1) == [original]
    assert queue.finish(claimed, "job-v2-0", {"status": "completed"})
    assert redis_client.llen(keys.processing("w1", keys.SDXL_QUEUE)) == 0
    assert json.loads(redis_client.get(keys.result("job-v2-0")))["status"] == "completed"


def test_claim_blocks_until_a_job_arrives(redis_client):
    queue = JobQueue(redis_client, "w1", (keys.WAN_QUEUE,), "v1")
    started = time.monotonic()
    assert queue.claim(block_seconds=0.3) is None
    assert time.monotonic() - started >= 0.25


def test_a_dead_workers_jobs_go_back_to_the_front_of_the_queue(redis_client):
    ids = _push(redis_client, "v1", 3)
    dead = JobQueue(redis_client, "dead", keys.JOB_QUEUES, "v1", lease_seconds=0.2)
    dead.register()
    held = dead.claim(0)
    assert _claimed_id(held) == ids[0]
    dead.on_engine([held])  # it died with this job on the GPU
    live = JobQueue(redis_client, "live", keys.JOB_QUEUES, "v1", lease_seconds=5)
    live.register()
    assert live.reap_dead_workers() == 0  # lease still valid: nothing taken
    time.sleep(0.3)
    assert live.reap_dead_workers() == 1
    assert redis_client.zscore(keys.LEASES, "dead") is None and not redis_client.hexists(keys.WORKER_QUEUES, "dead")
    again = live.claim(0)
    assert _claimed_id(again) == ids[0] and again.attempts == 2  # first in line again, attempt counted


def test_a_restarted_worker_with_the_same_id_takes_back_its_own_jobs(redis_client):
    _push(redis_client, "v1", 1)
    first = JobQueue(redis_client, "pod-1", keys.JOB_QUEUES, "v1")
    first.register()
    first.claim(0)
    restarted = JobQueue(redis_client, "pod-1", keys.JOB_QUEUES, "v1")
    assert restarted.register() == 1
    assert redis_client.llen(keys.SDXL_QUEUE) == 1


def test_requeue_and_attempt_counting(redis_client):
    _push(redis_client, "v2", 1)
    queue = JobQueue(redis_client, "w1", keys.JOB_QUEUES, "v2", max_attempts=2)
    claimed = queue.claim(0)
    queue.requeue(claimed)  # shutdown: not the job's fault, attempt not counted
    claimed = queue.claim(0)
    assert claimed.attempts == 1
    queue.requeue(claimed, count_attempt=True)
    assert queue.claim(0).attempts == 2


def test_over_attempts_and_dead_letter_round_trip(redis_client):
    _push(redis_client, "v1", 1)
    queue = JobQueue(redis_client, "w1", keys.JOB_QUEUES, "v1", max_attempts=1)
    claimed = queue.claim(0)
    assert not queue.over_attempts(claimed)
    queue.requeue(claimed, count_attempt=True)
    claimed = queue.claim(0)
    assert queue.over_attempts(claimed)
    queue.dead_letter(claimed, "gave up", job_id="job-v1-0")
    records = dead_letters(redis_client)
    assert records[0]["job_id"] == "job-v1-0" and records[0]["reason"] == "gave up"
    assert redis_client.llen(keys.processing("w1", keys.SDXL_QUEUE)) == 0
    assert requeue_dead_letter(redis_client, "v1", "job-v1-0") == 1
    assert dead_letters(redis_client) == []
    assert queue.claim(0).attempts == 1  # a requeued dead letter starts over


def test_elements_are_counted_by_content_without_being_parsed(redis_client):
    redis_client.lpush(keys.SDXL_QUEUE, "{{{not json")
    queue = JobQueue(redis_client, "w1", keys.JOB_QUEUES, "v1")
    claimed = queue.claim(0)
    assert claimed.attempt_key == element_key("{{{not json") and claimed.attempts == 1


def test_a_reaped_job_is_charged_its_attempt_in_the_same_step_that_returns_it(redis_client):
    """Redis computes the element's SHA-1 itself: the count it keeps matches the one claims read."""
    _push(redis_client, "v2", 1)
    dead = JobQueue(redis_client, "gone", keys.JOB_QUEUES, "v2")
    held = dead.claim(0)
    assert redis_client.hget(keys.ATTEMPTS, held.attempt_key) is None  # a claim charges nothing yet
    dead.on_engine([held])
    assert JobQueue(redis_client, "live", keys.JOB_QUEUES, "v2").reap_worker("gone") == 1
    assert redis_client.hget(keys.ATTEMPTS, held.attempt_key) == "1"
    assert JobQueue(redis_client, "live", keys.JOB_QUEUES, "v2").claim(0).attempts == 2


def test_remove_queued_takes_out_only_that_job(redis_client):
    ids = _push(redis_client, "v2", 3)
    assert remove_queued(redis_client, keys.SDXL_QUEUE, ids[1]) is not None
    assert remove_queued(redis_client, keys.SDXL_QUEUE, ids[1]) is None
    queue = JobQueue(redis_client, "w1", keys.JOB_QUEUES, "v2")
    assert [_claimed_id(queue.claim(0)) for _ in range(2)] == [ids[0], ids[2]]


def test_queue_report_counts_everything(redis_client):
    _push(redis_client, "v1", 2)
    queue = JobQueue(redis_client, "w1", keys.JOB_QUEUES, "v1")
    queue.register()
    queue.claim(0)
    report = queue_report(redis_client, keys.JOB_QUEUES)
    assert report["queues"][keys.SDXL_QUEUE] == 1
    assert report["in_flight"] == {"w1": 1} and report["workers_alive"] == {"w1": True}

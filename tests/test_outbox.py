import json
import time

from shared.deliver.callback import build_callback
from shared.deliver.delivery import Delivery
from shared.deliver.outbox import CallbackSender
from shared.engine.errors import JobError
from shared.source import keys
from shared.source.queue import JobQueue


def test_undeliverable_callback_waits_in_the_outbox_until_the_backend_is_back(make_settings, redis_client, backend):
    sender = CallbackSender(make_settings(), redis_client)
    body = build_callback("v2", "job-1", "completed")
    backend.callback.down = True
    assert sender.send_terminal(body) == "undelivered"
    sender.add_to_outbox(body)
    assert sender.flush_outbox() == 0  # still down: rescheduled, not lost
    assert redis_client.zcard(keys.OUTBOX) == 1
    backend.callback.down = False
    redis_client.zadd(keys.OUTBOX, {m: 0 for m in redis_client.zrange(keys.OUTBOX, 0, -1)})  # due now
    assert sender.flush_outbox() == 1
    assert redis_client.zcard(keys.OUTBOX) == 0
    assert [c["job_id"] for c in backend.terminal_callbacks()] == ["job-1"]


def test_an_entry_claimed_by_a_sender_that_died_is_sent_again_later(make_settings, redis_client, backend):
    sender = CallbackSender(make_settings(), redis_client)
    sender.add_to_outbox(build_callback("v1", "job-2", "failed", error_message="x"))
    # A flusher claims it (pushing its due time out) and then dies before sending.
    claimed = sender._claim_due(keys=[keys.OUTBOX, sender.sending_key], args=[9e18, 10, 1.0])
    assert len(claimed) == 1 and redis_client.zcard(keys.OUTBOX) == 0  # hidden while being sent
    assert sender.flush_outbox() == 0  # nobody sends it twice
    JobQueue(redis_client, "reaper", keys.JOB_QUEUES).reap_worker(sender.settings.worker_id)  # its sender died
    assert sender.flush_outbox() == 1
    assert backend.terminal_callbacks("job-2")


def test_signed_callbacks_are_accepted_and_a_wrong_secret_is_recorded_as_rejected(make_settings, redis_client, backend):
    good = CallbackSender(make_settings(), redis_client)
    assert good.send_terminal(build_callback("v2", "job-3", "completed")) == "delivered"
    bad = CallbackSender(make_settings(job_callback_secret="not-the-secret"), redis_client)
    assert bad.send_terminal(build_callback("v2", "job-4", "completed")) == "rejected"
    rejected = json.loads(redis_client.lindex(keys.CALLBACK_REJECTED, 0))
    assert "401" in rejected["reason"] and "not-the-secret" not in json.dumps(rejected)


def test_progress_callbacks_are_never_outboxed(make_settings, redis_client, backend):
    backend.callback.down = True
    sender = CallbackSender(make_settings(), redis_client)
    assert not sender.send_progress(build_callback("v1", "job-5", "processing"))
    assert redis_client.zcard(keys.OUTBOX) == 0


def test_when_the_endpoint_answers_again_the_outbox_is_due_at_once(make_settings, redis_client, backend):
    """An outage pushes an entry's next try far out; the first success brings it forward."""
    sender = CallbackSender(make_settings(retry_base_seconds=100.0, callback_retries=1), redis_client)
    backend.callback.down = True
    parked = build_callback("v2", "job-6", "completed")
    assert sender.send_terminal(parked) == "undelivered"
    sender.add_to_outbox(parked)
    assert sender.flush_outbox() == 0  # failed again: next try 50 to 100 s from now
    assert redis_client.zrangebyscore(keys.OUTBOX, "-inf", "+inf", withscores=True)[0][1] > time.time() + 40
    backend.callback.down = False
    delivery = Delivery("v2", None, None, sender, redis_client, "w1")  # how every job is reported
    assert delivery.deliver("job-7", JobError("cancelled", "cancelled by request"))["status"] == "cancelled"
    assert sender.flush_outbox() == 1  # due now, not in a minute
    assert {c["job_id"] for c in backend.terminal_callbacks()} == {"job-6", "job-7"}


def test_a_dead_senders_callbacks_in_flight_come_back_when_it_is_reaped(make_settings, redis_client, backend):
    dying = CallbackSender(make_settings(worker_id="dying"), redis_client)
    dying.add_to_outbox(build_callback("v1", "job-8", "completed"))
    now = time.time()
    # Its attempt would be over in 0.5 s; then kill -9.
    assert dying._claim_due(keys=[keys.OUTBOX, dying.sending_key], args=[now, 10, now + 0.5])
    survivor = CallbackSender(make_settings(worker_id="survivor"), redis_client)
    assert survivor.flush_outbox() == 0  # hidden while "being sent" by the dead worker
    JobQueue(redis_client, "survivor", keys.JOB_QUEUES).reap_worker("dying")
    assert survivor.flush_outbox() == 0  # a worker that only stalled may still finish that attempt
    time.sleep(0.6)
    assert survivor.flush_outbox() == 1 and backend.terminal_callbacks("job-8")
    assert not redis_client.exists(dying.sending_key)

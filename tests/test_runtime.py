import io
import json
import time

import httpx
import pytest
from PIL import Image

from shared.deliver.media import probe_mp4
from shared.source import keys
from shared.source.admin import dead_letters
from shared.source.queue import element_key, request_cancel
from tests.backend_payloads import build_payload, element, push
from tests.helpers import running_worker, submit, wait_until
from workers.registry import build_worker
from workers.sim import SimEngine


def test_v1_end_to_end_images_and_video(make_settings, redis_client, backend):
    image = submit(redis_client, "v1", num_images=3, seed=41)
    video = submit(redis_client, "v1", "video_fast", frames=9, width=96, height=64)
    with running_worker(make_settings(contract="v1")):
        callbacks = backend.wait_for_terminal(2)
    by_id = {c["job_id"]: c for c in callbacks}
    done = by_id[image["id"]]
    assert done["status"] == "completed" and done["error_message"] is None
    user, jid = image["user_id"], image["id"]
    assert done["assets"] == [f"{user}/{jid}/{i}.png" for i in range(3)]
    assert done["metadata"]["seed"] == 41 and done["metadata"]["seeds"] == [41, 42, 43]
    assert done["metadata"]["num_images"] == 3 and done["metadata"]["generation_time"] > 0
    png, ctype = backend.objects[("sdxl_image_fast", f"{user}/{jid}/0.png")]
    assert ctype == "image/png" and Image.open(io.BytesIO(png)).size == (64, 64)
    thumb, ctype = backend.objects[("sdxl_image_fast", f"{user}/{jid}/0.thumb.webp")]
    assert ctype == "image/webp"

    vdone = by_id[video["id"]]
    key = f"{video['user_id']}/{video['id']}/0.mp4"
    assert vdone["assets"] == [key]
    mp4, ctype = backend.objects[("video_fast", key)]
    assert ctype == "video/mp4" and probe_mp4(mp4)["frames"] == 9
    assert ("video_fast", f"{video['user_id']}/{video['id']}/0.thumb.webp") not in backend.objects  # bucket takes videos only
    statuses = [c["status"] for c in backend.callbacks if c["job_id"] == image["id"]]
    assert statuses[0] == "processing" and statuses[-1] == "completed"
    assert redis_client.llen(keys.SDXL_QUEUE) == redis_client.llen(keys.WAN_QUEUE) == 0


def test_v2_end_to_end_asset_objects_in_workspace_temp(make_settings, redis_client, backend):
    image = submit(redis_client, "v2", num_images=2, seed=7)
    video = submit(redis_client, "v2", "video_high", frames=5, width=64, height=96)
    with running_worker(make_settings(contract="v2")):
        callbacks = backend.wait_for_terminal(2)
    by_id = {c["job_id"]: c for c in callbacks}
    assets = by_id[image["id"]]["assets"]
    prefix = f"{image['user_id']}/{image['id']}"
    assert [a["url"] for a in assets] == [f"{prefix}/0.png", f"{prefix}/1.png"]
    assert [a["thumbnail_url"] for a in assets] == [f"{prefix}/0.thumb.webp", f"{prefix}/1.thumb.webp"]
    assert [a["metadata"]["seed"] for a in assets] == [7, 8]
    assert assets[0]["metadata"]["width"] == 64 and assets[0]["metadata"]["steps"] == 4
    vasset = by_id[video["id"]]["assets"][0]
    assert vasset["type"] == "video" and vasset["url"].endswith("/0.mp4")
    assert vasset["metadata"]["frame_num"] == 5 and vasset["metadata"]["fps"] == 16
    thumb = Image.open(io.BytesIO(backend.objects[("workspace-temp", vasset["thumbnail_url"])][0]))
    assert max(thumb.size) == 96  # never upscaled past the frame itself
    assert {b for b, _ in backend.objects} == {"workspace-temp"}


def test_same_seed_same_pixels(make_settings, redis_client, backend):
    a = submit(redis_client, "v1", seed=1234)
    b = submit(redis_client, "v1", seed=1234)
    c = submit(redis_client, "v1", seed=1235)
    with running_worker(make_settings()):
        backend.wait_for_terminal(3)
    pixels = {p["id"]: backend.objects[("sdxl_image_fast", f"{p['user_id']}/{p['id']}/0.png")][0] for p in (a, b, c)}
    decoded = {k: Image.open(io.BytesIO(v)).tobytes() for k, v in pixels.items()}
    assert decoded[a["id"]] == decoded[b["id"]] != decoded[c["id"]]


def test_malformed_payloads_fail_or_dead_letter_and_the_worker_keeps_serving(make_settings, redis_client, backend):
    good = build_payload("v1", "sdxl_image_fast", "fine", width=64, height=64, steps=2)
    bad_steps = dict(good, id="bad-steps", config=dict(good["config"], num_inference_steps=-3))
    huge = dict(good, id="huge-prompt", prompt="x" * 1_000_000)
    traversal = dict(good, id="bad-user", user_id="../../x")
    no_user = {k: v for k, v in good.items() if k != "user_id"} | {"id": "no-user"}
    for raw in ["not json", json.dumps([1, 2]), json.dumps({"prompt": "no id"}),
                    json.dumps(bad_steps), json.dumps(huge), json.dumps(traversal), json.dumps(no_user)]:
        redis_client.lpush(keys.SDXL_QUEUE, raw)
    push(redis_client, "v1", good)
    with running_worker(make_settings()) as worker:
        callbacks = backend.wait_for_terminal(5)
        wait_until(lambda: len(dead_letters(redis_client)) == 3)
        assert worker.state in ("ready", "busy")
    by_id = {c["job_id"]: c for c in callbacks}
    assert by_id[good["id"]]["status"] == "completed"
    for job_id, error_type, fragment in [
        ("bad-steps", "invalid_parameter", "steps=-3"),
        ("huge-prompt", "invalid_parameter", "1000000 characters"),
        ("bad-user", "invalid_payload", "safe path segment"),
        ("no-user", "invalid_payload", "no user_id"),
    ]:
        assert by_id[job_id]["status"] == "failed"
        assert by_id[job_id]["metadata"]["error_type"] == error_type
        assert fragment in by_id[job_id]["error_message"]
    reasons = sorted(d["reason"] for d in dead_letters(redis_client))
    assert any("not JSON" in r for r in reasons) and any("array of 2" in r for r in reasons)
    assert any("no id" in r for r in reasons)
    assert redis_client.llen(keys.processing(worker.worker_id, keys.SDXL_QUEUE)) == 0


def test_storage_500_then_200_loses_nothing(make_settings, redis_client, backend):
    jobs = [submit(redis_client, "v1") for _ in range(3)]
    backend.storage.fail_next = 4
    with running_worker(make_settings(storage_retries=6)):
        callbacks = backend.wait_for_terminal(3)
    assert sorted(c["job_id"] for c in callbacks) == sorted(j["id"] for j in jobs)
    assert all(c["status"] == "completed" for c in callbacks)


def test_storage_down_past_retries_requeues_then_dead_letters_with_one_failed_callback(make_settings, redis_client, backend):
    job = submit(redis_client, "v1")
    backend.storage.down = True
    with running_worker(make_settings(storage_retries=1, max_attempts=2)):
        callbacks = backend.wait_for_terminal(1, timeout=30)
        wait_until(lambda: dead_letters(redis_client))
    assert callbacks[0]["job_id"] == job["id"] and callbacks[0]["status"] == "failed"
    assert callbacks[0]["metadata"]["error_type"] == "storage_unavailable"
    assert "after 2 attempts" in dead_letters(redis_client)[0]["reason"]
    assert len(backend.terminal_callbacks(job["id"])) == 1


def test_callback_endpoint_down_then_up_loses_nothing(make_settings, redis_client, backend):
    jobs = [submit(redis_client, "v2") for _ in range(3)]
    backend.callback.down = True
    with running_worker(make_settings(contract="v2", lease_seconds=0.6)) as worker:
        wait_until(lambda: redis_client.zcard(keys.OUTBOX) == 3)
        # Every job was let go of only because its callback sits safely in the outbox.
        assert redis_client.llen(keys.processing(worker.worker_id, keys.SDXL_QUEUE)) == 0
        backend.callback.down = False
        callbacks = backend.wait_for_terminal(3, timeout=20)
        wait_until(lambda: redis_client.zcard(keys.OUTBOX) == 0)
    assert sorted(c["job_id"] for c in callbacks) == sorted(j["id"] for j in jobs)
    assert all(len(backend.terminal_callbacks(j["id"])) == 1 for j in jobs)


def test_cancel_a_running_job_between_steps(make_settings, redis_client, backend):
    job = submit(redis_client, "v2", steps=100)
    with running_worker(make_settings(contract="v2"), engine=SimEngine(gpu_seconds=5)):
        wait_until(lambda: any(c["job_id"] == job["id"] for c in backend.callbacks))  # processing
        request_cancel(redis_client, job["id"])
        callbacks = backend.wait_for_terminal(1, timeout=5)
    assert callbacks[0]["status"] == "cancelled" and callbacks[0]["metadata"]["error_type"] == "cancelled"
    assert not backend.objects


def test_cancel_before_start_is_reported_as_v1_failure(make_settings, redis_client, backend):
    job = submit(redis_client, "v1")
    request_cancel(redis_client, job["id"])
    with running_worker(make_settings()):
        callbacks = backend.wait_for_terminal(1)
    assert callbacks[0]["status"] == "failed" and callbacks[0]["metadata"]["error_type"] == "cancelled"


def test_compatible_jobs_share_an_engine_call_and_get_their_own_images(make_settings, redis_client, backend):
    calls = []

    class RecordingSim(SimEngine):
        def run(self, jobs, ctx):
            calls.append([j.id for j in jobs])
            return super().run(jobs, ctx)

    same = [submit(redis_client, "v1", num_images=2, seed=10 * i) for i in range(3)]
    other = submit(redis_client, "v1", num_images=1, width=128, height=128)
    with running_worker(make_settings(batch_wait_ms=200), engine=RecordingSim(gpu_seconds=0.01, max_batch_images=6)):
        callbacks = backend.wait_for_terminal(4)
    assert sorted(map(len, calls)) == [1, 3]
    assert {other["id"]} in [set(c) for c in calls]
    by_id = {c["job_id"]: c for c in callbacks}
    for i, job in enumerate(same):
        assert by_id[job["id"]]["metadata"]["seeds"] == [10 * i, 10 * i + 1]
        assert len(by_id[job["id"]]["assets"]) == 2


def test_a_job_that_runs_past_its_timeout_fails_clearly(make_settings, redis_client, backend):
    submit(redis_client, "v1", steps=50)
    with running_worker(make_settings(job_timeout_seconds=0.3), engine=SimEngine(gpu_seconds=5)):
        callbacks = backend.wait_for_terminal(1)
    assert callbacks[0]["status"] == "failed" and callbacks[0]["metadata"]["error_type"] == "timeout"


def test_an_engine_crash_is_retried_then_dead_lettered_with_one_failed_callback(make_settings, redis_client, backend):
    class Broken(SimEngine):
        def run(self, jobs, ctx):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    job = submit(redis_client, "v1")
    with running_worker(make_settings(max_attempts=3), engine=Broken()) as worker:
        callbacks = backend.wait_for_terminal(1)
        assert worker.counts["retried"] == 2
    assert callbacks[0]["job_id"] == job["id"] and callbacks[0]["metadata"]["error_type"] == "internal_error"
    assert "illegal memory access" in callbacks[0]["error_message"]
    assert dead_letters(redis_client)[0]["job_id"] == job["id"]


def test_health_and_metrics(make_settings, redis_client, backend):
    submit(redis_client, "v1")
    with running_worker(make_settings(), health_port=0) as worker:
        backend.wait_for_terminal(1)
        base = f"http://127.0.0.1:{worker.http.port}"
        health = httpx.get(f"{base}/health")
        assert health.status_code == 200 and health.json()["status"] in ("ready", "busy")
        assert health.json()["completed"] == 1
        assert "test-service-key" not in health.text and "test-callback-secret" not in health.text
        metrics = httpx.get(f"{base}/metrics").text
        assert 'ourvidz_jobs_total{outcome="completed"} 1.0' in metrics
        assert 'ourvidz_queue_depth{queue="sdxl_queue"} 0.0' in metrics
        assert 'ourvidz_stage_seconds_count{stage="publish"} 1.0' in metrics
        assert "ourvidz_batch_images_count 1.0" in metrics
        worker.state = "starting"
        assert httpx.get(f"{base}/health").status_code == 503


def test_engine_setup_failure_reports_failed_and_exits_nonzero(make_settings, redis_client):
    class NoModel(SimEngine):
        def setup(self, device):
            raise FileNotFoundError("model.safetensors")

    worker = build_worker(NoModel(), make_settings(), install_signal_handlers=False)
    assert worker.run() == 1 and worker.state == "failed"


@pytest.mark.parametrize("era", ["v1", "v2"])
def test_max_jobs_exits_after_that_many_and_leaves_the_rest(make_settings, redis_client, backend, era):
    for _ in range(3):
        submit(redis_client, era)
    worker = build_worker(SimEngine(gpu_seconds=0.01), make_settings(contract=era, prefetch_jobs=0), max_jobs=2,
                          install_signal_handlers=False)
    assert worker.run() == 0
    assert len(backend.terminal_callbacks()) == 2
    assert redis_client.llen(keys.SDXL_QUEUE) == 1


def test_a_job_that_keeps_killing_its_worker_is_dead_lettered_with_a_failed_callback(make_settings, redis_client, backend):
    job = submit(redis_client, "v2")
    # Three earlier claims died with their worker (kill -9 after claiming, each time): the reaper
    # charged the element (counted by its content, never parsed) three attempts.
    redis_client.hset(keys.ATTEMPTS, element_key(element("v2", job)), 3)
    with running_worker(make_settings(contract="v2", max_attempts=3)):
        callbacks = backend.wait_for_terminal(1)
        wait_until(lambda: dead_letters(redis_client))
    assert callbacks[0]["status"] == "failed" and callbacks[0]["metadata"]["error_type"] == "max_attempts_exceeded"
    assert "gave up after 3 attempts" in callbacks[0]["error_message"]
    assert dead_letters(redis_client)[0]["job_id"] == job["id"]
    assert not backend.objects  # it never reached the engine


def test_an_ack_that_redis_refuses_is_retried_by_the_keeper(make_settings, redis_client, backend):
    import redis as redis_lib

    job = submit(redis_client, "v1")
    with running_worker(make_settings(lease_seconds=0.6)) as worker:
        worker.keeper.redis_retry_attempts = 2
        real_handover, failures = worker.queue.handover, []

        def flaky_handover(*args, **kwargs):
            if len(failures) < 3:  # two tries in the post thread, one more from the keeper
                failures.append(1)
                raise redis_lib.ConnectionError("Redis went away")
            return real_handover(*args, **kwargs)

        worker.queue.handover = flaky_handover
        backend.wait_for_terminal(1)
        wait_until(lambda: redis_client.llen(keys.processing(worker.worker_id, keys.SDXL_QUEUE)) == 0, 10)
        assert len(failures) == 3
    assert json.loads(redis_client.get(keys.result(job["id"])))["status"] == "completed"
    assert len(backend.terminal_callbacks(job["id"])) == 1


def test_a_worker_stopped_before_it_starts_exits_cleanly_without_claiming(make_settings, redis_client, backend):
    class CountingSetup(SimEngine):
        setups = 0

        def setup(self, device):
            CountingSetup.setups += 1

    submit(redis_client, "v1")
    worker = build_worker(CountingSetup(), make_settings(), install_signal_handlers=False)
    worker.stop(grace=0)
    assert worker.run() == 0
    assert CountingSetup.setups == 0 and redis_client.llen(keys.SDXL_QUEUE) == 1


@pytest.mark.parametrize("error", [TypeError("unexpected keyword argument 'strenght'"),
                                   ModuleNotFoundError("No module named 'scipy'"), ValueError("bad shape")])
def test_a_deterministic_engine_error_fails_the_job_at_once(make_settings, redis_client, backend, error):
    calls = []

    class Buggy(SimEngine):
        def run(self, jobs, ctx):
            calls.append(len(jobs))
            raise error

    job = submit(redis_client, "v2")
    with running_worker(make_settings(contract="v2", max_attempts=3), engine=Buggy()) as worker:
        callbacks = backend.wait_for_terminal(1)
        assert worker.counts["retried"] == 0
    assert calls == [1]  # one try on the GPU, not MAX_ATTEMPTS
    assert callbacks[0]["job_id"] == job["id"] and callbacks[0]["status"] == "failed"
    assert callbacks[0]["metadata"]["error_type"] == "internal_error"
    assert type(error).__name__ in callbacks[0]["error_message"] and "not retried" in callbacks[0]["error_message"]
    assert dead_letters(redis_client) == [] and redis_client.llen(keys.SDXL_QUEUE) == 0


def test_a_deterministic_decode_error_fails_at_once_and_a_lost_connection_is_retried(make_settings, redis_client,
                                                                                      backend, monkeypatch):
    from dataclasses import replace

    from shared.decode.decoder import plan_as_given
    from workers.registry import ENGINES

    planned = []

    def flaky_planner(job, tools):  # decode, ahead of the GPU: reference downloads and the like
        planned.append(job.prompt)
        if job.prompt == "typo":
            raise TypeError("plan() got an unexpected keyword argument")
        if job.prompt == "network" and planned.count("network") == 1:
            raise ConnectionError("connection reset by peer")
        return plan_as_given(job, tools)

    class Flaky(SimEngine):
        name = "flaky"

    monkeypatch.setitem(ENGINES, "flaky", replace(ENGINES["sim"], name="flaky", planner=flaky_planner))
    typo, network = submit(redis_client, "v1", prompt="typo"), submit(redis_client, "v1", prompt="network")
    with running_worker(make_settings(max_attempts=3), engine=Flaky()):
        callbacks = {c["job_id"]: c for c in backend.wait_for_terminal(2)}
    assert planned.count("typo") == 1 and callbacks[typo["id"]]["metadata"]["error_type"] == "internal_error"
    assert planned.count("network") == 2 and callbacks[network["id"]]["status"] == "completed"


def test_a_worker_that_stalls_past_its_lease_while_calling_back_reports_once(make_settings, redis_client, backend):
    """The job leaves the queue before its callback goes out: a reaper finds nothing to run again,
    and the callback it returns to the outbox is withdrawn when the stalled sender gets through."""
    stalled = make_settings(lease_seconds=0.6, worker_id="stalled", callback_timeout_seconds=3.0)
    with running_worker(make_settings(lease_seconds=0.6, worker_id="reaper"), queues=("elsewhere",)):
        with running_worker(stalled) as worker:
            sender = worker.stages.delivery.sender
            real_send = sender.send_terminal

            def stalled_send(body):  # the process starves while it calls back: presumed dead
                worker.queue.heartbeat = lambda: None
                time.sleep(2.0)  # longer than the whole lease
                return real_send(body)

            sender.send_terminal = stalled_send
            job = submit(redis_client, "v1")
            wait_until(lambda: worker.counts["completed"] == 1, 15)
            assert redis_client.zscore(keys.LEASES, "stalled") is None  # it was reaped meanwhile
        time.sleep(3.0)  # past the stalled attempt's deadline: anything left in the outbox would go out
    assert [c["status"] for c in backend.terminal_callbacks(job["id"])] == ["completed"]
    assert redis_client.zcard(keys.OUTBOX) == 0

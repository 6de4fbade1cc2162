import io
import json
import threading
import time

import pytest

from shared.source import keys
from shared.source.admin import dead_letters
from shared.source.queue import JobQueue
from tests.conftest import TEST_REDIS_URL
from workers.cli.main import main


@pytest.fixture
def cli_env(monkeypatch, tmp_path, backend):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    monkeypatch.setenv("STORAGE_URL", f"file://{tmp_path}/outputs")
    monkeypatch.setenv("SUPABASE_URL", backend.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "test-service-key")
    monkeypatch.setenv("JOB_CALLBACK_SECRET", "test-callback-secret")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    return monkeypatch


def _out(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]


def test_submit_pushes_like_the_v1_backend(cli_env, redis_client, capsys):
    assert main(["submit", "sdxl_image_high", "a fox", "--num-images", "3", "--seed", "9"]) == 0
    job_id = _out(capsys)[0]["job_id"]
    element = redis_client.lindex(keys.SDXL_QUEUE, 0)
    payload = json.loads(element)  # v1: the payload's JSON text itself
    assert payload["id"] == job_id and payload["bucket"] == "sdxl_image_high"
    assert payload["config"]["num_images"] == 3 and payload["config"]["seed"] == 9


def test_submit_pushes_like_the_v2_backend(cli_env, redis_client, capsys):
    cli_env.setenv("CONTRACT", "v2")
    main(["submit", "video_fast", "waves"])
    main(["submit", "video_high", "more waves"])
    first, second = (o["job_id"] for o in _out(capsys))
    elements = redis_client.lrange(keys.WAN_QUEUE, 0, -1)
    decoded = [json.loads(json.loads(e)[0]) for e in elements]  # v2: array of the payload's text
    assert [d["id"] for d in decoded] == [first, second]  # RPUSH: oldest on the left
    assert decoded[0]["job_type"] == "wan_video_fast"


def test_cancel_a_queued_job_removes_it_and_reports_it(cli_env, redis_client, backend, capsys):
    cli_env.setenv("CONTRACT", "v2")
    main(["submit", "sdxl_image_fast", "a fox"])
    job_id = _out(capsys)[0]["job_id"]
    assert main(["cancel", job_id]) == 0
    assert _out(capsys)[0]["cancelled"] == "queued"
    assert redis_client.llen(keys.SDXL_QUEUE) == 0
    assert [c["status"] for c in backend.terminal_callbacks(job_id)] == ["cancelled"]


def test_cancel_a_running_job_sets_the_flag_and_an_unknown_one_fails(cli_env, redis_client, capsys):
    redis_client.lpush(keys.SDXL_QUEUE, json.dumps({"id": "job-running", "type": "sdxl_image_fast"}))
    queue = JobQueue(redis_client, "w-running", keys.JOB_QUEUES, "v1")
    queue.register()
    claimed = queue.claim(0)  # in w-running's processing list now: claimed ahead, not started
    assert main(["cancel", "job-running"]) == 0
    reply = _out(capsys)[0]
    assert reply["cancelled"] == "requested" and reply["worker"] == "w-running"
    assert reply["note"].startswith("claimed, not started")
    assert redis_client.exists(keys.cancel("job-running"))
    queue.on_engine([claimed])  # on the GPU now
    assert main(["cancel", "job-running"]) == 0
    assert _out(capsys)[0]["note"].startswith("running: the worker stops it at its next step")
    assert main(["cancel", "no-such-job"]) == 1
    assert "no job no-such-job is queued or running" in capsys.readouterr().err
    assert not redis_client.exists(keys.cancel("no-such-job"))  # no flag left behind for a job that is not there


def test_dlq_list_and_requeue(cli_env, redis_client, capsys):
    redis_client.lpush(keys.SDXL_QUEUE, json.dumps({"id": "j-dead", "type": "sdxl_image_fast"}))
    queue = JobQueue(redis_client, "w", keys.JOB_QUEUES, "v1")
    queue.dead_letter(queue.claim(0), "testing", job_id="j-dead")
    assert main(["dlq", "list"]) == 0
    assert _out(capsys)[0]["job_id"] == "j-dead"
    assert main(["dlq", "requeue"]) == 2
    assert main(["dlq", "requeue", "j-dead"]) == 0
    assert _out(capsys)[-1] == {"requeued": 1}
    assert redis_client.llen(keys.SDXL_QUEUE) == 1 and redis_client.llen(keys.DEAD_LETTER) == 0


def test_submit_wait_that_times_out_says_the_job_stays_queued(cli_env, redis_client, capsys):
    assert main(["submit", "sdxl_image_fast", "a fox", "--wait", "--timeout", "0.3"]) == 1
    printed = capsys.readouterr()
    job_id, err = json.loads(printed.out.splitlines()[0])["job_id"], printed.err
    assert f"job {job_id} stays queued on sdxl_queue and will still run when a worker takes it" in err
    assert f"ourvidz-worker cancel {job_id}" in err
    assert redis_client.llen(keys.SDXL_QUEUE) == 1  # still there, as the line says


def test_dlq_drop_and_purge(cli_env, redis_client, capsys, monkeypatch):
    queue = JobQueue(redis_client, "w", keys.JOB_QUEUES, "v1")
    for job_id in ("d1", "d2", "d3", "d4"):
        redis_client.lpush(keys.SDXL_QUEUE, json.dumps({"id": job_id, "type": "sdxl_image_fast"}))
        queue.dead_letter(queue.claim(0), "testing", job_id=job_id)
    assert main(["dlq", "drop"]) == 2
    assert "dlq drop needs one or more JOB_IDs" in capsys.readouterr().err
    assert main(["dlq", "drop", "d1", "d2"]) == 0
    assert _out(capsys)[-1] == {"dropped": 2}
    assert sorted(r["job_id"] for r in dead_letters(redis_client)) == ["d3", "d4"]
    assert main(["dlq", "drop", "d3", "gone"]) == 1  # one dropped, one was never there: said so
    assert "not dead-lettered: gone (" in capsys.readouterr().err
    # purge asks first: no terminal to answer, so nothing is dropped without --yes
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["dlq", "purge"]) == 2
    assert "--yes answers it" in capsys.readouterr().err and redis_client.llen(keys.DEAD_LETTER) == 1
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    assert main(["dlq", "purge"]) == 0  # answered "y" at the prompt
    assert _out(capsys)[-1] == {"dropped": 1} and redis_client.llen(keys.DEAD_LETTER) == 0
    redis_client.lpush(keys.SDXL_QUEUE, json.dumps({"id": "d5", "type": "sdxl_image_fast"}))
    queue.dead_letter(queue.claim(0), "testing", job_id="d5")
    assert main(["dlq", "purge", "--yes"]) == 0
    assert _out(capsys)[-1] == {"dropped": 1} and redis_client.llen(keys.DEAD_LETTER) == 0


def test_queue_report(cli_env, redis_client, capsys):
    main(["submit", "image_fast", "a cat"])
    capsys.readouterr()
    assert main(["queue"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queues"]["wan_queue"] == 1 and report["dead_letters"] == 0


def test_doctor_reports_one_line_per_check(cli_env, redis_client, backend, capsys, tmp_path):
    cli_env.setenv("STORAGE_URL", "supabase")
    assert main(["doctor", "--model", str(tmp_path / "missing")]) == 1
    out = capsys.readouterr().out
    assert "ok    redis: Redis" in out and "ok    storage:" in out and "ok    callback:" in out
    assert "FAIL  model" in out and "does not exist" in out
    cli_env.setenv("REDIS_URL", "redis://:hunter2secret@127.0.0.1:1/0")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  redis:" in out and "hunter2secret" not in out
    assert "redis://:***@127.0.0.1:1/0" in out  # the URL it tried, password hidden


def test_doctor_names_the_url_fails_a_404_and_a_refused_port_at_once(cli_env, backend, capsys):
    cli_env.setenv("CALLBACK_URL", f"{backend.url}/functions/v1/no-such-function")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  callback: {backend.url}/functions/v1/no-such-function answered 404" in out
    assert "not deployed" in out
    cli_env.setenv("CALLBACK_URL", "http://127.0.0.1:1/functions/v1/job-callback")
    cli_env.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    started = time.monotonic()
    assert main(["doctor"]) == 1
    spent = time.monotonic() - started
    out = capsys.readouterr().out
    assert "FAIL  callback: cannot connect to http://127.0.0.1:1/functions/v1/job-callback" in out
    assert "FAIL  redis: cannot reach Redis at redis://127.0.0.1:1/0" in out
    assert spent < 5.0, spent  # refused ports fail at once, not after a client's retries


def test_submit_wait_prints_the_result(cli_env, redis_client, capsys):
    from shared.ops.settings import Settings
    from workers.registry import build_worker
    from workers.sim import SimEngine

    settings = Settings(worker_id="cli-wait")
    worker = build_worker(SimEngine(gpu_seconds=0.01), settings, max_jobs=1, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    code = main(["submit", "sdxl_image_fast", "a fox", "--size", "64x64", "--steps", "2", "--wait", "--timeout", "30"])
    thread.join(timeout=30)
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("\n") + 1:])
    assert result["status"] == "completed" and result["assets"][0].endswith("/0.png")


def test_engines_without_a_model_and_unknown_tiny_models_say_so(cli_env, capsys):
    assert main(["run", "wan"]) == 2
    assert "run wan needs --model" in capsys.readouterr().err
    assert main(["run", "sdxl"]) == 2
    assert main(["make-tiny-model", "nothing", "/tmp/x"]) == 2
    assert main(["make-tiny-model", "sim", "/tmp/x"]) == 2  # the sim engine needs no model

"""A newcomer's mistakes, run as a newcomer runs them (the real command in a fresh process): each
gets at most three lines that say what is wrong, no traceback, and a non-zero exit status."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import TEST_REDIS_URL

DOWN = {"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_WAIT_SECONDS": "0.6"}


def ourvidz(args, env=None, timeout=120):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CONTRACT", "STORAGE", "SUPABASE"))}
    environment.update({"REDIS_URL": TEST_REDIS_URL, "LOG_LEVEL": "WARNING"}, **(env or {}))
    done = subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr


def mistakes(tiny_models):
    sdxl, wan, chat = tiny_models
    return [
        # (command, environment, exit status, what the line must say)
        (["queue"], DOWN, 1, "cannot reach Redis at redis://127.0.0.1:1/0"),
        (["submit", "sdxl_image_fast", "a fox"], DOWN, 1, "start redis-server"),
        (["dlq", "list"], DOWN, 1, "REDIS_URL"),
        (["cancel", "some-job"], DOWN, 1, "cannot reach Redis"),
        (["run", "sim", "--device", "cpu"], DOWN, 1, "gave up after 0.6 s"),
        (["bench", "fleet", "--jobs", "1"], DOWN, 1, "cannot reach Redis"),
        (["queue"], {"CONTRACT": "v3"}, 2, "CONTRACT='v3'"),
        (["queue"], {"LEASE_SECONDS": "abc"}, 2, "LEASE_SECONDS='abc'"),
        (["queue"], {"REDIS_URL": "notaurl"}, 2, "must be a redis://"),
        (["queue"], {"PRESETS_FILE": "/no/such/presets.toml"}, 2, "no presets file"),
        (["queue"], {"STORAGE_URL": "supabase"}, 2, "STORAGE_URL=supabase needs SUPABASE_URL"),
        (["queue"], {"SDXL_MAX_BATCH_IMAGES": "many"}, 2, "SDXL_MAX_BATCH_IMAGES"),
        (["queue"], {"LOG_LEVEL": "loud"}, 2, "LOG_LEVEL"),
        (["run", "chat", "--model", "/no/such/model", "--device", "cpu"], {}, 2, "no such file or folder"),
        (["run", "sdxl", "--model", chat, "--device", "cpu"], {}, 2, "needs a diffusers SDXL folder"),
        (["run", "wan", "--model", sdxl, "--device", "cpu"], {}, 2, "StableDiffusionXLPipeline folder; run wan"),
        (["run", "chat", "--model", wan, "--device", "cpu"], {}, 2, "WanPipeline folder; run chat"),
        (["run", "sdxl", "--model", sdxl], {"DEVICE": "cuda"}, 2, "no CUDA GPU is visible"),
        (["run", "sim", "--queues", "bogus_queue", "--device", "cpu"], {}, 2, "run sim serves sdxl_queue, wan_queue"),
        (["submit", "sdxl_image_fast", "a fox", "--size", "64"], {}, 2, "--size takes WIDTHxHEIGHT"),
        (["submit", "sdxl_image_fast", "a fox", "--size", "abc"], {}, 2, "--size takes WIDTHxHEIGHT"),
        (["submit", "sdxl_image_fast", "a fox", "--size", "7x7"], {}, 2, "outside [64, 2048]"),
        (["submit", "sdxl_image_fast", "a fox", "--size", "100x100"], {}, 2, "multiples of 8"),
        (["submit", "sdxl_image_fast", "a fox", "--num-images", "0"], {}, 2, "num_images=0"),
        (["submit", "sdxl_fast", "a fox"], {}, 2, "valid types: sdxl_image_fast, sdxl_image_high"),
        (["submit", "video_fast", "waves", "--steps", "999"], {}, 2, "steps"),
        (["cancel", "no-such-id"], {}, 1, "no job no-such-id is queued or running"),
        (["dlq", "requeue", "no-such-id"], {}, 1, "no dead-lettered job no-such-id"),
        (["make-tiny-model", "bogus", "/tmp/x"], {}, 2, "available: sdxl, wan, wan-vace, chat"),
        (["bench", "sdxl"], {}, 2, "needs --model"),
        (["bench", "sdxl", "--model", sdxl], {"DEVICE": "cuda"}, 2, "no CUDA GPU is visible here: use --device cpu"),
        (["bench", "all", "--variants", "worker,compiled"], {}, 2, "unknown variant compiled (known: worker"),
        (["bench", "chat", "--model", "/no/such/model"], {}, 2, "no such file or folder"),
        (["run", "nonsense"], {}, 2, "invalid choice"),
        (["submit"], {}, 2, "required"),
        # a mistake points at the help of the subcommand it was made in
        (["submit", "sdxl_image_fast", "a fox", "--images", "3"], {}, 2,
         "ourvidz-worker submit: unrecognized arguments: --images 3 (see ourvidz-worker submit --help)"),
        (["bench", "fleet", "--nope"], {}, 2, "(see ourvidz-worker bench fleet --help)"),
        (["dlq", "drop"], {}, 2, "dlq drop needs one or more JOB_IDs"),
        (["dlq", "purge"], {}, 2, "--yes answers it"),
    ]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_chat):
    from workers.sdxl.tiny import make_tiny_sdxl
    from workers.wan.tiny import make_tiny_wan

    root = tmp_path_factory.mktemp("mistakes")
    return str(make_tiny_sdxl(root / "sdxl")), str(make_tiny_wan(root / "wan")), str(tiny_chat)


def test_every_mistake_gets_one_clear_line_and_a_nonzero_exit(tiny_models, redis_client):
    cases = mistakes(tiny_models)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda case: ourvidz(case[0], case[1]), cases))
    for (args, env, status, says), (code, out, err) in zip(cases, results, strict=True):
        lines = [line for line in err.splitlines() if line.strip()]
        where = f"{' '.join(args)} with {env}: {err}"
        assert code == status, where
        assert "Traceback" not in err + out, where
        assert 1 <= len(lines) <= 3 and says in err, where
    assert redis_client.llen("sdxl_queue") == 0 and redis_client.llen("wan_queue") == 0  # nothing bad was queued


def test_run_waits_for_redis_with_a_line_per_retry_and_then_serves(redis_client, tmp_path):
    """Redis coming up while `run` waits: it retries, says so, and starts serving."""
    port = 6391
    server = None
    worker = subprocess.Popen([sys.executable, "-m", "workers.cli", "run", "sim", "--device", "cpu", "--max-jobs", "1"],
                              env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_WAIT_SECONDS": "6",
                                   "LOG_LEVEL": "WARNING", "STORAGE_URL": f"file://{tmp_path}"},
                              stderr=subprocess.PIPE, text=True)
    try:
        first = worker.stderr.readline()
        assert "retry 1 of 2 in 2 s" in first and f"127.0.0.1:{port}" in first
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL)
        code, out, err = ourvidz(["submit", "sdxl_image_fast", "a fox", "--size", "64x64", "--wait", "--timeout", "60"],
                                 {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "STORAGE_URL": f"file://{tmp_path}"})
        assert code == 0, err
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        if server is not None:
            server.terminate()
            server.wait(10)


def test_queue_piped_into_head_ends_quietly(redis_client):
    for i in range(2000):  # a report longer than the pipe's buffer
        redis_client.hset("ourvidz:worker_queues", f"w{i}", "[]")
    done = subprocess.run(f"{sys.executable} -m workers.cli queue | head -1", shell=True, capture_output=True,
                          text=True, env={**os.environ, "REDIS_URL": TEST_REDIS_URL, "LOG_LEVEL": "WARNING"},
                          timeout=60, check=False)
    assert done.stdout == "{\n" and done.stderr == ""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_every_command_at_once(tiny_models, redis_client, stop):
    """`run` stops gracefully on SIGTERM (tests/test_crash.py); every other command stops where it is:
    a benchmark mid-run, a submit waiting for its result."""
    sdxl = tiny_models[0]
    long_ones = [["bench", "sdxl", "--model", sdxl, "--device", "cpu", "--size", "256", "--steps", "40", "--jobs", "20"],
                 ["submit", "sdxl_image_fast", "a fox", "--size", "64x64", "--wait", "--timeout", "120"]]
    env = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "LOG_LEVEL": "WARNING"}
    running = [subprocess.Popen([sys.executable, "-m", "workers.cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for args in long_ones]
    time.sleep(10)  # well into the work (a stop while still importing is honoured at the start, too)
    for process in running:
        assert process.poll() is None, process.communicate()
        process.send_signal(stop)
    started = time.monotonic()
    for args, process in zip(long_ones, running, strict=True):
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130, (args, err[-1000:])
        assert err.strip().endswith("interrupted") and "Traceback" not in err, (args, err[-1000:])
    assert time.monotonic() - started < 15

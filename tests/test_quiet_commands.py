"""Quiet commands: no library warning reaches a user's terminal from any subcommand, each run in a
fresh process as a user runs it, unless LOG_LEVEL=DEBUG asks; then they are JSON records at debug
level. (torchao's failed kernel loads, torch's deprecations, transformers' torchvision notes and
Python warnings were 5 to 10 lines on every command.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import TEST_REDIS_URL

OURS = ("ourvidz-worker", "no dead-lettered jobs")  # the commands' own plain lines


def run(args: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "STORAGE_URL": f"file://{tmp_path}/outputs",
               "CALLBACK_URL": f"file://{tmp_path}/outputs/callbacks.jsonl", "LOG_LEVEL": "INFO", **env}
    for inherited in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):  # as a user's shell has
        environ.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True, timeout=240,
                          env=environ, cwd=tmp_path)


def library_lines(stderr: str) -> list[str]:
    """Lines a library wrote: anything that is neither one of our JSON events nor our own words."""
    noise = []
    for line in filter(str.strip, stderr.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            if not line.startswith(OURS):
                noise.append(line)
            continue
        if not isinstance(record, dict) or "logger" in record:  # a standard-library record: a library's
            noise.append(line)
    return noise


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    from workers.sdxl.tiny import make_tiny_sdxl

    return str(make_tiny_sdxl(tmp_path_factory.mktemp("quiet") / "sdxl"))


def test_no_subcommand_prints_a_library_warning(tmp_path, tiny_sdxl_dir, redis_client):
    commands = [
        ["make-tiny-model", "sdxl", str(tmp_path / "sdxl")],
        ["make-tiny-model", "wan", str(tmp_path / "wan")],
        ["make-tiny-model", "chat", str(tmp_path / "chat")],
        ["run", "sdxl", "--model", tiny_sdxl_dir, "--device", "cpu", "--max-jobs", "0"],
        ["submit", "sdxl_image_fast", "a fox", "--size", "64x64"],
        ["queue"],
        ["dlq", "list"],
        ["cancel", "no-such-job"],
        ["doctor"],
        ["bench", "sdxl", "--model", tiny_sdxl_dir, "--device", "cpu", "--size", "64", "--steps", "2", "--jobs", "1"],
    ]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda args: run(args, tmp_path), commands))
    for args, result in zip(commands, done, strict=True):
        assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])
        assert library_lines(result.stderr) == [], (args, library_lines(result.stderr))
    assert [d.returncode for d in done] == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0], [(c, d.stderr[-500:]) for c, d in
                                                                           zip(commands, done, strict=True)]


def test_with_an_fp8_switch_on_torchao_and_torch_stay_quiet_too(tmp_path, tiny_sdxl_dir, redis_client):
    """torchao is imported then (transformers imports it), and torch's pytree warns about its enums
    through torch's own stderr handler while it does: two `W… register_constant` lines, until that
    handler gave way to ours. TORCH_LOGS keeps torch's own output for whoever asks for it."""
    commands = [["make-tiny-model", "chat", str(tmp_path / "chat")],
                ["run", "sdxl", "--model", tiny_sdxl_dir, "--device", "cpu", "--max-jobs", "0"]]
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda args: run(args, tmp_path, SDXL_FP8="weights"), commands))
    for args, result in zip(commands, done, strict=True):
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert library_lines(result.stderr) == [], (args, library_lines(result.stderr))
    asked = run(["make-tiny-model", "chat", str(tmp_path / "chat-logs")], tmp_path, SDXL_FP8="weights",
                TORCH_LOGS="+dynamo")
    assert "register_constant" in asked.stderr  # the lines exist: the quiet above is not their absence


def test_at_debug_the_libraries_speak_as_json_records_at_debug_level(tmp_path):
    done = run(["make-tiny-model", "sdxl", str(tmp_path / "sdxl")], tmp_path, LOG_LEVEL="DEBUG")
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    from_libraries = [r for r in records if "logger" in r]
    assert from_libraries, done.stderr[-2000:]  # transformers has things to say about torchvision
    assert {r["level"] for r in from_libraries} == {"debug"}
    assert not [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("{")]


def test_torchao_is_imported_only_when_an_fp8_switch_asks(tmp_path):
    probe = ("import sys; from workers.accel.torchao_import import hide_torchao_unless_asked as hide; hide(); "
             "import diffusers.models.modeling_utils, transformers.modeling_utils; "
             "print('torchao' in sys.modules and sys.modules['torchao'] is not None)")
    quiet = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=240,
                           env={**os.environ, "SDXL_FP8": "off"})
    asked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=240,
                           env={**os.environ, "SDXL_FP8": "weights"})
    assert quiet.stdout.strip() == "False", quiet.stderr[-1000:]
    assert asked.stdout.strip() == "True", asked.stderr[-1000:]

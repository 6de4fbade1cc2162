"""COMPILE_CACHE_DIR: a compiled worker started again takes inductor's compiled graphs from the
folder the first start filled, instead of compiling them (inductor, really compiling, on the CPU)."""

import json
import os

from shared.ops.compile_cache import use_compile_cache
from workers.bench.cold_start import run as cold_start
from workers.registry import build_worker
from workers.sim import SimEngine


def test_a_second_start_takes_every_compiled_graph_from_the_cache():
    report = cold_start("wan", "cpu", tiny=True)  # two fresh processes sharing one empty cache folder
    empty, warm = report["starts"]["empty cache"], report["starts"]["warm cache"]
    assert empty["graphs"] == warm["graphs"] >= 2  # the same warm-up: an image and a clip
    assert empty["cache_hits"] == 0 and empty["cache_misses"] >= 2
    assert warm["cache_hits"] == empty["cache_misses"] and warm["cache_misses"] == 0
    assert "| warm cache |" in report["table"]


def test_a_worker_points_torch_compile_at_the_folder_before_its_engine_sets_up(make_settings, redis_client, tmp_path,
                                                                              monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    seen = []

    class Recording(SimEngine):
        def setup(self, device):
            seen.append(os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
            raise RuntimeError("enough: setup was reached")

    worker = build_worker(Recording(), make_settings(compile_cache_dir=str(tmp_path / "cc")),
                          install_signal_handlers=False)
    assert worker.run() == 1
    assert seen == [str(tmp_path / "cc")] and (tmp_path / "cc").is_dir()


def test_a_cache_folder_that_cannot_be_made_is_logged_and_the_worker_goes_on(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torch-default")
    (tmp_path / "a-file").write_text("not a folder")
    assert use_compile_cache(str(tmp_path / "a-file" / "cache")) is None
    assert use_compile_cache(None) is None and use_compile_cache("") is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/torch-default"  # torch's own, untouched
    logged = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "compile_cache_unusable" in line]
    assert len(logged) == 1 and "NotADirectoryError" in logged[0]["error"]

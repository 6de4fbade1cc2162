"""`ourvidz-worker bench all --device cpu --tiny`: every benchmark, one well-formed report."""

import json
import os
import statistics
import subprocess
import sys

from tests.conftest import TEST_REDIS_URL
from workers.bench.report import row as report_row
from workers.cli.main import main


def test_bench_all_on_the_tiny_models_writes_one_report_with_every_bench(tmp_path, monkeypatch, redis_client, capsys):
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    monkeypatch.setattr("workers.bench.measure.SAMPLE_BUDGET_S", 0.0)  # the minimum of samples: a shorter suite
    assert main(["bench", "all", "--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())
    assert isinstance(rows, list) and {row["bench"] for row in rows} == {"sdxl", "wan", "chat", "fleet"}
    assert not [row for row in rows if "error" in row]
    for row in rows:
        metric = row["metric"]
        assert {"bench", "device", "settings", "baseline", "ours", "ratio"} <= set(row) and row["device"] == "CPU"
        assert row["baseline"][metric] > 0 and row["ours"][metric] > 0
        assert abs(row["ratio"] - row["ours"][metric] / row["baseline"][metric]) < 0.01  # measured in the same run
        if row["bench"] in ("sdxl", "wan"):
            assert row["ours"]["ms_per_step"] > 0 and 0 < row["ours"]["mfu"] < 1
            assert row["peak_tflops_measured"] > 0
        timed = [side for side in (row["baseline"], row["ours"]) if "samples" in side]
        assert row["ours"] in timed  # every figure of ours is a median of samples ...
        if row["bench"] in ("sdxl", "wan"):  # and the tiny baseline was sampled in turn with it, for each row
            assert len(row["baseline"]["samples"]) == len(row["ours"]["samples"])
        for side in timed:  # ... of at least 3, with its spread around it
            low, high = side["spread"]
            assert len(side["samples"]) >= 3 and low <= side[metric] <= high
            middle = statistics.median(side["samples"])
            assert abs(side[metric] - middle) <= 1e-4 + 1e-3 * middle  # the median, to its rounding
    # the one-stream decoder row says where a token's time went (operators on a CPU, kernels on a GPU)
    [profiled] = [row for row in rows if "step_profile" in row["ours"]]
    assert profiled["settings"]["rows"] == 1 and profiled["ours"]["step_profile"]["operators_per_token"] > 0
    table = (tmp_path / "report.md").read_text()
    assert "Chat decoding profile: one stream" in table
    assert "s/image" in table and "tokens/s" in table and "samples)" in table  # units and spreads shown
    assert table.count("\n| sdxl") + table.count("\n| wan") + table.count("\n| chat") + table.count("\n| fleet") == len(rows)
    assert "| bench |" in capsys.readouterr().out  # and the table is printed


def test_a_bench_cut_short_keeps_the_rows_it_measured_and_runs_only_the_variants_asked(tmp_path, monkeypatch):
    """A lease ends mid-run: every finished row is already in report.json and report.md. The variants
    run in the order asked (the one a deadline must not cut goes first)."""
    import workers.bench.all_engines as bench_all

    def sdxl(device, name, tiny, tmp, peak, configs, asked):
        for key in bench_all.chosen(asked, ("worker", "vae-bf16", "compile")):
            yield report_row("sdxl", name, {"variant": key}, ("stock", 2.0), (key, 1.0), "seconds", "lower")
        raise KeyboardInterrupt  # the lease's timeout

    monkeypatch.setitem(bench_all.BENCHES, "sdxl", sdxl)
    monkeypatch.setattr(bench_all, "peak_tflops", lambda device: 1.0)
    try:
        bench_all.run_all("cpu", True, tmp_path, ("sdxl",), variants=("compile", "batched-guidance", "worker"))
    except KeyboardInterrupt:
        pass
    rows = json.loads((tmp_path / "report.json").read_text())
    assert [row["ours"]["name"] for row in rows] == ["compile", "worker"]
    assert "| sdxl | variant compile |" in (tmp_path / "report.md").read_text()


def test_every_variant_a_bench_has_is_one_the_command_line_accepts_and_the_reverse():
    """--variants checks names against a list kept apart from the benches (so that --help needs no torch)."""
    from workers.bench.all_engines import sdxl_variants, wan_variants
    from workers.cli.bench_options import VARIANTS

    on_cuda = {*sdxl_variants("cuda"), *wan_variants("cuda")}
    assert on_cuda == set(VARIANTS)
    assert {*sdxl_variants("cpu"), *wan_variants("cpu")} < on_cuda  # compiling and FP8 only on a GPU


def test_the_step_clock_marks_each_step_once_however_many_inputs_report_it():
    from workers.bench.measure import StepClock

    clock = StepClock("cpu")
    for step in (1, 2, 3):
        for item in ("a", "b", "c", "d"):  # a batch of four reports every step four times
            clock.progress(item, step, 3)
    assert len(clock.marks) == 3 and clock.ms_per_step() >= 0


def test_a_variant_that_fails_leaves_its_error_and_the_next_variant_still_runs():
    import workers.bench.all_engines as bench_all

    def fp8():
        yield {"bench": "sdxl", "variant": "fp8", "seconds": 1.0}
        raise RuntimeError("FP8 mode dynamic needs an FP8 GPU")

    rows = [*bench_all._guarded("sdxl", "cpu", "CPU", "fp8", fp8()),
            *bench_all._guarded("sdxl", "cpu", "CPU", "worker", iter([{"bench": "sdxl", "variant": "worker"}]))]
    assert [row.get("error", "").split(":")[0] for row in rows] == ["", "RuntimeError", ""]
    from workers.bench.report import markdown

    assert rows[1]["variant"] == "fp8" and "FP8 GPU" in markdown(rows[1:2], "CPU", 1.0, True, 1.0)


def test_the_lease_script_runs_sdxl_wan_and_chat_and_keeps_each_report(tmp_path):
    """scripts/bench-gpu.sh (what made bench-reports/), on the tiny models and the CPU."""
    from shared.ops.settings import REPO_ROOT

    env = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "BENCH_ARGS": "--tiny", "PYTHON": sys.executable,
           "SDXL_VARIANTS": "worker", "WAN_VARIANTS": "worker", "SDXL_DEADLINE": "150", "WAN_DEADLINE": "300"}
    done = subprocess.run(["bash", "scripts/bench-gpu.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=320)
    assert done.returncode == 0, done.stdout + done.stderr
    for bench in ("sdxl", "wan"):
        rows = json.loads((tmp_path / bench / "report.json").read_text())
        assert rows and all(row["bench"] == bench and "error" not in row for row in rows)
        assert {row["ours"]["name"] for row in rows} == {"worker"}
    chat = json.loads((tmp_path / "chat" / "report.json").read_text())
    assert chat and all(row["bench"] == "chat" and "error" not in row for row in chat)
    assert "torch" in (tmp_path / "machine.txt").read_text() and "| wan |" in done.stdout


def test_random_weight_sdxl_is_the_same_model_on_every_build_and_leaves_the_global_rng_alone(tmp_path):
    """Each bench variant builds its pipeline anew and their pixels are compared: the 2026-12-04 H200
    run drew new weights for every variant, which made every pixel difference meaningless."""
    import torch

    from workers.bench.sdxl import random_weights_pipeline
    from workers.sdxl.tiny import make_tiny_sdxl

    folder = str(make_tiny_sdxl(tmp_path / "sdxl"))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first, second = (random_weights_pipeline(folder, None, torch.float32) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first.unet.parameters(), second.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.vae.decoder.conv_out.weight, second.vae.decoder.conv_out.weight)
    other = random_weights_pipeline(folder, None, torch.float32, seed=1)
    assert not torch.equal(first.unet.conv_in.weight, other.unet.conv_in.weight)


def test_bench_compare_counts_the_rows_whose_ratios_agree_and_refuses_reports_that_do_not_pair(tmp_path, capsys):
    def report(name: str, ratios: list[float]) -> str:
        rows = [report_row("wan", "CPU", {"media": media}, ("stock", 1.0), ("worker", r), "seconds_per_job", "lower")
                for media, r in zip(("video", "image", "video"), ratios, strict=True)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(rows))
        return str(tmp_path / name)

    first, second = report("a", [1.0, 0.5, 2.0]), report("b", [1.1, 0.6, 2.0])
    assert main(["bench", "compare", first, f"{second}/report.json", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [round(r["apart_percent"], 1) for r in result["rows"]] == [10.0, 20.0, 0.0]
    assert result["summary"]["within"] == 2 and result["summary"]["rows"] == 3
    assert round(result["summary"]["worst_percent"], 1) == 20.0
    assert main(["bench", "compare", first, second, "--within", "25"]) == 0
    assert "3 of 3 rows within 25 %" in capsys.readouterr().out
    other = tmp_path / "c"
    other.mkdir()
    (other / "report.json").write_text(json.dumps([report_row("sdxl", "CPU", {"mode": "x"}, ("s", 1.0), ("w", 1.0),
                                                               "seconds", "lower")]))
    assert main(["bench", "compare", first, str(other)]) == 2  # rows of different benchmarks do not pair
    assert "the reports' rows differ" in capsys.readouterr().err


def test_the_chat_bench_counts_a_burst_answered_when_every_request_of_every_round_was():
    """A burst of n concurrent requests runs in several rounds (its samples): 12 of 12 is all answered
    (the goal once compared the count with n, and 12 of 12 read as missed), 11 of 12 is not."""
    from workers.bench.chat import _goals

    def serving(answered: int) -> dict:
        return {"concurrent": {4: {"answered": answered, "requests": 12, "tokens_per_second": 900.0}},
                "one_at_a_time": {"tokens_per_second": 300.0}, "short_beside_long_s": 0.1,
                "short_alone_p50_s": 0.05, "long_s": 1.0, "health_idle": {"median_ms": 1.0},
                "unauthorized_idle": {"median_ms": 1.0}}

    assert _goals({"serving": serving(12)})["4 concurrent: all answered, none reset"] is True
    assert _goals({"serving": serving(11)})["4 concurrent: all answered, none reset"] is False

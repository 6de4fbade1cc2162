"""`ourvidz-worker bench all --device cpu --tiny`: every benchmark, one well-formed report."""

import json

from tests.conftest import TEST_REDIS_URL
from workers.cli import main


def test_bench_all_on_the_tiny_models_writes_one_report_with_every_bench(tmp_path, monkeypatch, redis_client, capsys):
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
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
    table = (tmp_path / "report.md").read_text()
    assert table.count("\n| sdxl") + table.count("\n| wan") + table.count("\n| chat") + table.count("\n| fleet") == len(rows)
    assert "| bench |" in capsys.readouterr().out  # and the table is printed

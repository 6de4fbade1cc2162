from tests.conftest import TEST_REDIS_URL
from workers.bench.fleet import run_fleet_bench


def test_fleet_bench_runs_both_modes_to_completion_and_cleans_up(redis_client):
    report = run_fleet_bench(jobs=3, gpu_seconds=0.05, upload_latency=0.01, callback_latency=0.01,
                             redis_url=TEST_REDIS_URL, size=64)
    assert report["pipelined"]["jobs_completed"] == report["serial"]["jobs_completed"] == 3
    for mode in ("pipelined", "serial"):
        m = report[mode]
        assert 0 < m["gpu_busy_fraction"] < 1 and m["wall_seconds"] > 3 * 0.05
    assert "pipelined is" in report["table"]
    assert not [k for k in redis_client.keys("bench:*")]

"""The operator's view: alert rules that promtool accepts and whose unit tests pass, and a Grafana
dashboard and rules that name only metrics a real worker exports."""

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from shared.source import keys
from tests.helpers import running_worker, submit, wait_until

MONITORING = Path(__file__).resolve().parents[1] / "configs" / "monitoring"
METRIC = re.compile(r"\b(ourvidz_[a-z_]+|up)\b(?!\s*\()")


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool (Debian's prometheus package) is needed; .ci/run installs it"
    return subprocess.run([tool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0 and "4 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def _expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return exprs


def test_the_dashboard_covers_what_operators_watch():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(panel["targets"] for panel in dashboard["panels"])
    text = " ".join(_expressions())
    for metric in ("ourvidz_queue_depth", "ourvidz_queue_oldest_age_seconds", "ourvidz_in_flight_jobs",
                   "ourvidz_jobs_total", "ourvidz_gpu_busy_seconds_total", "ourvidz_generation_seconds_bucket",
                   "ourvidz_outbox_callbacks", "ourvidz_dead_letters", "up{"):
        assert metric in text, metric


@pytest.fixture
def scraped(make_settings, redis_client):
    """A sim worker's /metrics after a job went through, with a job waiting and one dead-lettered."""
    with running_worker(make_settings(), health_port=0) as worker:
        submit(redis_client, "v1", "sdxl_image_fast")
        wait_until(lambda: worker.counts["completed"] == 1, 30)
        assert "ourvidz_jobs_total" in httpx.get(f"http://127.0.0.1:{worker.http.port}/metrics").text
    # Stopped, so nothing claims the job left waiting; the live gauges read Redis at each scrape.
    old = (datetime.now(UTC) - timedelta(seconds=90)).isoformat()
    redis_client.lpush(keys.WAN_QUEUE, json.dumps({"id": "waiting", "type": "video_fast", "created_at": old}))
    redis_client.lpush(keys.DEAD_LETTER, json.dumps({"job_id": "dead", "raw": "{}"}))
    return worker.metrics.render().decode()


def test_every_metric_the_rules_and_dashboard_name_is_exported(scraped):
    exported = {line.split("{")[0].split(" ")[0] for line in scraped.splitlines() if line and line[0] != "#"}
    named = {m for expr in _expressions() for m in METRIC.findall(expr)} - {"up"}  # `up` is Prometheus's own
    assert named and named <= exported, sorted(named - exported)


def test_the_live_gauges_say_what_redis_holds(scraped):
    def value(name: str, labels: str = "") -> float:
        line = next(line for line in scraped.splitlines() if line.startswith(name + (labels or " ")))
        return float(line.rsplit(" ", 1)[1])

    assert value("ourvidz_queue_depth", '{queue="wan_queue"}') == 1
    assert 85 <= value("ourvidz_queue_oldest_age_seconds", '{queue="wan_queue"}') < 200
    assert value("ourvidz_queue_oldest_age_seconds", '{queue="sdxl_queue"}') == 0  # empty: nobody waits
    assert value("ourvidz_dead_letters") == 1 and value("ourvidz_workers_alive") == 0  # it stopped
    assert value("ourvidz_jobs_total", '{outcome="completed"}') == 1
    assert value("ourvidz_gpu_busy_seconds_total") > 0
    assert value("ourvidz_generation_seconds_count", '{job_type="sdxl_image_fast"}') == 1

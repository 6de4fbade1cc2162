"""Prometheus metrics of one worker: its own registry, so tests and several workers never collide."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _LiveGauges:
    """Read at scrape time, in one Redis round trip (`view`, see Worker.scrape_view): this worker's
    queues (depth, age of the oldest job), its jobs in flight, and the fleet's dead letters,
    outbox and live workers; GPU memory from torch (if a GPU is in use)."""

    def __init__(self, view: Callable[[], dict[str, Any]], worker_id: str):
        self.view = view
        self.worker_id = worker_id

    def collect(self):
        depth = GaugeMetricFamily("ourvidz_queue_depth", "Jobs waiting in a Redis queue", labels=["queue"])
        age = GaugeMetricFamily("ourvidz_queue_oldest_age_seconds", "Age of the job next in line", labels=["queue"])
        singles = {
            "in_flight": GaugeMetricFamily("ourvidz_in_flight_jobs", "Jobs this worker holds (claimed, running, "
                                                                     "being delivered)"),
            "dead_letters": GaugeMetricFamily("ourvidz_dead_letters", "Dead-lettered jobs (fleet-wide)"),
            "outbox": GaugeMetricFamily("ourvidz_outbox_callbacks", "Callbacks waiting to be re-sent (fleet-wide)"),
            "workers_alive": GaugeMetricFamily("ourvidz_workers_alive", "Workers with a live lease (fleet-wide)"),
        }
        try:
            view = self.view()
            for queue, n in view["depth"].items():
                depth.add_metric([queue], n)
            for queue, seconds in view["oldest_age"].items():
                age.add_metric([queue], seconds)
            for name, family in singles.items():
                family.add_metric([], view[name])
        except Exception:  # Redis down: the scrape still answers, without these samples
            pass
        yield depth
        yield age
        yield from singles.values()
        gpu = _gpu_memory()
        if gpu is not None:
            family = GaugeMetricFamily("ourvidz_gpu_memory_bytes", "GPU memory", labels=["kind"])
            for kind, value in gpu.items():
                family.add_metric([kind], value)
            yield family


def _gpu_memory() -> dict[str, float] | None:
    import sys

    torch = sys.modules.get("torch")  # never import torch just to be scraped
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    free, total = torch.cuda.mem_get_info()
    return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved(),
            "free": free, "total": total}


class WorkerMetrics:
    def __init__(self, worker_id: str, engine: str):
        self.worker_id = worker_id
        self.registry = CollectorRegistry()
        labels = {"worker_id": worker_id, "engine": engine}
        self.jobs = Counter("ourvidz_jobs", "Jobs finished, by outcome", ["outcome"], registry=self.registry)
        self.stage_seconds = Histogram(
            "ourvidz_stage_seconds", "Seconds per job stage", ["stage"], buckets=STAGE_BUCKETS, registry=self.registry
        )
        self.batch_images = Histogram(
            "ourvidz_batch_images", "Images (or videos) per engine call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=self.registry,
        )
        self.busy = Gauge("ourvidz_worker_busy", "1 while the engine is running a batch", registry=self.registry)
        self.engine_rows = Gauge("ourvidz_engine_rows", "Requests a continuous engine (chat) is decoding now",
                                 registry=self.registry)
        # GPU-busy fraction = rate(ourvidz_gpu_busy_seconds_total): seconds the engine ran, summed.
        self.gpu_busy = Counter("ourvidz_gpu_busy_seconds", "Seconds the engine was running", registry=self.registry)
        self.generation_seconds = Histogram(
            "ourvidz_generation_seconds", "Seconds a job spent on the engine, by job type", ["job_type"],
            buckets=STAGE_BUCKETS, registry=self.registry)
        self.info = Gauge("ourvidz_worker_info", "Worker identity", list(labels), registry=self.registry)
        self.info.labels(**labels).set(1)

    def watch_queues(self, view: Callable[[], dict[str, Any]]) -> None:
        """Report what `view` reads from Redis at each scrape (the worker's queues and the fleet's)."""
        self.registry.register(_LiveGauges(view, self.worker_id))

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one worker: its own registry, so tests and several workers never collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _LiveGauges:
    """Read at scrape time: queue depths from Redis, GPU memory from torch (if a GPU is in use)."""

    def __init__(self, queue_depths: Callable[[], dict[str, int]], worker_id: str):
        self.queue_depths = queue_depths
        self.worker_id = worker_id

    def collect(self):
        depth = GaugeMetricFamily("ourvidz_queue_depth", "Jobs waiting in a Redis queue", labels=["queue"])
        try:
            for queue, n in self.queue_depths().items():
                depth.add_metric([queue], n)
        except Exception:  # Redis down: the scrape still answers, without this gauge's samples
            pass
        yield depth
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
    def __init__(self, worker_id: str, engine: str, queue_depths: Callable[[], dict[str, int]]):
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
        self.info = Gauge("ourvidz_worker_info", "Worker identity", list(labels), registry=self.registry)
        self.info.labels(**labels).set(1)
        self.registry.register(_LiveGauges(queue_depths, worker_id))

    def render(self) -> bytes:
        return generate_latest(self.registry)

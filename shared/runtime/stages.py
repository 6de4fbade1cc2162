"""What the runtime does with an image or video job at each stage, besides running the engine.

The runtime is the same for every engine; the stages say how its jobs are decoded, how their
start and progress are announced, and how their outcome is reported. `GenerationStages` is the
SDXL/WAN/sim one: decode through `Decoder`, progress as `processing` callbacks, outcomes through
`Delivery`. The chat engine has its own (workers/chat/stages.py): replies instead of callbacks.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from shared.decode.decoder import Decoder, Plan
from shared.deliver.callback import PROCESSING, build_callback
from shared.deliver.delivery import Delivery, Release
from shared.source.element import Era


class Stages(Protocol):
    def parse(self, raw: str) -> Any:
        """The typed job (with `.id`), or a JobError/BadPayload saying why not."""

    def plan(self, job: Any) -> Plan:
        """Everything ahead of the GPU: references, enhancement, the engine's input."""

    def started(self, task: Any) -> Future | None:
        """The job reached the GPU (best effort)."""

    def progress(self, task: Any, meta: dict[str, Any]) -> Future | None:
        """Step i of n (best effort, already throttled)."""

    def report(self, task: Any, outcome: Any, release: Release | None) -> dict[str, Any]:
        """The job's one terminal report; `release` lets go of it at its source."""


class GenerationStages:
    def __init__(self, decoder: Decoder, delivery: Delivery, era: Era, progress_workers: int = 2):
        self.decoder = decoder
        self.delivery = delivery
        self.era = era
        # Progress has its own small pool so it never waits behind uploads.
        self._progress_pool = ThreadPoolExecutor(progress_workers, thread_name_prefix="progress")

    def parse(self, raw: str):
        return self.decoder.parse(raw)

    def plan(self, job) -> Plan:
        return self.decoder.plan(job)

    def started(self, task) -> Future:
        return self.progress(task, {"job_type": task.job.type, "progress": 0.0})

    def progress(self, task, meta: dict[str, Any]) -> Future:
        body = build_callback(self.era, task.job_id, PROCESSING, metadata=meta)
        return self._progress_pool.submit(self.delivery.sender.send_progress, body)

    def report(self, task, outcome, release: Release | None) -> dict[str, Any]:
        plan = task.plan
        return self.delivery.deliver(
            task.job_id, outcome, job=plan.job if plan else task.job, facts=plan.facts if plan else None,
            asset_facts=plan.asset_facts if plan else None, started_at=task.started_at or task.prepared_at,
            release=release)

    def close(self) -> None:
        self._progress_pool.shutdown(wait=True)
        if self.delivery.upload_pool is not None:
            self.delivery.upload_pool.shutdown(wait=True)

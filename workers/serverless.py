"""A RunPod serverless handler running the same engines, for users who prefer endpoints to pods.

The endpoint's input is a job payload exactly as the backend queues it (either era, any wrapping).
The engine is loaded once per container (ENGINE and MODEL_PATH in the environment); each request
is parsed, run, published to storage and called back like a queued job, and the handler also
returns the callback body, so a caller may use either. `python -m workers.serverless` starts it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from shared.engine.contract import Engine, NoStops
from shared.engine.errors import BadPayload, JobError
from shared.ops.compile_cache import use_compile_cache
from shared.ops.failures import as_job_error
from shared.ops.settings import Settings


class ServerlessRunner:
    """One request at a time: decode, run, deliver, with the worker's own decode and delivery."""

    def __init__(self, engine: Engine, settings: Settings, device: str, **wiring):
        from shared.source.queue import connect
        from workers.registry import build_stages

        self.engine = engine
        # The same decode and delivery as a queue worker; only the source differs.
        self.stages = build_stages(engine, settings, connect(settings.effective_redis_url), **wiring)
        use_compile_cache(settings.compile_cache_dir)  # a cold start loads what an earlier container compiled
        engine.setup(device)

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        payload = event.get("input", event)
        started = time.monotonic()
        job = plan = None
        try:
            job = self.stages.parse(payload)
            plan = self.stages.plan(job)
            outcome = self.engine.run([plan.input], NoStops())[0]
        except BadPayload as exc:
            if exc.job_id is None:
                return {"status": "failed", "error_message": exc.message, "metadata": {"error_type": exc.error_type}}
            outcome = exc
        except JobError as exc:
            outcome = exc
        except Exception as exc:
            outcome = as_job_error(exc, "generation")
        job_id = job.id if job is not None else getattr(outcome, "job_id", None) or str(payload.get("id", ""))
        delivery = self.stages.delivery
        try:
            return delivery.deliver(job_id, outcome, job=plan.job if plan else job, facts=plan.facts if plan else None,
                                    asset_facts=plan.asset_facts if plan else None, started_at=started)
        except JobError as exc:  # publishing failed: report that instead
            return delivery.deliver(job_id, exc, job=plan.job if plan else job)


def main() -> None:  # pragma: no cover - needs the runpod package and a RunPod endpoint
    import runpod

    from workers.registry import spec_for

    spec = spec_for(os.environ.get("ENGINE", "sdxl"))
    model = os.environ.get("MODEL_PATH")
    if model and spec.check_model is not None:
        spec.check_model(model)
    settings = Settings()
    runner = ServerlessRunner(spec.build(model, settings, {}), settings, os.environ.get("DEVICE", "cuda"))
    runpod.serverless.start({"handler": runner.handle})


if __name__ == "__main__":
    main()

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

from shared.callback import COMPLETED, FAILED, build_callback
from shared.contract import BadPayload, JobError, load_presets, parse_job
from shared.engine import Engine, JobResult, NoStops
from shared.outbox import CallbackSender
from shared.publish import job_metadata, publish
from shared.queue import connect
from shared.settings import Settings
from shared.storage import BucketPolicy, Uploader, make_storage


class ServerlessRunner:
    def __init__(self, engine: Engine, settings: Settings, device: str):
        self.engine = engine
        self.settings = settings
        self.presets = load_presets(str(settings.presets_file))
        self.policy = BucketPolicy(self.presets)
        self.uploader = Uploader(make_storage(settings), self.policy, settings.storage_retries, settings.retry_base_seconds)
        self.sender = CallbackSender(settings, connect(settings.effective_redis_url))
        engine.setup(device)

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        payload = event.get("input", event)
        started = time.monotonic()
        try:
            job = self.engine.prepare(parse_job(payload, self.presets, self.settings.preset_policy))
            outcome = self.engine.run([job], NoStops())[0]
            if isinstance(outcome, JobError):
                raise outcome
            assert isinstance(outcome, JobResult)
            assets = publish(outcome, self.settings.contract, self.uploader, self.policy)
            meta = job_metadata(job, outcome) | {"generation_time": round(time.monotonic() - started, 3)}
            body = build_callback(self.settings.contract, job.id, COMPLETED, assets, metadata=meta)
        except JobError as exc:
            if isinstance(exc, BadPayload) and exc.job_id is None:
                return {"status": FAILED, "error_message": exc.message, "metadata": {"error_type": exc.error_type}}
            body = build_callback(self.settings.contract, exc.job_id or str(payload.get("id", "")), FAILED,
                                  error_message=exc.message, metadata={"error_type": exc.error_type})
        if self.sender.deliver(body) == "undelivered":
            self.sender.add_to_outbox(body)  # re-sent by any pod worker sharing this Redis
        return body


def main() -> None:  # pragma: no cover - needs the runpod package and a RunPod endpoint
    import runpod

    from workers.cli import ENGINE_FACTORIES, build_parser

    engine_name = os.environ.get("ENGINE", "sdxl")
    args = build_parser().parse_args(["run", engine_name, "--device", os.environ.get("DEVICE", "cuda")])
    settings = Settings()
    runner = ServerlessRunner(ENGINE_FACTORIES[engine_name](args, settings), settings, args.device)
    runpod.serverless.start({"handler": runner.handle})


if __name__ == "__main__":
    main()

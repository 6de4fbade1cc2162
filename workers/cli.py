"""`ourvidz-worker`: run a worker, submit jobs, inspect and repair the queues, check a deployment."""

from __future__ import annotations

import signal

# An orchestrator may stop a worker while it is still importing torch or loading a model: note
# the request now, before anything slow, and let the worker honour it once it runs.
EARLY_STOP: list[int] = []


def _note_early_stop(signum, _frame):
    EARLY_STOP.append(signum)


signal.signal(signal.SIGTERM, _note_early_stop)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from shared import keys  # noqa: E402
from shared.logging import configure_logging  # noqa: E402
from shared.presets import load_presets  # noqa: E402
from shared.settings import Settings  # noqa: E402
from workers.registry import ENGINES, UsageError, build_worker, spec_for, tiny_model_builders  # noqa: E402


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "worker_id", None):
        overrides["worker_id"] = args.worker_id
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.secret_values())
    return settings


def _redis(settings: Settings):
    from shared.queue import connect

    return connect(settings.effective_redis_url)


# ------------------------------------------------------------------------------- commands


def cmd_run(args) -> int:
    settings = _settings(args)
    try:
        spec = spec_for(args.engine)
        engine = spec.build(args.model, settings, args)
    except UsageError as exc:  # a usage mistake, said in one line
        print(exc, file=sys.stderr)
        return 2
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip()) if args.queues else None
    worker = build_worker(engine, settings, queues=queues, device=args.device, max_jobs=args.max_jobs,
                          health_port=args.health_port)
    if EARLY_STOP:
        worker.stop(grace=0)
    return worker.run()


def cmd_submit(args) -> int:
    from workers.submit import push, submission

    settings = _settings(args)
    if args.type not in load_presets(str(settings.presets_file)).types:
        print(f"unknown job type {args.type!r}", file=sys.stderr)
        return 2
    size = None
    if args.size:
        width, height = (int(v) for v in args.size.lower().replace("*", "x").split("x"))
        size = (width, height)
    payload = submission(settings.contract, args.type, args.prompt, num_images=args.num_images, seed=args.seed,
                         size=size, steps=args.steps, frames=args.frames, user_id=args.user_id,
                         reference_image_url=args.reference_image_url)
    client = _redis(settings)
    queue = push(client, settings.contract, payload)
    print(json.dumps({"job_id": payload["id"], "queue": queue, "contract": settings.contract}))
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        record = client.get(keys.result(payload["id"]))
        if record:
            result = json.loads(record)
            print(json.dumps(result, indent=2))
            return 0 if result["status"] == "completed" else 1
        time.sleep(0.2)
    print(f"no result after {args.timeout:g}s (is a worker running for {queue}?)", file=sys.stderr)
    return 1


def cmd_queue(args) -> int:
    from shared.admin import queue_report

    settings = _settings(args)
    report = queue_report(_redis(settings), (*keys.JOB_QUEUES, keys.CHAT_QUEUE))
    print(json.dumps(report, indent=2))
    return 0


def cmd_dlq(args) -> int:
    from shared.admin import dead_letters, requeue_dead_letter

    settings = _settings(args)
    client = _redis(settings)
    if args.action == "list":
        for record in dead_letters(client):
            record["raw"] = record["raw"][:200]
            print(json.dumps(record))
        return 0
    if not args.job_id and not args.all:
        print("dlq requeue needs a JOB_ID or --all", file=sys.stderr)
        return 2
    moved = requeue_dead_letter(client, settings.contract, None if args.all else args.job_id)
    print(json.dumps({"requeued": moved}))
    return 0 if moved or args.all else 1


def cmd_cancel(args) -> int:
    from shared.admin import remove_queued
    from shared.deliver import Delivery
    from shared.errors import JobError
    from shared.outbox import CallbackSender
    from shared.queue import request_cancel

    settings = _settings(args)
    client = _redis(settings)
    request_cancel(client, args.job_id)  # a running job sees this between steps
    for queue in (*keys.JOB_QUEUES, keys.CHAT_QUEUE):
        if remove_queued(client, queue, args.job_id) is not None:
            # Still queued: no worker will ever see it, so report it here, the one way jobs are reported.
            delivery = Delivery(settings.contract, None, None, CallbackSender(settings, client), client,
                                settings.worker_id, settings.result_ttl_seconds)
            delivery.deliver(args.job_id, JobError("cancelled", "cancelled before it started"))
            client.delete(keys.cancel(args.job_id))
            print(json.dumps({"job_id": args.job_id, "cancelled": "queued", "queue": queue}))
            return 0
    print(json.dumps({"job_id": args.job_id, "cancelled": "requested",
                      "note": "not queued; a worker running it stops at its next step"}))
    return 0


def cmd_doctor(args) -> int:
    from workers.doctor import run_checks

    settings = _settings(args)
    return run_checks(settings, model=args.model, pod=args.pod)


def cmd_make_tiny_model(args) -> int:
    import importlib

    builders = tiny_model_builders()
    target = builders.get(args.engine)
    if target is None:
        print(f"no tiny model for {args.engine!r}; available: {', '.join(builders)} (the sim engine needs no model)",
              file=sys.stderr)
        return 2
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(args.dir)
    print(json.dumps({"engine": args.engine, "dir": args.dir}))
    return 0


def cmd_fetch_models(args) -> int:
    from workers.fetch_models import MODELS, FetchError, fetch_models

    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in only if m not in MODELS]
    if unknown:
        print(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(fetch_models(args.dest, only, args.sdxl, args.sdxl_sha256), indent=2))
    except FetchError as exc:
        print(f"fetch-models: {exc}", file=sys.stderr)
        return 1
    return 0


BENCHMARKS = {"fleet": "workers.bench_fleet", "sdxl": "workers.sdxl.bench", "wan": "workers.wan.bench",
              "chat": "workers.chat.bench"}


def cmd_bench(args) -> int:
    import importlib

    configure_logging("WARNING")
    if args.what != "fleet" and not args.model:
        print(f"bench {args.what} needs --model (a model, or a config folder with --random-weights)", file=sys.stderr)
        return 2
    report = importlib.import_module(BENCHMARKS[args.what]).run_from_args(args)
    print(json.dumps(report, indent=2) if args.json else report["table"])
    return 0


# --------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ourvidz-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a worker until stopped")
    run.add_argument("engine", choices=sorted(ENGINES))
    run.add_argument("--model", default=os.environ.get("MODEL_PATH"),
                     help="model directory or checkpoint (default: MODEL_PATH)")
    run.add_argument("--device", default="cuda", help="torch device (default cuda)")
    run.add_argument("--worker-id", help="unique id of this worker (default host-pid)")
    run.add_argument("--health-port", type=int,
                     help="serve /health and /metrics on this port (chat: the API port, default CHAT_PORT=7861)")
    run.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    run.add_argument("--queues", help="comma-separated queues (default: the engine's)")
    run.add_argument("--gpu-seconds", type=float, default=1.0, help="sim: simulated GPU time per image")
    run.add_argument("--batch-images", type=int, default=1, help="sim: images per engine call")
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser("submit", help="push a job in the deployment's contract era, as the backend does")
    submit.add_argument("type")
    submit.add_argument("prompt")
    submit.add_argument("--num-images", type=int, default=1)
    submit.add_argument("--seed", type=int)
    submit.add_argument("--size", help="WIDTHxHEIGHT")
    submit.add_argument("--steps", type=int)
    submit.add_argument("--frames", type=int)
    submit.add_argument("--user-id")
    submit.add_argument("--reference-image-url")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument("--timeout", type=float, default=600.0)
    submit.set_defaults(func=cmd_submit)

    sub.add_parser("queue", help="queue depths, jobs in flight, dead letters, outbox").set_defaults(func=cmd_queue)

    dlq = sub.add_parser("dlq", help="list or requeue dead-lettered jobs")
    dlq.add_argument("action", choices=["list", "requeue"])
    dlq.add_argument("job_id", nargs="?")
    dlq.add_argument("--all", action="store_true")
    dlq.set_defaults(func=cmd_dlq)

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=cmd_cancel)

    doctor = sub.add_parser("doctor", help="check Redis, storage, callbacks, GPU and model paths")
    doctor.add_argument("--model", action="append", default=[], help="a model path to check (repeatable)")
    doctor.add_argument("--pod", help="a pod file (configs/pod.toml): check the workers' GPU budgets fit the card")
    doctor.set_defaults(func=cmd_doctor)

    tiny = sub.add_parser("make-tiny-model", help="write a tiny random-weight model for tests")
    tiny.add_argument("engine")
    tiny.add_argument("dir")
    tiny.set_defaults(func=cmd_make_tiny_model)

    fetch = sub.add_parser("fetch-models", help="download the production models to the models volume")
    fetch.add_argument("--dest", default=os.environ.get("MODELS_DIR", "/models"))
    fetch.add_argument("--only", default="sdxl,wan,chat", help="comma-separated: sdxl, wan, chat")
    fetch.add_argument("--sdxl", help="SDXL checkpoint URL (.safetensors) or hub id (default: SDXL base 1.0)")
    fetch.add_argument("--sdxl-sha256", help="expected sha256 of the checkpoint at --sdxl")
    fetch.set_defaults(func=cmd_fetch_models)

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("what", choices=["fleet", "sdxl", "wan", "chat"])
    bench.add_argument("--jobs", type=int, default=20, help="fleet: jobs per run")
    bench.add_argument("--images", type=int, default=1, help="fleet: images per job")
    bench.add_argument("--workers", type=int, default=0,
                       help="fleet: simulate a fleet of N sim worker processes on one Redis instead")
    bench.add_argument("--idle-seconds", type=float, default=20.0, help="fleet --workers: idle window measured")
    bench.add_argument("--gpu-seconds", type=float, default=1.0)
    bench.add_argument("--upload-latency", type=float, default=0.2)
    bench.add_argument("--callback-latency", type=float, default=0.05)
    bench.add_argument("--size", type=int, default=1024, help="image side in pixels")
    bench.add_argument("--model", help="sdxl: model path, or a diffusers config folder with --random-weights")
    bench.add_argument("--random-weights", action="store_true", help="sdxl: real architecture, random weights")
    bench.add_argument("--device", default="cuda")
    bench.add_argument("--steps", type=int, default=25)
    bench.add_argument("--batch", type=int, default=6, help="sdxl: images per call when batching")
    bench.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    bench.add_argument("--compile", action="store_true", help="sdxl: torch.compile the UNet")
    bench.add_argument("--max-tokens", type=int, default=64, help="chat: tokens per answer")
    bench.add_argument("--concurrency", default="16,64", help="chat: concurrent callers to measure, comma-separated")
    bench.add_argument("--long-tokens", type=int, default=512, help="chat: the long request a short one runs beside")
    bench.add_argument("--backend", default="transformers", choices=["transformers", "vllm"], help="chat: generator")
    bench.add_argument("--wan-size", default="480x832", help="wan: WIDTHxHEIGHT")
    bench.add_argument("--frames", type=int, default=81, help="wan: video frames")
    bench.add_argument("--no-cache", action="store_true", help="wan: skip the first-block-cache run")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""`ourvidz-worker bench fleet`: how much of the wall time the GPU is busy, pipelined vs. serial.

The same N jobs run twice through the `sim` engine against a local backend whose storage and
callback endpoints answer with injected latency:
- pipelined: the fleet's runtime (claim ahead, publish and call back behind the GPU);
- serial: claim, infer, upload, call back, next — how the replaced workers ran.
GPU-busy fraction = simulated GPU seconds / wall seconds. Jobs go to bench-only queue names, so
the benchmark never touches the production queues of the Redis it is pointed at.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from shared.decode.presets import load_presets
from shared.deliver.callback import PROCESSING, build_callback
from shared.deliver.delivery import Delivery
from shared.deliver.outbox import CallbackSender
from shared.deliver.storage import BucketPolicy, SupabaseStorage, Uploader
from shared.engine.contract import NoStops
from shared.ops.settings import Settings
from shared.source.producer import push, submission
from shared.source.queue import JobQueue, connect
from workers.bench.local_backend import LocalBackend
from workers.registry import build_stages, build_worker
from workers.sim import SimEngine

BENCH_KEY = "bench-service-key"


def _settings(backend: LocalBackend, redis_url: str, worker_id: str) -> Settings:
    return Settings(
        redis_url=redis_url, contract="v1", storage_url="supabase", supabase_url=backend.url,
        supabase_service_key=BENCH_KEY, worker_id=worker_id, lease_seconds=10, batch_wait_ms=0,
    )


def _push_jobs(client, queue: str, jobs: int, size: int, images: int = 1) -> None:
    for i in range(jobs):
        payload = submission("v1", "sdxl_image_fast", f"bench job {i}", seed=i, size=(size, size), steps=25,
                             num_images=images)
        push(client, "v1", payload, queue=queue)


def _run_pipelined(settings: Settings, queue: str, jobs: int, gpu_seconds: float) -> float:
    worker = build_worker(SimEngine(gpu_seconds=gpu_seconds), settings, max_jobs=jobs, queues=(queue,),
                          install_signal_handlers=False)
    started = time.monotonic()
    worker.run()
    return time.monotonic() - started


def _run_serial(settings: Settings, queue: str, jobs: int, gpu_seconds: float) -> float:
    """One job at a time, every step in line: the replaced fleet's loop."""
    client = connect(settings.effective_redis_url)
    job_queue = JobQueue(client, settings.worker_id, (queue,), "v1")
    engine = SimEngine(gpu_seconds=gpu_seconds)
    stages = build_stages(engine, settings, client)
    policy = BucketPolicy(load_presets(str(settings.presets_file)))
    sender = CallbackSender(settings, client)
    delivery = Delivery("v1", Uploader(SupabaseStorage(settings.supabase_url, BENCH_KEY), policy, attempts=1), policy,
                        sender, client, settings.worker_id)
    started = time.monotonic()
    for _ in range(jobs):
        claimed = job_queue.claim(block_seconds=5)
        plan = stages.plan(stages.parse(claimed.raw))
        sender.send_progress(build_callback("v1", plan.job.id, PROCESSING))
        result = engine.run([plan.input], NoStops())[0]
        delivery.deliver(plan.job.id, result, job=plan.job, facts=plan.facts)  # call back, then let go
        job_queue.finish(claimed, plan.job.id)
    return time.monotonic() - started


def run_fleet_bench(
    jobs: int = 20,
    gpu_seconds: float = 1.0,
    upload_latency: float = 0.2,
    callback_latency: float = 0.05,
    redis_url: str = "redis://127.0.0.1:6379/0",
    size: int = 1024,
    images: int = 1,
    modes: tuple[str, ...] = ("pipelined", "serial"),
) -> dict[str, Any]:
    """`gpu_seconds` is per image; a job has `images` images, each a PNG and a WEBP thumbnail."""
    backend = LocalBackend(service_key=BENCH_KEY).start()
    backend.storage.latency = upload_latency
    backend.callback.latency = callback_latency
    client = connect(redis_url)
    run_id = uuid.uuid4().hex[:8]
    runners = {"pipelined": _run_pipelined, "serial": _run_serial}
    gpu_total = jobs * images * gpu_seconds
    try:
        results = {}
        for mode in modes:
            queue = f"bench:{run_id}:{mode}"
            before = len(backend.terminal_callbacks())
            _push_jobs(client, queue, jobs, size, images)
            wall = runners[mode](_settings(backend, redis_url, f"bench-{run_id}-{mode}"), queue, jobs, gpu_seconds)
            completed = len(backend.terminal_callbacks()) - before
            results[mode] = {"wall_seconds": round(wall, 3), "gpu_busy_fraction": round(gpu_total / wall, 4),
                             "jobs_completed": completed}
            client.delete(queue)
    finally:
        backend.stop()
        client.close()
    report = {
        "jobs": jobs, "images_per_job": images, "gpu_seconds_per_image": gpu_seconds, "gpu_seconds_total": gpu_total,
        "upload_latency_s": upload_latency, "callback_latency_s": callback_latency, "image_size": size,
        "uploads_per_job": 2 * images, **results,
    }
    if "serial" in results:
        report["speedup_vs_serial"] = round(results["serial"]["wall_seconds"] / results["pipelined"]["wall_seconds"], 3)
    report["table"] = _table(report)
    return report


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"fleet benchmark: {r['jobs']} sdxl_image_fast jobs x {r['images_per_job']} images "
        f"({r['image_size']}px PNG + WEBP thumbnail each), {r['gpu_seconds_per_image']:g} s simulated GPU per image, "
        f"{r['upload_latency_s'] * 1000:g} ms per upload, {r['callback_latency_s'] * 1000:g} ms per callback",
        f"{'mode':<10} {'wall s':>8} {'GPU busy':>9} {'completed':>10}",
    ]
    for mode in ("pipelined", "serial"):
        if mode in r:
            m = r[mode]
            lines.append(f"{mode:<10} {m['wall_seconds']:>8.2f} {m['gpu_busy_fraction']:>9.3f} {m['jobs_completed']:>10}")
    if "speedup_vs_serial" in r:
        lines.append(f"pipelined is {r['speedup_vs_serial']:.2f}x faster than serial")
    else:
        lines.append(f"wall time is {r['pipelined']['wall_seconds'] / r['gpu_seconds_total']:.3f}x the GPU time")
    return "\n".join(lines)


def run_from_args(args) -> dict[str, Any]:
    redis_url = Settings().effective_redis_url
    if args.workers:
        from workers.bench.scale import run_scale_bench

        return run_scale_bench(workers=args.workers, jobs=args.jobs, gpu_seconds=args.gpu_seconds,
                               idle_seconds=args.idle_seconds, redis_url=redis_url)
    fleet = run_fleet_bench(jobs=args.jobs, gpu_seconds=args.gpu_seconds, upload_latency=args.upload_latency,
                            callback_latency=args.callback_latency, redis_url=redis_url, size=args.size,
                            images=args.images)
    # The publishing scenario: a GPU making 4 images/s (H100-class SDXL), six-image jobs, slow uploads.
    publishing = run_fleet_bench(jobs=16, gpu_seconds=0.25, upload_latency=0.5, callback_latency=args.callback_latency,
                                 redis_url=redis_url, size=args.size, images=6, modes=("pipelined",))
    return {"fleet": fleet, "publishing": publishing, "table": fleet["table"] + "\n\n" + publishing["table"]}

"""A worker keeps nothing of a job once it is reported: references fetched for cancelled jobs go too."""

import gc
import io
import os
from dataclasses import replace

from PIL import Image

from shared.source.queue import request_cancel
from tests.backend_payloads import build_payload, push
from tests.helpers import running_worker, wait_until
from workers.registry import ENGINES
from workers.sdxl.plan import plan_sdxl
from workers.sim import SimEngine

JOBS = 72
SIDE = 1024  # a 1024x1024 RGB reference is 3 MiB once decoded


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def noisy_png(seed: int) -> bytes:
    image = Image.effect_noise((SIDE, SIDE), 64 + seed % 32).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ImageSim(SimEngine):
    """The sim engine behind SDXL's decode, so img2img references are really fetched and fitted."""

    name = "imagesim"


def test_cancelled_img2img_jobs_leave_no_references_behind(make_settings, redis_client, backend, monkeypatch):
    planned = []

    def plan_then_cancel(job, tools):  # the user cancels just after the reference was fetched
        plan = plan_sdxl(job, tools)
        assert plan.input.reference is not None and plan.input.reference.size == (SIDE, SIDE)
        planned.append(job.id)
        request_cancel(redis_client, job.id)
        return plan

    monkeypatch.setitem(ENGINES, "imagesim", replace(ENGINES["sim"], name="imagesim", planner=plan_then_cancel))
    backend.files["/refs/big.png"] = (200, noisy_png(0), {"Content-Type": "image/png"})

    def push_jobs(n):
        for _ in range(n):
            push(redis_client, "v2", build_payload("v2", "sdxl_image_fast", "a fox", width=SIDE, height=SIDE,
                                                   steps=2, reference_image_url=f"{backend.url}/refs/big.png"))

    settings = make_settings(contract="v2", reference_allow_private=True, prefetch_jobs=4)
    with running_worker(settings, engine=ImageSim(gpu_seconds=0.01)) as worker:
        push_jobs(4)  # warm up the decoders, allocators and pools first
        backend.wait_for_terminal(4, timeout=60)
        gc.collect()
        before = rss_bytes()
        push_jobs(JOBS)
        callbacks = backend.wait_for_terminal(4 + JOBS, timeout=120)
        wait_until(lambda: worker.counts["cancelled"] == 4 + JOBS, 10)  # counted just after the callback
        gc.collect()
        grown = rss_bytes() - before
    assert len(planned) == 4 + JOBS and {c["status"] for c in callbacks} == {"cancelled"}
    assert grown <= 40 * 1024 * 1024, f"resident memory grew by {grown / 2**20:.0f} MiB for {JOBS} cancelled jobs"

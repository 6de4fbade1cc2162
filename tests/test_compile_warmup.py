"""A compiled engine warms up every graph its jobs need before it says ready: after the warm-up,
jobs at every size and batch the presets serve compile nothing (counted with torch's own graph
counter), and a job that does compile is logged.

torch.compile runs with the `eager` backend: the same graph capture and guards, no kernels. Guards
that a convolution's kernel choice adds differ between the CPU and CUDA, so the SDXL check runs
with the UNet compiled by blocks (attention and linear layers, no convolutions) plus the VAE decoder.
"""

import json

import pytest
import torch

from shared.engine.contract import NoStops
from shared.engine.inputs import Generation
from shared.ops.engine_settings import SDXLSettings, WANSettings
from shared.ops.logging import configure_logging
from workers.accel.compile_watch import graphs_compiled
from workers.sdxl import engine as sdxl_engine_module
from workers.sdxl.engine import SDXLEngine
from workers.sdxl.speed import warmup_sizes
from workers.sdxl.tiny import make_tiny_sdxl
from workers.wan.engine import WANEngine
from workers.wan.tiny import make_tiny_wan

# The served sizes (1024x1024, 1024x576, 576x1024) scaled down 8 times: the same shapes, square
# and not, at a size the CPU makes quickly.
SMALL_SERVED = ((128, 128), (128, 72), (72, 128))


def sdxl_job(width: int, height: int, images: int, guidance: float) -> Generation:
    return Generation(id=f"{width}x{height}x{images}", media="image", prompt="a red fox in the snow",
                      negative_prompt="blurry", width=width, height=height, steps=2, guidance_scale=guidance,
                      scheduler="euler", seeds=tuple(range(images)))


def compiled_logs(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if '"compiled_during_job"' in line]


@pytest.fixture(autouse=True)
def no_graphs_from_earlier_tests():
    """Compiled code is kept per function, across module instances: a graph an earlier test made
    would hide a graph this warm-up forgot."""
    torch._dynamo.reset()


@pytest.fixture
def info_logs():
    configure_logging("INFO")
    yield
    configure_logging("WARNING")  # as tests/conftest.py set it


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    return str(make_tiny_sdxl(tmp_path_factory.mktemp("warm-sdxl")))


def test_after_the_warm_up_sdxl_compiles_nothing_at_any_served_size_and_batch(sdxl_model, monkeypatch, capfd):
    # The warm-up the engine runs on CUDA, at the scaled sizes.
    monkeypatch.setattr(sdxl_engine_module, "warmup_sizes",
                        lambda config, device: warmup_sizes(config, "cuda", sizes=SMALL_SERVED))
    config = SDXLSettings(compile=True, compile_backend="eager", compile_regional=True, compile_vae=True,
                          max_batch_images=4)
    engine = SDXLEngine(sdxl_model, config)
    engine.setup("cpu")
    warmed = graphs_compiled()
    jobs = [sdxl_job(w, h, n, 6.0) for w, h in SMALL_SERVED for n in (1, 2, 3, 4)]
    jobs += [sdxl_job(w, h, 1, 1.0) for w, h in SMALL_SERVED]  # guidance 1 (exact copy): no guidance batch
    for job in jobs:
        engine.run([job], NoStops())
        assert graphs_compiled() == warmed, f"{job.id} at guidance {job.guidance_scale} compiled a new graph"
    assert compiled_logs(capfd.readouterr().err) == []


def test_a_job_that_pays_for_a_compile_is_logged(sdxl_model, capfd):
    # Compiled, even with SDXL_WARMUP=false, it warms up; on a CPU only one small image with guidance.
    engine = SDXLEngine(sdxl_model, SDXLSettings(compile=True, compile_backend="eager", compile_regional=True,
                                                 warmup=False))
    engine.setup("cpu")
    engine.run([sdxl_job(64, 64, 1, 5.0)], NoStops())  # the warm-up's shape
    assert compiled_logs(capfd.readouterr().err) == []
    engine.run([sdxl_job(64, 64, 1, 1.0)], NoStops())  # no guidance: a UNet batch of 1, not warmed up here
    logged = compiled_logs(capfd.readouterr().err)
    assert len(logged) == 1 and logged[0]["graphs"] >= 1
    assert (logged[0]["engine"], logged[0]["width"], logged[0]["images"], logged[0]["guidance"]) == ("sdxl", 64, 1, 1.0)
    engine.run([sdxl_job(64, 64, 1, 1.0)], NoStops())  # the same shape again: nothing new
    assert compiled_logs(capfd.readouterr().err) == []


@pytest.mark.parametrize("batched_guidance", [False, True])
def test_after_the_warm_up_wan_compiles_nothing_at_other_sizes_lengths_and_guidance(tmp_path, batched_guidance,
                                                                                     info_logs, capfd):
    engine = WANEngine(str(make_tiny_wan(tmp_path)), WANSettings(compile=True, compile_backend="eager",
                                                                 batched_guidance=batched_guidance))
    engine.setup("cpu")
    warmed = graphs_compiled()
    warm_up = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"compile_warmed_up"' in line]
    assert len(warm_up) == 1 and warm_up[0]["engine"] == "wan" and warm_up[0]["graphs"] >= 2
    for width, height, frames, guidance in [(64, 64, 1, 5.0), (96, 48, 9, 5.0), (48, 96, 1, 1.0),
                                            (80, 80, 13, 1.0), (112, 64, 17, 6.5)]:
        job = Generation(id="w", media="video" if frames > 1 else "image", prompt="waves", negative_prompt="static",
                         width=width, height=height, steps=2, guidance_scale=guidance, scheduler="unipc",
                         seeds=(1,), frames=frames, shift=3.0)
        engine.run([job], NoStops())
        assert graphs_compiled() == warmed, f"{width}x{height}x{frames} at guidance {guidance} compiled a new graph"
    assert compiled_logs(capfd.readouterr().err) == []


@pytest.mark.parametrize("regional", [True, False])
def test_a_compile_past_its_budget_stops_and_the_worker_serves_eagerly(sdxl_model, monkeypatch, capfd, regional):
    """SDXL_COMPILE_BUDGET_SECONDS bounds a start: the warm-up shape that passes it is the last one
    compiled; the rest of the warm-up and every job run eagerly, and the log says so."""
    monkeypatch.setattr(sdxl_engine_module, "warmup_sizes",
                        lambda config, device: warmup_sizes(config, "cuda", sizes=SMALL_SERVED))
    config = SDXLSettings(compile=True, compile_backend="eager", compile_regional=regional, compile_vae=True,
                          max_batch_images=4, compile_budget_seconds=0.001)
    engine = SDXLEngine(sdxl_model, config)
    engine.setup("cpu")
    report = engine.warmup_report
    assert report[0]["graphs"] >= 1 and report[1] == {"compile_stopped_after_s": report[1]["compile_stopped_after_s"]}
    assert all(shape["graphs"] == 0 for shape in report[2:])  # nothing compiled after the budget
    assert not any(getattr(m, "_compiled_call_impl", None) for m in engine.pipe.unet.modules())
    assert not isinstance(engine.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert engine.img2img.unet is engine.pipe.unet
    assert not isinstance(engine.pipe.vae.decoder, torch._dynamo.eval_frame.OptimizedModule)
    before = graphs_compiled()
    engine.run([sdxl_job(128, 72, 3, 6.0)], NoStops())
    assert graphs_compiled() == before
    stopped = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "sdxl_compile_over_budget" in line]
    assert len(stopped) == 1 and stopped[0]["fallback"] == "eager"

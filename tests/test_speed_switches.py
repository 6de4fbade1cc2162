"""Every GPU speed switch, run on the CPU with the tiny models: exact-math switches give the same
output within float tolerance; approximating ones stay within the bound the README states.

(torch.compile runs with the `eager` backend here: the same graph capture and module wiring,
without generating kernels, so the suite stays fast; the kernels themselves need a GPU to matter.)
"""

import numpy as np
import pytest
import torch

from shared.engine import NoStops
from shared.engine_settings import SDXLSettings, WANSettings
from shared.inputs import Generation
from workers.sdxl.engine import SDXLEngine
from workers.sdxl.speed import SERVED_SIZES, warmup_sizes
from workers.sdxl.tiny import make_tiny_sdxl
from workers.wan.engine import WANEngine
from workers.wan.speed import BatchedGuidance, uses_cache
from workers.wan.tiny import make_tiny_wan

# Bounds stated in the README's table of switches: mean absolute pixel difference from the exact
# output, pixels in [0, 1], on these tiny random-weight models (real weights are better behaved).
SDXL_VAE_BF16_BOUND = 0.005  # measured 0.0014
WAN_VAE_BF16_BOUND = 0.03  # measured 0.006 to 0.016 (a deeper, causal 3D VAE)
FIRST_BLOCK_CACHE_BOUND = 0.001  # measured 0.00004 at threshold 0.2


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    return str(make_tiny_sdxl(tmp_path_factory.mktemp("speed-sdxl")))


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    return str(make_tiny_wan(tmp_path_factory.mktemp("speed-wan")))


def sdxl_pixels(model: str, **switches) -> np.ndarray:
    engine = SDXLEngine(model, SDXLSettings(warmup=False, **switches))
    engine.setup("cpu")
    job = Generation(id="s", media="image", prompt="a red fox in the snow", negative_prompt="blurry", width=64,
                     height=64, steps=3, guidance_scale=6.0, scheduler="euler", seeds=(7, 8))
    result = engine.run([job], NoStops())[0]
    sdxl_pixels.engine = engine
    return np.stack([image._pixels for image in result.items])  # the floats, before any rounding to bytes


@pytest.fixture(scope="module")
def sdxl_reference(sdxl_model):
    return sdxl_pixels(sdxl_model)


@pytest.mark.parametrize("switches", [
    {"compile": True, "compile_backend": "eager"},
    {"compile": True, "compile_backend": "eager", "compile_regional": True, "compile_vae": True},
    {"cudnn_benchmark": True},
])
def test_sdxl_exact_switches_give_the_same_images(sdxl_model, sdxl_reference, switches):
    benchmark_before = torch.backends.cudnn.benchmark
    try:
        pixels = sdxl_pixels(sdxl_model, **switches)
        engine = sdxl_pixels.engine
        if switches.get("compile_regional"):
            assert any(getattr(m, "_compiled_call_impl", None) is not None for m in engine.pipe.unet.modules())
            assert isinstance(engine.pipe.vae.decoder, torch._dynamo.eval_frame.OptimizedModule)
        elif switches.get("compile"):
            assert isinstance(engine.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
            assert engine.img2img.unet is engine.pipe.unet  # image-to-image shares the compiled UNet
        if switches.get("cudnn_benchmark"):
            assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = benchmark_before
    np.testing.assert_allclose(pixels, sdxl_reference, atol=1e-4)


def test_sdxl_vae_in_bfloat16_decodes_without_nans_within_the_bound(sdxl_model, sdxl_reference):
    pixels = sdxl_pixels(sdxl_model, vae_dtype="bf16")
    assert sdxl_pixels.engine.pipe.vae.dtype == torch.bfloat16
    assert not np.isnan(pixels).any()
    assert 0 < mean_difference(pixels, sdxl_reference) <= SDXL_VAE_BF16_BOUND  # it did decode in bf16, and stays close


def test_a_compiled_sdxl_warms_up_at_every_size_the_presets_serve():
    sizes = warmup_sizes(SDXLSettings(compile=True, max_batch_images=6), "cuda")
    assert {(w, h) for w, h, _ in sizes} == set(SERVED_SIZES) and {b for _, _, b in sizes} == {1, 6}
    assert warmup_sizes(SDXLSettings(), "cpu") == [(64, 64, 1)]


def wan_run(model: str, job: Generation | None = None, **switches):
    engine = WANEngine(model, WANSettings(warmup=False, **switches))
    engine.setup("cpu")
    job = job or Generation(id="w", media="video", prompt="waves at dusk", negative_prompt="static", width=32,
                            height=32, steps=3, guidance_scale=5.0, scheduler="unipc", seeds=(3,), frames=5, fps=16,
                            shift=3.0)
    frames = engine._generate(job, 3, None)
    return engine, np.asarray(frames)


@pytest.fixture(scope="module")
def wan_reference(wan_model):
    return wan_run(wan_model)[1]


def test_wan_batched_guidance_is_the_same_video_in_half_the_transformer_calls(wan_model, wan_reference):
    engine, frames = wan_run(wan_model, batched_guidance=True)
    np.testing.assert_allclose(frames, wan_reference, atol=1e-4)
    calls = []  # real transformer forwards: the patch embedding runs once in each
    engine.pipe.transformer.patch_embedding.register_forward_pre_hook(lambda module, args: calls.append(1))
    engine._generate(Generation(id="w", media="video", prompt="waves", negative_prompt="static", width=32, height=32,
                                steps=3, guidance_scale=5.0, scheduler="unipc", seeds=(3,), frames=5, fps=16,
                                shift=3.0), 3, None)
    assert len(calls) == 3  # one batched call per step instead of two


def test_batched_guidance_leaves_the_transformer_as_it_found_it(wan_model):
    engine, _ = wan_run(wan_model)
    transformer = engine.pipe.transformer
    with BatchedGuidance(transformer, torch.zeros(1, 4, 8)) as batched:
        assert transformer.forward == batched._forward
    assert "forward" not in transformer.__dict__


def test_wan_compiled_blocks_give_the_same_video(wan_model, wan_reference):
    engine, frames = wan_run(wan_model, compile=True, compile_backend="eager")
    assert any(getattr(m, "_compiled_call_impl", None) is not None for m in engine.pipe.transformer.modules())
    np.testing.assert_allclose(frames, wan_reference, atol=1e-4)


def test_wan_vae_in_bfloat16_stays_within_the_bound(wan_model, wan_reference):
    engine, frames = wan_run(wan_model, vae_dtype="bf16")
    assert engine.pipe.vae.dtype == torch.bfloat16 and not np.isnan(frames).any()
    assert 0 < mean_difference(frames, wan_reference) <= WAN_VAE_BF16_BOUND


def test_wan_first_block_cache_applies_per_preset_and_stays_within_the_bound(wan_model, wan_reference):
    config = WANSettings(cache="first_block", cache_presets="fast,image_high")
    assert uses_cache(config, "fast", "video_fast") and uses_cache(config, "high", "image_high")
    assert not uses_cache(config, "high", "video_high") and not uses_cache(WANSettings(), "fast", "video_fast")
    job = Generation(id="w", media="video", prompt="waves at dusk", negative_prompt="static", width=32, height=32,
                     steps=6, guidance_scale=5.0, scheduler="unipc", seeds=(3,), frames=5, fps=16, shift=3.0,
                     step_cache=True)
    _, uncached = wan_run(wan_model, job)
    # A threshold at which this tiny model's steps are similar enough to be reused (at the
    # default 0.05 none are, and the output is exactly the uncached one).
    engine, cached = wan_run(wan_model, job, cache="first_block", cache_threshold=0.2)
    assert engine._cache_enabled
    assert 0 < mean_difference(cached, uncached) <= FIRST_BLOCK_CACHE_BOUND


def test_sdxl_runs_in_the_dtype_it_was_given(sdxl_model):
    """diffusers' from_pipe casts the modules it shares to float32 unless told a dtype: the engine
    builds its image-to-image pipeline without undoing SDXL_DTYPE."""
    engine = SDXLEngine(sdxl_model, SDXLSettings(warmup=False, dtype="bf16"))
    engine.setup("cpu")
    for module in (engine.pipe.unet, engine.pipe.vae, engine.pipe.text_encoder, engine.img2img.unet):
        assert module.dtype == torch.bfloat16

"""Every GPU speed switch, run on the CPU with the tiny models: exact-math switches give the same
output within float tolerance; approximating ones stay within the bound docs/benchmarks.md states.

(torch.compile runs with the `eager` backend here: the same graph capture and module wiring,
without generating kernels, so the suite stays fast; the kernels themselves need a GPU to matter.)
"""

import sys

import numpy as np
import pytest
import torch

from shared.engine.contract import NoStops
from shared.engine.inputs import Generation
from shared.ops.engine_settings import SDXLSettings, WANSettings
from workers.accel.fp8 import quantize_fp8
from workers.sdxl.engine import SDXLEngine
from workers.sdxl.speed import SERVED_SIZES, vae_dtype, warmup_sizes
from workers.sdxl.tiny import make_tiny_sdxl
from workers.wan.engine import WANEngine
from workers.wan.speed import BatchedGuidance, compiles, uses_cache, warmup_shapes
from workers.wan.tiny import make_tiny_wan

# Bounds stated in docs/benchmarks.md's table of switches: mean absolute pixel difference from the exact
# output, pixels in [0, 1], on these tiny random-weight models (real weights are better behaved).
SDXL_VAE_BF16_BOUND = 0.005  # measured 0.0014
WAN_VAE_BF16_BOUND = 0.03  # measured 0.006 to 0.016 (a deeper, causal 3D VAE)
FIRST_BLOCK_CACHE_BOUND = 0.001  # measured 0.00004 at threshold 0.2
SDXL_FP8_WEIGHTS_BOUND = 0.003  # measured 0.0009
WAN_FP8_WEIGHTS_BOUND = 0.04  # measured 0.015
SDXL_DEEP_CACHE_BOUND = 0.005  # measured 0.0020 to 0.0022 at interval 3 over 6 steps


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
            SDXLEngine(sdxl_model, SDXLSettings(warmup=False)).setup("cpu")
            assert torch.backends.cudnn.benchmark is False  # not left on for the next engine (a bench's next variant)
    finally:
        torch.backends.cudnn.benchmark = benchmark_before
    np.testing.assert_allclose(pixels, sdxl_reference, atol=1e-4)


def test_sdxl_vae_in_bfloat16_decodes_without_nans_within_the_bound(sdxl_model, sdxl_reference):
    pixels = sdxl_pixels(sdxl_model, vae_dtype="bf16")
    assert sdxl_pixels.engine.pipe.vae.dtype == torch.bfloat16
    assert not np.isnan(pixels).any()
    assert 0 < mean_difference(pixels, sdxl_reference) <= SDXL_VAE_BF16_BOUND  # it did decode in bf16, and stays close


def test_sdxl_vae_in_bfloat16_also_encodes_image_to_image_references(sdxl_model):
    """The bf16 VAE is the CUDA default: image-to-image encodes its reference through it too."""
    from PIL import Image

    reference = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    job = Generation(id="i", media="image", prompt="a red fox", negative_prompt="", width=64, height=64, steps=4,
                     guidance_scale=5.0, scheduler="euler", seeds=(2,), mode="img2img", denoise_strength=0.5,
                     reference=reference)
    pictures = {}
    for vae in ("model", "bf16"):
        engine = SDXLEngine(sdxl_model, SDXLSettings(warmup=False, vae_dtype=vae))
        engine.setup("cpu")
        pictures[vae] = engine.run([job], NoStops())[0].items[0]._pixels
    assert engine.img2img.vae.dtype == torch.bfloat16 and not np.isnan(pictures["bf16"]).any()
    assert 0 < mean_difference(pictures["bf16"], pictures["model"]) <= SDXL_VAE_BF16_BOUND


def test_a_compiled_sdxl_warms_up_at_every_size_the_presets_serve():
    sizes = warmup_sizes(SDXLSettings(compile=True, max_batch_images=6), "cuda")
    assert {(w, h) for w, h, _, _ in sizes} == set(SERVED_SIZES) and {b for _, _, b, _ in sizes} == {1, 2, 6}
    assert sizes[0] == (1024, 576, 6, 5.0)  # not square first (tests/test_compile_warmup.py says why)
    assert len(sizes) == len(set(sizes))
    assert warmup_sizes(SDXLSettings(), "cpu") == [(64, 64, 1, 5.0)]


def test_sdxl_deep_cache_runs_the_deep_blocks_every_nth_step_on_fast_jobs_within_the_bound(sdxl_model):
    def job(fast: bool) -> Generation:
        return Generation(id="s", media="image", prompt="a red fox in the snow", negative_prompt="blurry", width=64,
                          height=64, steps=6, guidance_scale=6.0, scheduler="euler", seeds=(7,), step_cache=fast)

    def run(engine: SDXLEngine, item: Generation) -> tuple[np.ndarray, int]:
        deep = []  # the middle block's first resnet runs only when the deep blocks really compute
        handle = engine.pipe.unet.mid_block.resnets[0].register_forward_pre_hook(lambda *a: deep.append(1))
        try:
            return engine.run([item], NoStops())[0].items[0]._pixels, len(deep)
        finally:
            handle.remove()

    plain = SDXLEngine(sdxl_model, SDXLSettings(warmup=False))
    plain.setup("cpu")
    exact, full = run(plain, job(True))
    engine = SDXLEngine(sdxl_model, SDXLSettings(warmup=False, cache="deep", cache_interval=3))
    engine.setup("cpu")
    assert engine.batch_key(job(True)) != engine.batch_key(job(False))  # cached and uncached never share a call
    uncached, deep_calls = run(engine, job(False))  # not a fast preset: untouched
    assert deep_calls == full == 6
    np.testing.assert_allclose(uncached, exact, atol=1e-6)
    cached, deep_calls = run(engine, job(True))
    assert deep_calls == 2  # steps 1 and 4 of 6
    assert 0 < mean_difference(cached, exact) <= SDXL_DEEP_CACHE_BOUND
    for block in [*engine.pipe.unet.down_blocks, engine.pipe.unet.mid_block, *engine.pipe.unet.up_blocks]:
        assert "forward" not in block.__dict__  # the UNet is as it was after the call


def test_sdxl_deep_cache_refuses_a_whole_unet_compile(sdxl_model):
    engine = SDXLEngine(sdxl_model, SDXLSettings(warmup=False, cache="deep", compile=True, compile_backend="eager"))
    with pytest.raises(ValueError, match="SDXL_COMPILE_REGIONAL"):
        engine.setup("cpu")


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


@torch._dynamo.register_backend(name="ourvidz_no_compiler")
def _no_compiler(graph, example_inputs):
    raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")


def test_a_wan_compile_that_fails_at_warm_up_falls_back_to_eager(wan_model, wan_reference, capfd):
    engine, frames = wan_run(wan_model, compile=True, compile_backend="ourvidz_no_compiler")
    logged = capfd.readouterr().err
    assert "wan_compile_failed" in logged and "Failed to find C compiler" in logged
    assert engine.compiled is False
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in engine.pipe.transformer.modules())
    np.testing.assert_allclose(frames, wan_reference, atol=1e-4)  # the worker serves, eagerly


def test_speed_defaults_are_what_the_gpu_measured_faster_and_stay_off_on_a_cpu(monkeypatch):
    assert vae_dtype(SDXLSettings(), "cuda") == "bf16" and vae_dtype(SDXLSettings(), "cpu") == "model"
    assert vae_dtype(SDXLSettings(vae_dtype="fp32"), "cuda") == "fp32"
    assert compiles(WANSettings(), "cuda") and not compiles(WANSettings(), "cpu")
    monkeypatch.setenv("WAN_COMPILE", "false")
    assert not compiles(WANSettings(), "cuda")
    monkeypatch.setenv("WAN_COMPILE", "true")
    assert compiles(WANSettings(), "cpu")
    off = SDXLSettings()
    assert not off.compile and not off.cudnn_benchmark  # not measured faster: off
    assert not WANSettings().batched_guidance and WANSettings().vae_dtype == "fp32" and WANSettings().cache == "none"
    assert warmup_shapes(True, 1024) == [(480, 832, 1, 5.0), (480, 832, 81, 5.0)]  # the real model: the presets' size
    assert warmup_shapes(True, 32) == [(64, 64, 1, 5.0), (64, 64, 5, 5.0)]  # the tiny model's position table is short
    assert warmup_shapes(False, 1024) == [(32, 32, 1, 5.0)]


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


def fp8_layers(module: torch.nn.Module) -> int:
    return sum(type(m.weight).__name__ == "Float8Tensor" for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_sdxl_fp8_weights_stay_within_the_bound(sdxl_model, sdxl_reference):
    pixels = sdxl_pixels(sdxl_model, fp8="weights")
    assert fp8_layers(sdxl_pixels.engine.pipe.unet) > 100  # the UNet's linear layers hold float8 weights
    assert 0 < mean_difference(pixels, sdxl_reference) <= SDXL_FP8_WEIGHTS_BOUND


def test_wan_fp8_weights_stay_within_the_bound_compiled_too(wan_model, wan_reference):
    engine, frames = wan_run(wan_model, fp8="weights")
    assert fp8_layers(engine.pipe.transformer) > 20
    assert 0 < mean_difference(frames, wan_reference) <= WAN_FP8_WEIGHTS_BOUND
    compiled, compiled_frames = wan_run(wan_model, fp8="weights", compile=True, compile_backend="eager")
    assert compiled.compiled and fp8_layers(compiled.pipe.transformer) > 20
    np.testing.assert_allclose(compiled_frames, frames, atol=1e-4)


def test_fp8_dynamic_refuses_a_device_without_fp8_tensor_cores(sdxl_model):
    engine = SDXLEngine(sdxl_model, SDXLSettings(warmup=False, fp8="dynamic"))
    with pytest.raises(RuntimeError, match="needs an FP8 GPU"):
        engine.setup("cpu")


def test_fp8_without_torchao_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(RuntimeError, match=r"ourvidz-workers\[fp8\]"):
        quantize_fp8(torch.nn.Linear(16, 16), "weights", "cpu")
    assert quantize_fp8(torch.nn.Linear(16, 16), "off", "cpu") == 0  # off never needs it

"""WAN_ATTENTION (workers/wan/attention.py) on the CPU: the wiring, the processor's math, and the
clear error for a kernel this machine cannot run. The kernels' speed and pixel difference on a GPU
are in bench-reports/ (`bench all` variants cudnn, flash, sage)."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.engine.contract import NoStops
from shared.engine.inputs import Generation
from shared.ops.engine_settings import WANSettings
from workers.wan.attention import (
    AttentionUnavailable,
    KernelSelfAttention,
    apply_attention,
    check_kernel,
    kernel_function,
    label,
)
from workers.wan.engine import WANEngine
from workers.wan.tiny import make_tiny_wan


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    return str(make_tiny_wan(tmp_path_factory.mktemp("attention-wan")))


def _job() -> Generation:
    return Generation(id="a", media="video", prompt="waves on a beach", negative_prompt="blurry", width=64, height=64,
                      steps=3, guidance_scale=5.0, scheduler="unipc", seeds=(5,), frames=5, fps=16, shift=5.0)


def _frames(engine) -> np.ndarray:
    return np.asarray(engine.run([_job()], NoStops())[0].items[0].frames, dtype=np.float32)


@pytest.mark.parametrize("kernel", ["cudnn", "flash", "sage"])
def test_a_kernel_this_machine_cannot_run_stops_the_start_with_the_fix(wan_model, kernel):
    engine = WANEngine(wan_model, WANSettings(warmup=False, attention=kernel))
    with pytest.raises(AttentionUnavailable, match=f"WAN_ATTENTION={kernel} needs a CUDA GPU.*WAN_ATTENTION=sdpa"):
        engine.setup("cpu")


def test_sage_without_its_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sageattention" else real(name, *a))
    with pytest.raises(AttentionUnavailable, match="pip install sageattention==1.0.6"):
        kernel_function("sage", "cuda")


def test_a_kernel_that_runs_wrong_is_refused(monkeypatch):
    import workers.wan.attention as attention

    monkeypatch.setattr(attention, "kernel_function", lambda kernel, device: lambda q, k, v: q * 0 + 1)
    with pytest.raises(AttentionUnavailable, match="gives wrong results"):
        check_kernel("sdpa", "cpu")
    monkeypatch.setattr(attention, "kernel_function", lambda kernel, device: lambda q, k, v: 1 / 0)
    with pytest.raises(AttentionUnavailable, match="does not run on this machine: ZeroDivisionError"):
        check_kernel("sdpa", "cpu")


def test_labels_and_the_setting_refuse_unknown_names():
    assert label("sdpa") == label("cudnn") == label("flash") == "exact"
    assert label("sage") == "approximate"
    with pytest.raises(ValueError):
        WANSettings(attention="xformers")
    assert check_kernel("sdpa", "cpu") < 1e-5  # the CPU's float32 SDPA is exact attention


def test_our_processor_computes_what_diffusers_does(wan_model):
    """KernelSelfAttention with plain SDPA as its kernel gives the pipeline's output: the projections,
    norms and rotary embedding it applies itself match diffusers' WanAttnProcessor."""
    reference = WANEngine(wan_model, WANSettings(warmup=False))
    reference.setup("cpu")
    expected = _frames(reference)

    engine = WANEngine(wan_model, WANSettings(warmup=False))
    engine.setup("cpu")
    calls = []

    def sdpa(q, k, v):  # (batch, tokens, heads, head_dim), as sage is called
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    processor = KernelSelfAttention(sdpa)
    for block in engine.pipe.transformer.blocks:
        block.attn1.set_processor(processor)
    got = _frames(engine)
    assert calls and len(calls) % len(engine.pipe.transformer.blocks) == 0
    assert all(type(b.attn2.processor).__name__ == "WanAttnProcessor" for b in engine.pipe.transformer.blocks)
    assert np.abs(got - expected).mean() < 0.5  # pixels 0-255: equal within float error
    assert np.abs(got - expected).max() <= 2


def test_the_kernel_is_installed_on_self_attention_only(wan_model, monkeypatch):
    """`sage` through our processor on attn1 (a stand-in kernel here: SageAttention needs CUDA)."""
    import workers.wan.attention as attention

    reference = WANEngine(wan_model, WANSettings(warmup=False))
    reference.setup("cpu")
    transformer = reference.pipe.transformer
    seen = []

    def fake_kernel(kernel, device):
        def attend(q, k, v):
            seen.append(kernel)
            return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)

        return attend

    monkeypatch.setattr(attention, "kernel_function", fake_kernel)
    apply_attention(transformer, "sage", "cpu")
    assert all(isinstance(b.attn1.processor, KernelSelfAttention) for b in transformer.blocks)
    assert not any(isinstance(b.attn2.processor, KernelSelfAttention) for b in transformer.blocks)
    with torch.inference_mode():
        reference.run([_job()], NoStops())
    assert seen and set(seen) == {"sage"}

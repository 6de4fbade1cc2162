"""CUDA graphs for SDXL's UNet and WAN's one-frame images (workers/accel/cuda_graphs.py), on the CPU.

A CPU has no CUDA graphs, so the capture is replaced by a stand-in that reruns the forward on the
static buffers the graph would have been recorded on. That checks everything around the graph:
one capture per signature, the inputs copied in, the outputs cloned out, the eager fallbacks, and
the engines' wiring (installed for the right calls only, composed with batched guidance). The
graphs themselves run on a GPU: `bench all`'s `graphs` variants report their pixel difference
from eager (bench-reports/).
"""

import numpy as np
import pytest
import torch

from shared.engine.contract import NoStops
from shared.engine.inputs import Generation
from shared.ops.engine_settings import SDXLSettings, WANSettings
from workers.accel.cuda_graphs import GraphedForward
from workers.sdxl.engine import SDXLEngine
from workers.sdxl.speed import graphs_on as sdxl_graphs_on
from workers.sdxl.tiny import make_tiny_sdxl
from workers.wan.engine import WANEngine
from workers.wan.speed import batches_guidance, warmup_shapes
from workers.wan.speed import graphs_on as wan_graphs_on
from workers.wan.tiny import make_tiny_wan


def rerun_capture(run, pool):
    """Stand-in for `cuda_capture`: 'replaying' reruns the forward on the same static buffers and
    writes into the same output tensors, as a graph would."""
    outputs = run()

    def replay():
        fresh = run()
        for mine, new in zip(torch.utils._pytree.tree_leaves(outputs), torch.utils._pytree.tree_leaves(fresh),
                             strict=True):
            if torch.is_tensor(mine):
                mine.copy_(new)

    return replay, outputs


class Doubler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.calls = 0

    def forward(self, x, t, extra=None, *, flag=True, table=None):
        self.calls += 1
        out = x * self.scale + t
        if table is not None:
            out = out + table["bias"]
        return (out,) if flag else {"sample": out}


def test_one_capture_per_signature_and_replays_see_new_inputs():
    module = Doubler()
    graphs = GraphedForward(module, capture=rerun_capture, device="cpu")
    with torch.inference_mode(), graphs:
        first = module(torch.ones(2, 3), torch.tensor(1.0))[0]
        second = module(torch.full((2, 3), 5.0), torch.tensor(3.0))[0]  # same shapes: a replay
        bias = {"bias": torch.ones(4)}
        other = module(torch.ones(4), torch.tensor(0.0), table=bias, flag=False)["sample"]  # another signature
    assert torch.equal(first, torch.full((2, 3), 3.0))
    assert torch.equal(second, torch.full((2, 3), 13.0))  # not the first call's answer: inputs were copied in
    assert torch.equal(other, torch.full((4,), 3.0))
    assert len(graphs.graphs) == 2 and graphs.replays == 3
    assert "forward" not in module.__dict__  # the class's own forward is back


def test_outputs_are_clones_a_later_replay_does_not_overwrite():
    module = Doubler()
    graphs = GraphedForward(module, capture=rerun_capture, device="cpu")
    with torch.inference_mode(), graphs:
        kept = module(torch.ones(3), torch.tensor(0.0))[0]
        module(torch.full((3,), 10.0), torch.tensor(0.0))
    assert torch.equal(kept, torch.full((3,), 2.0))


def test_unhashable_arguments_gradients_and_a_full_cache_run_eagerly():
    module = Doubler()
    graphs = GraphedForward(module, max_graphs=1, capture=rerun_capture, device="cpu")
    with graphs:
        with torch.inference_mode():
            module(torch.ones(2), torch.tensor(0.0), extra=[1, 2])  # a list leaf is fine (flattened)...
            module(torch.ones(2), torch.tensor(0.0), extra=[object()])  # ...an object may hide tensors: eager
            module(torch.ones(5), torch.tensor(0.0))  # a second signature past max_graphs: eager
        module(torch.ones(2), torch.tensor(0.0), extra=[1, 2])  # gradients on (training): eager
    assert len(graphs.graphs) == 1
    assert graphs.eager_calls == 3 and graphs.replays == 1


def test_switches_are_refused_off_cuda_and_auto_means_cuda():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        sdxl_graphs_on(SDXLSettings(cuda_graphs=True), "cpu")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        wan_graphs_on(WANSettings(cuda_graphs=True), "cpu")
    assert not sdxl_graphs_on(SDXLSettings(cuda_graphs="auto"), "cpu")
    assert sdxl_graphs_on(SDXLSettings(cuda_graphs="auto"), "cuda")
    assert wan_graphs_on(WANSettings(cuda_graphs="auto"), "cuda:0")
    with pytest.raises(ValueError, match="reduce-overhead"):
        sdxl_graphs_on(SDXLSettings(cuda_graphs=True, compile=True), "cuda")
    assert sdxl_graphs_on(SDXLSettings(cuda_graphs=True, compile=True, compile_regional=True), "cuda")
    assert not sdxl_graphs_on(SDXLSettings(compile=True), "cuda")  # auto yields to a whole-UNet compile


def test_wan_batched_guidance_for_images_only():
    config = WANSettings(batched_guidance="images")
    assert batches_guidance(config, 1) and not batches_guidance(config, 81)
    assert batches_guidance(WANSettings(batched_guidance=True), 81)
    assert not batches_guidance(WANSettings(), 1)
    assert batches_guidance(WANSettings(), 1, image_graphs=True)  # images from graphs: one replay a step
    assert not batches_guidance(WANSettings(), 81, image_graphs=True)
    # graphs on an eager engine: the presets' image is captured before ready, not a 32x32 stand-in
    assert warmup_shapes(False, 1024, image_graphs=True) == [(480, 832, 1, 5.0)]
    assert warmup_shapes(False, 1024) == [(32, 32, 1, 5.0)]


def _wan_job(frames: int, guidance: float = 5.0) -> Generation:
    return Generation(id=f"w{frames}", media="video" if frames > 1 else "image", prompt="a lighthouse at dusk",
                      negative_prompt="blurry", width=64, height=64, steps=3, guidance_scale=guidance,
                      scheduler="unipc", seeds=(3,), frames=frames, fps=16, shift=5.0)


def _wan_output(result) -> np.ndarray:
    item = result.items[0]
    return np.asarray(item.frames if hasattr(item, "frames") else item.image, dtype=np.float32)


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    return str(make_tiny_wan(tmp_path_factory.mktemp("graphs-wan")))


def test_wan_images_replay_from_graphs_batched_and_videos_do_not(wan_model):
    plain = WANEngine(wan_model, WANSettings(warmup=False))
    plain.setup("cpu")
    reference = {frames: _wan_output(plain.run([_wan_job(frames)], NoStops())[0]) for frames in (1, 5)}

    engine = WANEngine(wan_model, WANSettings(warmup=False, batched_guidance="images"))
    engine.setup("cpu")
    engine.image_graphs = GraphedForward(engine.pipe.transformer, capture=rerun_capture, device="cpu")
    image = _wan_output(engine.run([_wan_job(1)], NoStops())[0])
    assert len(engine.image_graphs.graphs) == 1  # one signature: batch 2 (both guidance passes), one frame
    assert engine.image_graphs.replays == 3  # one replay per step, not two
    engine.run([_wan_job(1)], NoStops())
    assert len(engine.image_graphs.graphs) == 1 and engine.image_graphs.replays == 6  # captured once
    video = _wan_output(engine.run([_wan_job(5)], NoStops())[0])
    assert engine.image_graphs.replays == 6  # clips run eagerly
    assert "forward" not in engine.pipe.transformer.__dict__
    assert np.abs(image - reference[1]).mean() <= 1.0  # equal within float error (pixels 0-255)
    assert np.abs(video - reference[5]).mean() <= 1.0


def test_sdxl_unet_replays_from_graphs_with_the_same_images(tmp_path):
    model = str(make_tiny_sdxl(tmp_path / "sdxl"))
    job = Generation(id="s", media="image", prompt="a red fox in the snow", negative_prompt="blurry", width=64,
                     height=64, steps=3, guidance_scale=6.0, scheduler="euler", seeds=(7, 8))
    plain = SDXLEngine(model, SDXLSettings(warmup=False))
    plain.setup("cpu")
    reference = np.stack([np.asarray(i.image, dtype=np.float32) for i in plain.run([job], NoStops())[0].items])

    engine = SDXLEngine(model, SDXLSettings(warmup=False))
    engine.setup("cpu")
    engine.unet_graphs = GraphedForward(engine.pipe.unet, capture=rerun_capture, device="cpu")
    pixels = np.stack([np.asarray(i.image, dtype=np.float32) for i in engine.run([job], NoStops())[0].items])
    assert len(engine.unet_graphs.graphs) == 1 and engine.unet_graphs.replays == 3
    assert np.abs(pixels - reference).mean() <= 1.0
    cached = SDXLEngine(model, SDXLSettings(warmup=False, cache="deep"))  # DeepCache's steps never replay a graph
    cached.setup("cpu")
    cached.unet_graphs = GraphedForward(cached.pipe.unet, capture=rerun_capture, device="cpu")
    from dataclasses import replace
    cached.run([replace(job, step_cache=True)], NoStops())
    assert cached.unet_graphs.replays == 0


def test_a_capture_that_fails_runs_eagerly_from_then_on():
    def failing(run, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    module = Doubler()
    graphs = GraphedForward(module, capture=failing, device="cpu")
    with torch.inference_mode(), graphs:
        assert torch.equal(module(torch.ones(2), torch.tensor(1.0))[0], torch.full((2,), 3.0))
        module(torch.ones(2), torch.tensor(1.0))
    assert graphs.failed.startswith("RuntimeError") and graphs.eager_calls == 2 and not graphs.graphs


def stale_capture(run, pool):
    """A broken graph: it replays what it recorded and ignores new inputs."""
    return (lambda: None), run()


def test_a_replay_that_disagrees_with_eager_turns_the_graphs_off_and_returns_the_eager_answer():
    module = Doubler()
    graphs = GraphedForward(module, capture=stale_capture, device="cpu")
    with torch.inference_mode(), graphs:
        first = module(torch.ones(3), torch.tensor(0.0))[0]  # captured: right for its own inputs
        second = module(torch.full((3,), 4.0), torch.tensor(0.0))[0]  # the stale replay is caught
        third = module(torch.full((3,), 5.0), torch.tensor(0.0))[0]
    assert torch.equal(first, torch.full((3,), 2.0))
    assert torch.equal(second, torch.full((3,), 8.0)) and torch.equal(third, torch.full((3,), 10.0))
    assert graphs.failed.startswith("replay differs from eager") and not graphs.graphs
    assert graphs.eager_calls == 1  # the third call: eager from then on


def test_a_graph_checked_once_is_not_checked_again():
    module = Doubler()
    graphs = GraphedForward(module, capture=rerun_capture, device="cpu")
    with torch.inference_mode(), graphs:
        for value in (1.0, 2.0, 3.0, 4.0):
            module(torch.full((2,), value), torch.tensor(0.0))
    assert graphs.replays == 4 and graphs.graphs[next(iter(graphs.graphs))][3] is True
    assert module.calls == 1 + 4 + 1  # the stand-in's capture run, a rerun per replay, one eager check

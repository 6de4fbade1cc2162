"""The WAN engine on tiny random-weight Wan 2.1 models (text-to-video and VACE)."""

import io
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from shared.decode.contract import parse_job
from shared.decode.decoder import Decoder, Plan
from shared.decode.fetch import ReferenceFetcher
from shared.decode.presets import load_presets
from shared.deliver.media import probe_mp4
from shared.engine.errors import JobError
from shared.ops.engine_settings import ChatSettings, WANSettings
from shared.ops.settings import DEFAULT_PRESETS, Settings
from shared.source import keys
from shared.source.chat_client import request_enhancement
from shared.source.queue import socket_timeout_of
from tests.backend_payloads import build_payload, push
from tests.helpers import running_worker
from workers.chat.engine import ChatEngine
from workers.wan.engine import WANEngine
from workers.wan.plan import plan_wan, valid_frame_count, valid_side
from workers.wan.speed import encoder_placement
from workers.wan.tiny import make_tiny_wan

PRESETS = load_presets(str(DEFAULT_PRESETS))


class Ctx:
    def __init__(self, cancel=False):
        self.cancel, self.steps = cancel, []

    def check(self, job):
        if self.cancel:
            raise JobError("cancelled", "cancelled by request")

    def progress(self, job, step, total):
        self.steps.append((step, total))


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp("tiny-wan"))


@pytest.fixture(scope="session")
def tiny_vace(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp("tiny-wan-vace"), vace=True)


def engine_for(model, backend=None, redis_client=None, **config):
    engine = WANEngine(str(model), WANSettings(warmup=False, **config))
    engine.setup("cpu")
    fetcher = ReferenceFetcher(Settings(supabase_url=backend.url, reference_allow_private=True)) if backend else None

    def enhance(prompt, job_type):
        return request_enhancement(redis_client, "v1", prompt, job_type, engine.config.enhance_timeout_seconds)

    # Decode as the runtime wires it (shared/decode/decoder.py): the WAN planner, references, enhancement.
    engine.test_decoder = Decoder(PRESETS, "payload", plan_wan, engine,
                                  fetch_image=fetcher.fetch_image if fetcher else None,
                                  enhance=enhance if redis_client is not None else None)
    return engine


def decode(engine, job) -> Plan:
    return engine.test_decoder.plan(job)


def prepare(engine, job):
    return decode(engine, job).input


def generate(engine, job, ctx=None):
    """Decode then run: the result, with the callback facts decode added to its metadata."""
    plan = decode(engine, job)
    result = engine.run([plan.input], ctx or Ctx())[0]
    if not isinstance(result, JobError):
        result.metadata = {**plan.facts, **result.metadata}
    return plan, result


def wan_job(job_type="video_fast", era="v1", metadata=None, **kwargs):
    kwargs.setdefault("width", 64)
    kwargs.setdefault("height", 64)
    kwargs.setdefault("steps", 2)
    payload = build_payload(era, job_type, kwargs.pop("prompt", "waves on a beach"), **kwargs)
    payload["metadata"].update(metadata or {})
    return parse_job(payload, PRESETS)


def png(color):
    buffer = io.BytesIO()
    Image.new("RGB", (80, 80), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("requested, valid", [(83, 81), (81, 81), (82, 81), (5, 5), (4, 1), (2, 1), (1, 1), (161, 161)])
def test_frame_counts_become_4k_plus_1(requested, valid):
    assert valid_frame_count(requested) == valid


@pytest.mark.parametrize("requested, valid", [(480, 480), (832, 832), (500, 496), (64, 64), (100, 96)])
def test_sides_become_multiples_of_16(requested, valid):
    assert valid_side(requested) == valid


def test_video_job_reports_the_frames_it_made_and_same_seed_same_video(tiny_wan):
    engine = engine_for(tiny_wan)
    ctx = Ctx()
    plan, first = generate(engine, wan_job(frames=11, width=72, height=64, seed=3), ctx)
    job = plan.input
    assert (job.frames, job.width, job.height) == (9, 64, 64)
    again = engine.run([prepare(engine, wan_job(frames=11, width=72, height=64, seed=3))], Ctx())[0]
    video = first.items[0]
    assert video.frames.shape == (9, 64, 64, 3) and video.fps == 16 and video.seed == 3
    assert np.array_equal(video.frames, again.items[0].frames)
    assert first.metadata["frame_num"] == 9 and first.metadata["duration"] == pytest.approx(9 / 16, abs=1e-3)
    assert first.metadata["requested_frames"] == 11 and ctx.steps[-1] == (2, 2)


def test_cancellation_between_steps(tiny_wan):
    engine = engine_for(tiny_wan)
    result = engine.run([prepare(engine, wan_job())], Ctx(cancel=True))[0]
    assert isinstance(result, JobError) and result.error_type == "cancelled"


def test_t2v_model_refuses_references_by_default_or_generates_without_them(tiny_wan, backend):
    backend.files["/refs/start.png"] = (200, png((250, 0, 0)), {})
    job = wan_job(metadata={"start_reference_url": f"{backend.url}/refs/start.png"})
    assert job.references.video_reference_mode == "start"
    with pytest.raises(JobError) as err:
        prepare(engine_for(tiny_wan, backend), job)
    assert err.value.error_type == "REFERENCE_UNSUPPORTED" and "VACE" in err.value.message
    lenient = engine_for(tiny_wan, backend, reference_policy="t2v")
    _, result = generate(lenient, job)
    assert result.metadata["reference_mode_applied"] == "none" and result.metadata["reference_mode_requested"] == "start"


@pytest.mark.parametrize("mode, metadata", [
    ("start", {"start_reference_url": "START"}),
    ("end", {"end_reference_url": "END"}),
    ("both", {"start_reference_url": "START", "end_reference_url": "END"}),
    ("single", {"reference_image_url": "START"}),
])
def test_vace_model_honours_every_reference_mode(tiny_vace, backend, mode, metadata):
    backend.files["/refs/start.png"] = (200, png((250, 0, 0)), {})
    backend.files["/refs/end.png"] = (200, png((0, 0, 250)), {})
    urls = {"START": f"{backend.url}/refs/start.png", "END": f"{backend.url}/refs/end.png"}
    engine = engine_for(tiny_vace, backend)
    _, result = generate(engine, wan_job(frames=9, metadata={k: urls[v] for k, v in metadata.items()}))
    assert result.metadata["reference_mode_applied"] == mode
    assert result.items[0].frames.shape == (9, 64, 64, 3)


def test_image_jobs_are_one_frame_pngs_end_to_end(tiny_wan, make_settings, redis_client, backend):
    image = build_payload("v2", "video_fast", "a cat", width=64, height=64, steps=2, frames=11, seed=4)
    still = build_payload("v1", "image_fast", "a cat", width=64, height=64, steps=2, seed=4)
    push(redis_client, "v2", image)
    with running_worker(make_settings(contract="v2"), engine=engine_for(tiny_wan)):
        video_cb = backend.wait_for_terminal(1, timeout=60)[0]
    asset = video_cb["assets"][0]
    assert video_cb["status"] == "completed" and asset["type"] == "video" and asset["url"].endswith("/0.mp4")
    info = probe_mp4(backend.objects[("workspace-temp", asset["url"])][0])
    assert info["frames"] == 9 and info["fps"] == 16 and asset["metadata"]["frame_num"] == 9
    assert video_cb["metadata"]["frame_num"] == 9
    push(redis_client, "v1", still)
    with running_worker(make_settings(contract="v1"), engine=engine_for(tiny_wan)):
        still_cb = backend.wait_for_terminal(2, timeout=60)[-1]
    assert still_cb["status"] == "completed" and still_cb["assets"][0].endswith("/0.png")
    data, ctype = backend.objects[("image_fast", still_cb["assets"][0])]
    assert ctype == "image/png" and Image.open(io.BytesIO(data)).size == (64, 64)


class SlowChat(ChatEngine):
    """A chat engine that takes 7 s to answer."""

    def run(self, items, ctx):
        time.sleep(7)
        return super().run(items, ctx)


def test_enhanced_jobs_use_the_chat_worker_and_report_both_prompts(tiny_wan, tiny_chat, make_settings, redis_client):
    chat = ChatEngine(str(tiny_chat), ChatSettings(max_batch=2))
    with running_worker(make_settings(), engine=chat, health_port=0):
        engine = engine_for(tiny_wan, redis_client=redis_client)
        plan, result = generate(engine, wan_job("video7b_fast_enhanced", prompt="a dog", frames=5))
        job = plan.input
    assert result.metadata["enhancement_strategy"] == "qwen_chat_queue"
    assert result.metadata["original_prompt"] == "a dog" and result.metadata["final_prompt"] == job.prompt
    assert job.prompt and job.prompt != "a dog"


def test_the_wan_workers_generate_route_answers_the_2025_08_qwen_base_enhancement(tiny_wan, tiny_chat, make_settings,
                                                                                   redis_client):
    """The 2025-08 enhance-prompt posts `{inputs, parameters}` with no key to the URL the WAN worker
    announced and reads `generated_text`: the WAN worker's /generate hands the body to the chat
    worker through chat_queue, under the chat API's keys and allowance, and says when none answers."""
    body = {"inputs": 'Enhance this prompt: "a cat"\n\nEnhanced version:',
            "parameters": {"max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9, "do_sample": True,
                           "return_full_text": False}}
    gate = ChatSettings(chat_api_key="wan-test-key", allow_unauthenticated_generate=True)
    wan_settings = make_settings(worker_id="wan-generate-route", chat=gate,
                                 wan=WANSettings(warmup=False, enhance_timeout_seconds=5))
    wan = WANEngine(str(tiny_wan), WANSettings(warmup=False))
    with running_worker(wan_settings, engine=wan, health_port=0) as worker:
        url = f"http://127.0.0.1:{worker.http.port}/generate"
        chat = ChatEngine(str(tiny_chat), ChatSettings(max_batch=2))
        with running_worker(make_settings(worker_id="chat-for-wan-route"), engine=chat, health_port=0):
            answer = httpx.post(url, json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            assert isinstance(answer.json()["generated_text"], str) and answer.json()["tokens_generated"] <= 4
            assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
            missing = httpx.post(url, json={"parameters": {}}, timeout=30)
            assert missing.status_code == 400 and "inputs" in missing.json()["error"]
            assert httpx.post(url, content=b"[[[", timeout=30).status_code == 400
        started = time.monotonic()
        unanswered = httpx.post(url, json=body, timeout=30)  # no chat worker now
        assert unanswered.status_code == 504 and "chat worker" in unanswered.json()["error"]
        assert 4.5 < time.monotonic() - started < 15
        assert redis_client.llen(keys.CHAT_QUEUE) == 0  # its request was taken back


def test_an_enhancement_slower_than_the_redis_socket_timeout_is_still_used(tiny_wan, tiny_chat, make_settings,
                                                                           redis_client):
    """The chat worker answers after 7 s; the WAN side waits up to 30 s on a client whose socket
    timeout is redis-py's default (5 s): the enhanced prompt must be used, not the raw one."""
    with running_worker(make_settings(), engine=SlowChat(str(tiny_chat), ChatSettings(max_batch=2)), health_port=0):
        engine = engine_for(tiny_wan, redis_client=redis_client, enhance_timeout_seconds=30)
        assert socket_timeout_of(redis_client) == 5  # the library default this test is about
        started = time.monotonic()
        plan = decode(engine, wan_job("video7b_fast_enhanced", prompt="a slow dog", frames=5))
        job = plan.input
        waited = time.monotonic() - started
    assert waited >= 7
    assert plan.facts["enhancement_strategy"] == "qwen_chat_queue"
    assert job.prompt and job.prompt != "a slow dog"


def test_enhancement_timeout_falls_back_to_the_original_prompt(tiny_wan, redis_client):
    engine = engine_for(tiny_wan, redis_client=redis_client, enhance_timeout_seconds=1)
    plan, result = generate(engine, wan_job("image7b_fast_enhanced", prompt="a fox"))
    job = plan.input
    assert job.prompt == "a fox"
    assert result.metadata["final_prompt"] == "a fox" and result.metadata["enhancement_strategy"].startswith("none")


def test_out_of_memory_retries_with_vae_tiling_then_fails_clearly(tiny_wan):
    import torch

    engine = engine_for(tiny_wan)
    calls = []
    real = engine._generate

    def flaky(*args, **kwargs):
        calls.append(engine.pipe.vae.use_tiling)
        if len(calls) == 1 or engine.fail_always:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(*args, **kwargs)

    engine._generate, engine.fail_always = flaky, False
    result = engine.run([prepare(engine, wan_job())], Ctx())[0]
    assert calls == [False, True] and result.items
    engine.fail_always = True
    failed = engine.run([prepare(engine, wan_job())], Ctx())[0]
    assert isinstance(failed, JobError) and failed.error_type == "out_of_memory"


def test_a_warm_up_that_does_not_fit_the_card_leaves_the_worker_serving(tiny_wan, monkeypatch, capfd):
    def out_of_memory(self, item, seed, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(WANEngine, "_generate", out_of_memory)
    engine = WANEngine(str(tiny_wan), WANSettings(warmup=True))
    engine.setup("cpu")  # no exception: jobs that size will fail on their own, smaller ones still run
    assert "wan_warmup_out_of_memory" in capfd.readouterr().err
    assert engine.pipe is not None and engine.pipe.vae.use_tiling  # the retry tiled the decoder


def test_text_encoder_on_cpu_gives_the_same_video(tiny_wan):
    on_device = engine_for(tiny_wan)
    on_cpu = engine_for(tiny_wan, text_encoder_device="cpu")
    job = wan_job(frames=5, seed=8)
    a = on_device.run([prepare(on_device, job)], Ctx())[0].items[0].frames
    b = on_cpu.run([prepare(on_cpu, job)], Ctx())[0].items[0].frames
    assert np.allclose(a.astype(int), b.astype(int), atol=2)


def test_text_encoder_auto_goes_on_the_gpu_only_with_the_headroom_left(tiny_wan):
    gib = 2**30
    # UMT5 11 GiB, transformer and VAE 4 GiB, 8 GiB to keep for generating
    assert encoder_placement(free_bytes=24 * gib, encoder_bytes=11 * gib, model_bytes=4 * gib, headroom_gb=8) == "gpu"
    assert encoder_placement(free_bytes=22 * gib, encoder_bytes=11 * gib, model_bytes=4 * gib, headroom_gb=8) == "cpu"
    engine = engine_for(tiny_wan, text_encoder_device="auto")  # no CUDA card to budget: the device itself
    assert engine.text_encoder_device == "gpu" and engine.pipe.text_encoder.dtype == engine.pipe.transformer.dtype


def test_first_block_cache_runs_for_fast_presets_only(tiny_wan):
    engine = engine_for(tiny_wan, cache="first_block")
    fast = engine.run([prepare(engine, wan_job("video_fast", frames=5))], Ctx())[0]
    assert engine._cache_enabled and fast.items
    engine.run([prepare(engine, wan_job("video_high", frames=5))], Ctx())
    assert not engine._cache_enabled


def test_bench_wan_runs_every_mode(tiny_wan):
    from workers.bench.wan import run_wan_bench

    report = run_wan_bench(str(tiny_wan), device="cpu", width=64, height=64, frames=5, steps=2)
    assert set(report["seconds_per_job"]) == {"diffusers_default", "worker", "worker_first_block_cache"}
    assert report["speedup_vs_diffusers"]["diffusers_default"] == {"image": 1.0, "video": 1.0}

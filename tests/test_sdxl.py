"""The SDXL engine on a tiny random-weight model, loaded the way production loads it."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.decode.contract import parse_job
from shared.decode.decoder import Plan, PlanTools
from shared.decode.fetch import ReferenceFetcher
from shared.decode.presets import load_presets
from shared.deliver.publish import job_metadata
from shared.deliver.storage import FileStorage
from shared.engine.errors import JobError
from shared.ops.engine_settings import SDXLSettings
from shared.ops.settings import DEFAULT_PRESETS, Settings
from tests.backend_payloads import build_payload, push
from tests.helpers import running_worker
from tests.single_file import save_ldm_checkpoint
from workers.sdxl.engine import SDXLEngine
from workers.sdxl.plan import plan_sdxl
from workers.sdxl.schedulers import normalize_scheduler
from workers.sdxl.tiny import make_tiny_sdxl

PRESETS = load_presets(str(DEFAULT_PRESETS))


class Ctx:
    """A stand-in for the runtime's context: records progress, cancels what it is told to."""

    def __init__(self, cancel=()):
        self.cancel = set(cancel)
        self.steps = []

    def check(self, job):
        if job.id in self.cancel:
            raise JobError("cancelled", "cancelled by request")

    def progress(self, job, step, total):
        self.steps.append((job.id, step, total))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    return make_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def engine(tiny_sdxl, tmp_path_factory):
    store = FileStorage(tmp_path_factory.mktemp("refs"))
    sdxl = SDXLEngine(str(tiny_sdxl), SDXLSettings(max_batch_images=6))
    sdxl.setup("cpu")
    sdxl.test_store = store
    sdxl.test_fetcher = ReferenceFetcher(Settings(reference_allowed_hosts="127.0.0.1", reference_allow_private=True),
                                         store)
    return sdxl


def decode(sdxl, j) -> Plan:
    """What the runtime does ahead of the GPU: the job planned for the model, references fetched."""
    fetcher = getattr(sdxl, "test_fetcher", None)
    return plan_sdxl(j, PlanTools(fetch_image=fetcher.fetch_image if fetcher else None, engine=sdxl))


def prepare(sdxl, j):
    """The engine's input for a job."""
    return decode(sdxl, j).input


def job(prompt="a red fox", era="v1", **kwargs):
    kwargs.setdefault("width", 64)
    kwargs.setdefault("height", 64)
    kwargs.setdefault("steps", 3)
    metadata = kwargs.pop("metadata", None)
    config = kwargs.pop("config", None)
    top = kwargs.pop("top", None)
    payload = build_payload(era, "sdxl_image_fast", prompt, **kwargs)
    payload["metadata"].update(metadata or {})
    payload["config"].update(config or {})
    payload.update(top or {})
    return parse_job(payload, PRESETS)


def pixels(result, i=0):
    return np.asarray(result.items[i].image, dtype=np.float64)


def png_bytes(size, color):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_same_seed_same_image_and_image_i_uses_seed_plus_i(engine):
    a = engine.run([prepare(engine, job(seed=5, num_images=3))], Ctx())[0]
    b = engine.run([prepare(engine, job(seed=6))], Ctx())[0]
    c = engine.run([prepare(engine, job(seed=5))], Ctx())[0]
    again = engine.run([prepare(engine, job(seed=5))], Ctx())[0]
    assert [item.seed for item in a.items] == [5, 6, 7]
    assert np.array_equal(pixels(c), pixels(again))  # the same call is bit-exact
    assert np.allclose(pixels(a, 0), pixels(c), atol=2)  # another batch shape: float tolerance
    assert np.allclose(pixels(a, 1), pixels(b), atol=2)  # image 1 of seed 5 is image 0 of seed 6
    assert not np.array_equal(pixels(a, 0), pixels(a, 1))


def test_batched_jobs_get_the_images_they_would_get_alone(engine):
    jobs = [prepare(engine, job(f"prompt number {i}", seed=100 * i, num_images=n)) for i, n in enumerate((1, 3, 2))]
    assert len({engine.batch_key(j) for j in jobs}) == 1
    batched = engine.run(jobs, Ctx())
    for j, together in zip(jobs, batched, strict=True):
        alone = engine.run([j], Ctx())[0]
        assert len(together.items) == j.count
        for i in range(j.count):
            assert np.allclose(pixels(together, i), pixels(alone, i), atol=2)


def test_single_file_checkpoint_gives_the_same_images_as_the_folder(engine, tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    folder = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    checkpoint = save_ldm_checkpoint(folder, tiny_sdxl.parent / "single-file" / "tiny-sdxl.safetensors")
    single = SDXLEngine(str(checkpoint), SDXLSettings(config_dir=str(tiny_sdxl), warmup=False))
    single.setup("cpu")
    j = job(seed=9)
    assert np.array_equal(pixels(single.run([prepare(single, j)], Ctx())[0]), pixels(engine.run([prepare(engine, j)], Ctx())[0]))


def test_missing_config_for_a_single_file_says_what_to_set(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="SDXL_CONFIG_DIR"):
        SDXLEngine(str(checkpoint), SDXLSettings(warmup=False)).setup("cpu")


def test_long_prompts_are_not_cut_at_77_tokens(engine):
    filler = "a very detailed painting of a quiet harbour at dusk, " * 4  # about 200 tokens
    cat = engine.run([prepare(engine, job(filler + "with a cat", seed=1))], Ctx())[0]
    dog = engine.run([prepare(engine, job(filler + "with a dog", seed=1))], Ctx())[0]
    assert cat.metadata["prompt_chunks"] >= 3
    assert not np.array_equal(pixels(cat), pixels(dog))  # the words past token 77 matter


def test_compel_weights_change_the_image_and_only_when_enabled(engine):
    weighted = engine.run([prepare(engine, job("a (red)1.8 fox", seed=3, top={"compel_enabled": True}))], Ctx())[0]
    plain_syntax = engine.run([prepare(engine, job("a (red)1.8 fox", seed=3))], Ctx())[0]
    unweighted = engine.run([prepare(engine, job("a red fox", seed=3, top={"compel_enabled": True}))], Ctx())[0]
    assert weighted.metadata["compel"] is True
    assert not np.array_equal(pixels(weighted), pixels(unweighted))
    assert not np.array_equal(pixels(weighted), pixels(plain_syntax))


def readme_scheduler_names() -> list[str]:
    """Every scheduler spelling the SDXL worker's docs promise, read from the docs themselves."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text()
    bullet = text.split("**Schedulers by name**", 1)[1].split("\n- ", 1)[0]
    names = [n for chunk in re.findall(r"`([^`]+)`", bullet) for n in chunk.split(" / ")]
    assert len(names) >= 9, names
    return names


@pytest.mark.parametrize("name", readme_scheduler_names())
def test_every_scheduler_the_docs_list_runs_a_job(engine, name):
    result = engine.run([prepare(engine, job(seed=2, config={"scheduler": name}))], Ctx())[0]
    assert not isinstance(result, JobError), result
    assert result.items[0].image.size == (64, 64) and result.metadata["scheduler"] == normalize_scheduler(name)


def test_compel_weights_are_joined_to_the_prompt_and_read_by_compel(engine):
    weights = "(red fur:1.6), (snow)0.5"
    weighted = engine.run([prepare(engine, job(seed=3, top={"compel_enabled": True, "compel_weights": weights}))],
                          Ctx())[0]
    unweighted = engine.run([prepare(engine, job(seed=3, top={"compel_enabled": True, "compel_weights": None}))],
                            Ctx())[0]
    typed = engine.run([prepare(engine, job("a red fox (red fur)1.6, (snow)0.5", seed=3,
                                           top={"compel_enabled": True}))], Ctx())[0]
    assert not np.array_equal(pixels(weighted), pixels(unweighted))  # the weights change the image
    assert np.array_equal(pixels(weighted), pixels(typed))  # exactly as if written into the prompt
    with_weights = job(seed=3, top={"compel_enabled": True, "compel_weights": weights})
    assert job_metadata(with_weights, weighted)["final_prompt"] == "a red fox (red fur)1.6, (snow)0.5"
    plain = job(seed=3, top={"compel_enabled": True})
    assert job_metadata(plain, unweighted)["final_prompt"] == "a red fox"  # no weights: the plain prompt
    disabled = job(seed=3, top={"compel_enabled": False, "compel_weights": weights})
    assert job_metadata(disabled)["final_prompt"] == "a red fox" and "compel_weights" not in job_metadata(disabled)


def test_compel_weights_apply_to_img2img_and_in_the_v1_config_shape(engine):
    engine.test_store.put("user-library", "u/w.png", png_bytes((64, 64), (30, 160, 90)), "image/png")
    reference = {"reference_image_url": "user-library/u/w.png", "reference_strength": 0.2}

    def edit(**compel):
        return engine.run([prepare(engine, job(seed=6, metadata=reference, config=compel))], Ctx())[0]

    weighted = edit(compel_enabled=True, compel_weights="(blue sky:1.7)")
    plain = edit(compel_enabled=True)
    assert not np.array_equal(pixels(weighted), pixels(plain))


def test_unknown_scheduler_and_bad_size_fail_before_the_gpu(engine):
    with pytest.raises(JobError, match="unknown scheduler"):
        prepare(engine, job(config={"scheduler": "magic"}))
    with pytest.raises(JobError, match="multiples of 8"):
        prepare(engine, job(width=100))


def test_img2img_from_a_storage_key_with_compel(engine):
    engine.test_store.put("user-library", "u/ref.png", png_bytes((128, 96), (250, 120, 0)), "image/png")
    plan = decode(engine, job(seed=4, top={"compel_enabled": True},
                              metadata={"reference_image_url": "user-library/u/ref.png", "reference_strength": 0.4}))
    j = plan.input
    assert j.mode == "img2img" and j.denoise_strength == pytest.approx(0.6) and j.compel
    result = engine.run([j], Ctx())[0]
    assert result.items[0].image.size == (64, 64)
    assert plan.asset_facts == {"reference_resize": "cover", "reference_original_size": [128, 96]}


def test_exact_copy_keeps_the_reference_framing_and_runs_at_least_one_step(engine):
    engine.test_store.put("user-library", "u/wide.png", png_bytes((200, 100), (0, 90, 200)), "image/png")
    raw = job("", era="v2", seed=4, steps=10, width=128, height=128, reference_image_url="user-library/u/wide.png",
              metadata={"exact_copy_mode": True})
    j = prepare(engine, raw)
    assert j.guidance_scale == 1.0 and j.negative_prompt == "" and j.denoise_strength == 0.05
    assert j.width / j.height == pytest.approx(2.0, rel=0.15) and j.width % 8 == 0
    assert j.steps >= 20  # 20 steps x 0.05 denoise = one real step
    ctx = Ctx()
    result = engine.run([j], ctx)[0]
    assert result.items[0].image.size == (j.width, j.height)
    assert ctx.steps and ctx.steps[-1][1:] == (1, 1)


def test_a_cancelled_job_leaves_its_batch_mates_alone(engine):
    keep, drop = prepare(engine, job("keep", seed=1)), prepare(engine, job("drop", seed=2))
    results = engine.run([keep, drop], Ctx(cancel={drop.id}))
    assert len(results[0].items) == 1
    assert isinstance(results[1], JobError) and results[1].error_type == "cancelled"


class OOMEngine(SDXLEngine):
    """Pretends the GPU holds at most `fits` images per call."""

    def __init__(self, *args, fits=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.fits, self.calls = fits, []

    def _call_pipeline(self, images, *args, **kwargs):
        self.calls.append(len(images))
        if len(images) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._call_pipeline(images, *args, **kwargs)


def test_out_of_memory_splits_the_batch_and_keeps_every_image(tiny_sdxl, engine):
    oom = OOMEngine(str(tiny_sdxl), SDXLSettings(warmup=False), fits=2)
    oom.setup("cpu")
    jobs = [prepare(oom, job(f"p{i}", seed=10 * i, num_images=3)) for i in range(2)]
    results = oom.run(jobs, Ctx())
    assert oom.calls[0] == 6  # all six images tried together first
    assert sum(n for n in oom.calls if n <= 2) == 6  # then every image made in calls that fit
    for j, result in zip(jobs, results, strict=True):
        alone = engine.run([j], Ctx())[0]
        assert all(np.allclose(pixels(result, i), pixels(alone, i), atol=2) for i in range(3))
    oom.fits = 0
    failed = oom.run([prepare(oom, job(seed=1))], Ctx())[0]
    assert isinstance(failed, JobError) and failed.error_type == "out_of_memory" and "64x64" in failed.message


@pytest.mark.parametrize("era", ["v1", "v2"])
def test_end_to_end_through_redis(era, engine, make_settings, redis_client, backend):
    backend.files["/refs/cat.png"] = (200, png_bytes((80, 80), (10, 200, 30)), {})
    text = build_payload(era, "sdxl_image_high", "a lighthouse", width=64, height=64, steps=3, num_images=3, seed=77)
    img2img = build_payload(era, "sdxl_image_fast", "a cat", width=64, height=64, steps=4, seed=5,
                            reference_image_url=f"{backend.url}/refs/cat.png?token=signed")
    bad_reference = build_payload(era, "sdxl_image_fast", "a dog", width=64, height=64, steps=2,
                                  reference_image_url="https://metadata.internal.example/latest.png")
    for payload in (text, img2img, bad_reference):
        push(redis_client, era, payload)
    with running_worker(make_settings(contract=era, reference_allow_private=True), engine=engine):
        callbacks = {c["job_id"]: c for c in backend.wait_for_terminal(3, timeout=60)}
    refused = callbacks[bad_reference["id"]]
    assert refused["status"] == "failed" and refused["metadata"]["error_type"] == "reference_error"
    assert "metadata.internal.example is not allowed" in refused["error_message"]
    done, edited = callbacks[text["id"]], callbacks[img2img["id"]]
    assert done["status"] == edited["status"] == "completed", (done, edited)
    assert done["metadata"]["seeds"] == [77, 78, 79] and done["metadata"]["scheduler"] == "unipc"
    assert edited["metadata"]["denoise_strength"] == pytest.approx(0.15)
    bucket = "sdxl_image_high" if era == "v1" else "workspace-temp"
    key = f"{text['user_id']}/{text['id']}/2.png"
    assert Image.open(io.BytesIO(backend.objects[(bucket, key)][0])).size == (64, 64)
    thumb = backend.objects[(bucket, key.replace(".png", ".thumb.webp"))]
    assert thumb[1] == "image/webp" and Image.open(io.BytesIO(thumb[0])).format == "WEBP"
    if era == "v2":
        assert [a["metadata"]["seed"] for a in done["assets"]] == [77, 78, 79]
        assert edited["assets"][0]["metadata"]["reference_resize"] == "cover"
    else:
        assert done["assets"][2] == key


def test_bench_sdxl_runs_all_three_modes(tiny_sdxl):
    from workers.bench.sdxl import run_sdxl_bench

    report = run_sdxl_bench(str(tiny_sdxl), device="cpu", jobs=2, steps=2, size=64, batch=2)
    assert set(report["seconds_per_image"]) == {"diffusers_default", "worker_one_job_at_a_time",
                                                "worker_batched_across_jobs"}
    assert report["speedup_vs_diffusers"]["diffusers_default"] == 1.0
    assert "s/image" in report["table"]


def test_random_weights_pipeline_builds_from_a_config_folder(tiny_sdxl):
    from workers.bench.sdxl import random_weights_pipeline

    pipe = random_weights_pipeline(str(tiny_sdxl), dtype=torch.float32)
    assert pipe.unet.config.cross_attention_dim == 48 and pipe.text_encoder_2.config.hidden_size == 32

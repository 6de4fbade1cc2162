"""What a callback says about a job, end to end through a worker: sizes, reference modes, steps."""

import pytest

from shared.deliver.media import probe_mp4
from tests.backend_payloads import build_payload, push
from tests.helpers import running_worker, submit


def test_v2_video_resolution_is_an_aspect_ratio_at_the_models_area(make_settings, redis_client, backend):
    wide = submit(redis_client, "v2", "video_fast", width=None, height=None, resolution="1024x576", frames=5)
    tall = submit(redis_client, "v2", "video_fast", width=None, height=None, resolution="576x1024", frames=5)
    square = submit(redis_client, "v2", "video_fast", width=None, height=None, resolution="1024x1024", frames=5)
    exact = build_payload("v1", "video_fast", "a lighthouse", width=480, height=832, frames=5, steps=4)
    with running_worker(make_settings(contract="v2")):
        callbacks = {c["job_id"]: c for c in backend.wait_for_terminal(3)}
    made = {name: callbacks[p["id"]] for name, p in (("wide", wide), ("tall", tall), ("square", square))}
    for name, size, requested in (("wide", (832, 480), [1024, 576]), ("tall", (480, 832), [576, 1024]),
                                  ("square", (624, 624), [1024, 1024])):
        meta, asset = made[name]["metadata"], made[name]["assets"][0]
        assert (meta["width"], meta["height"]) == size and meta["requested_size"] == requested, name
        assert (asset["metadata"]["width"], asset["metadata"]["height"]) == size, name
        info = probe_mp4(backend.objects[("workspace-temp", asset["url"])][0])
        assert info["size"] == size, name
    push(redis_client, "v1", exact)
    with running_worker(make_settings(contract="v1")):
        v1 = backend.wait_for_terminal(4)[-1]
    assert (v1["metadata"]["width"], v1["metadata"]["height"]) == (480, 832)  # an explicit size stays as asked


def test_a_start_end_frame_video_is_reported_as_what_it_was(make_settings, redis_client, backend):
    video = build_payload("v2", "video_fast", "a walk", width=64, height=64, frames=5, steps=2)
    video["metadata"].update({"video_reference_mode": "both", "reference_mode": None,
                              "start_reference_url": "https://x.supabase.co/storage/v1/object/sign/a.png",
                              "end_reference_url": "https://x.supabase.co/storage/v1/object/sign/b.png",
                              "reference_strength": 0.85})
    push(redis_client, "v2", video)
    image = submit(redis_client, "v2", reference_image_url="https://x.supabase.co/storage/v1/object/sign/c.png")
    with running_worker(make_settings(contract="v2")):
        callbacks = {c["job_id"]: c for c in backend.wait_for_terminal(2)}
    meta = callbacks[video["id"]]["metadata"]
    assert meta["video_reference_mode"] == "both"
    assert "reference_mode" not in meta and "denoise_strength" not in meta
    assert "denoise_strength" not in callbacks[video["id"]]["assets"][0]["metadata"]
    edited = callbacks[image["id"]]["metadata"]  # image-to-image keeps reporting its denoise
    assert edited["reference_mode"] == "modify" and edited["denoise_strength"] == pytest.approx(0.15)


@pytest.mark.parametrize("era", ["v1", "v2"])
def test_every_asset_reports_num_inference_steps(make_settings, redis_client, backend, era):
    image = submit(redis_client, era, steps=7, num_images=2)
    video = submit(redis_client, era, "video_fast", steps=3, frames=5)
    with running_worker(make_settings(contract=era)):
        callbacks = {c["job_id"]: c for c in backend.wait_for_terminal(2)}
    if era == "v2":
        for payload, steps in ((image, 7), (video, 3)):
            for asset in callbacks[payload["id"]]["assets"]:
                assert asset["metadata"]["num_inference_steps"] == asset["metadata"]["steps"] == steps
    else:  # v1 assets are bare keys; the job-level metadata carries the steps
        assert callbacks[image["id"]]["metadata"]["steps"] == 7

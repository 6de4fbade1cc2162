import json

import pytest

from shared.decode.contract import parse_job
from shared.decode.presets import load_presets
from shared.engine.errors import BadPayload, JobError
from shared.ops.settings import DEFAULT_PRESETS
from shared.source import keys
from shared.source.element import decode_element
from tests.backend_payloads import build_payload, element

PRESETS = load_presets(str(DEFAULT_PRESETS))
USER = "3f8a9c1e-0000-4000-8000-00000000abcd"


def v1_sdxl(**config):
    payload = build_payload("v1", "sdxl_image_fast", "a red fox", user_id=USER, job_id="job-1")
    payload["config"].update(config)
    return payload


@pytest.mark.parametrize(
    "wrap",
    [
        lambda p: p,  # an object (already decoded)
        lambda p: json.dumps(p),  # v1: the JSON text of the payload
        lambda p: json.dumps([json.dumps(p)]),  # v2 since 2026-02: an array holding the text
        lambda p: json.dumps([p]),  # an array holding the object
        lambda p: json.dumps(p).encode(),  # bytes from a raw Redis client
    ],
)
def test_every_element_shape_parses_to_the_same_job(wrap):
    job = parse_job(wrap(v1_sdxl(seed=7)), PRESETS)
    assert (job.id, job.user_id, job.type, job.seed, job.prompt) == ("job-1", USER, "sdxl_image_fast", 7, "a red fox")


@pytest.mark.parametrize(
    "raw, message",
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "array of 2"),
        ("42", "expected an object"),
        (json.dumps({"type": "sdxl_image_fast", "user_id": USER, "prompt": "x"}), "no id"),
    ],
)
def test_unusable_payloads_have_no_id_and_say_why(raw, message):
    with pytest.raises(BadPayload) as err:
        parse_job(raw, PRESETS)
    assert message in err.value.message
    assert err.value.job_id is None


def test_v1_sdxl_takes_payload_values_and_presets_fill_the_rest():
    payload = v1_sdxl(num_inference_steps=40, guidance_scale=8.0, num_images=3, seed=100)
    del payload["config"]["scheduler"]
    job = parse_job(payload, PRESETS)
    assert (job.steps, job.guidance_scale, job.num_images) == (40, 8.0, 3)
    assert job.scheduler == PRESETS.types["sdxl_image_fast"]["scheduler"]
    assert job.image_seeds() == [100, 101, 102]
    assert job.queue == keys.SDXL_QUEUE and job.bucket("v1") == "sdxl_image_fast" and job.bucket("v2") == "workspace-temp"


def test_preset_policy_fixes_generation_parameters_but_not_user_choices():
    job = parse_job(v1_sdxl(num_inference_steps=40, guidance_scale=8.0, num_images=6, seed=5), PRESETS, policy="preset")
    preset = PRESETS.types["sdxl_image_fast"]
    assert (job.steps, job.guidance_scale) == (preset["steps"], preset["guidance_scale"])
    assert (job.num_images, job.seed) == (6, 5)


def test_v1_wan_size_frames_and_enhancement():
    payload = build_payload("v1", "video7b_fast_enhanced", "a cat", user_id=USER, job_id="job-2")
    job = parse_job(payload, PRESETS)
    assert (job.width, job.height, job.frames, job.fps) == (480, 832, 83, 16)
    assert job.engine == "wan" and job.media == "video" and job.enhance_prompt and job.shift == 5
    assert job.queue == keys.WAN_QUEUE


def test_wan_image_types_are_one_frame():
    payload = build_payload("v1", "image_high", "a cat", user_id=USER, job_id="job-3")
    payload["config"]["frame_num"] = 81
    assert parse_job(payload, PRESETS).frames == 1


def test_v2_payload_resolution_job_type_alias_and_absent_values():
    payload = build_payload("v2", "video_fast", "waves", user_id=USER, job_id="job-4")
    payload["type"] = None  # only job_type left, in its v2 spelling
    payload["config"]["resolution"] = "576x1024"
    job = parse_job(element("v2", payload), PRESETS)
    assert job.type == "video_fast" and (job.width, job.height) == (480, 832)  # 9:16 at Wan's 480p area
    assert job.requested_size == (576, 1024)
    assert job.steps == PRESETS.types["video_fast"]["steps"]


def test_v2_exact_copy_forces_low_denoise_cfg_one_and_no_negative():
    payload = build_payload("v2", "sdxl_image_high", "", user_id=USER, job_id="job-5",
                            reference_image_url="https://x.supabase.co/storage/v1/object/sign/a.png")
    payload["metadata"].update({"exact_copy_mode": True, "denoise_strength": 0.4})
    payload["negative_prompt"] = "ugly"
    job = parse_job(payload, PRESETS)
    assert job.mode == "img2img"
    assert job.references.denoise_strength == 0.05 and job.guidance_scale == 1.0 and job.negative_prompt == ""


def test_reference_strength_becomes_denoise():
    payload = v1_sdxl()
    payload["metadata"].update({"reference_image_url": "https://x/a.png", "reference_strength": 0.7})
    job = parse_job(payload, PRESETS)
    assert job.references.denoise_strength == pytest.approx(0.3) and job.mode == "img2img"


def test_payload_negative_prompt_replaces_preset_one():
    payload = v1_sdxl()
    payload["negative_prompt"] = "cartoon"
    assert parse_job(payload, PRESETS).negative_prompt == "cartoon"
    payload["negative_prompt"] = None
    assert parse_job(payload, PRESETS).negative_prompt == PRESETS.defaults["sdxl_negative_prompt"]


def test_absent_or_negative_seed_gets_a_fresh_seed_that_is_reported():
    a = parse_job(v1_sdxl(seed=-1), PRESETS)
    b = parse_job(v1_sdxl(), PRESETS)
    assert not a.seed_from_payload and 0 <= a.seed < 2**32
    assert not b.seed_from_payload


@pytest.mark.parametrize(
    "mutate, error_type, fragment",
    [
        (lambda p: p["config"].update(num_inference_steps=-5), "invalid_parameter", "steps=-5"),
        (lambda p: p["config"].update(num_inference_steps="many"), "invalid_parameter", "must be a number"),
        (lambda p: p["config"].update(guidance_scale=99), "invalid_parameter", "guidance_scale"),
        (lambda p: p["config"].update(num_images=50), "invalid_parameter", "num_images"),
        (lambda p: p["config"].update(width=4096), "invalid_parameter", "width"),
        (lambda p: p.update(prompt="x" * 1_000_000), "invalid_parameter", "prompt is 1000000 characters"),
        (lambda p: p.update(prompt=""), "invalid_parameter", "prompt is empty"),
        (lambda p: p.update(type="sdxl_image_ultra"), "unsupported_job_type", "sdxl_image_ultra"),
        (lambda p: p.update(user_id="../../x"), "invalid_payload", "not a safe path segment"),
        (lambda p: p.pop("user_id"), "invalid_payload", "no user_id"),
        (lambda p: p.update(config="{broken"), "invalid_payload", "config is not a JSON object"),
    ],
)
def test_bad_values_fail_with_a_clear_error_and_keep_the_job_id(mutate, error_type, fragment):
    payload = v1_sdxl()
    mutate(payload)
    with pytest.raises(JobError) as err:
        parse_job(json.dumps(payload), PRESETS)
    assert err.value.error_type == error_type
    assert fragment in err.value.message
    assert err.value.job_id == "job-1"


def test_unsafe_job_id_is_not_trusted():
    payload = v1_sdxl()
    payload["id"] = "../../etc/passwd"
    with pytest.raises(BadPayload) as err:
        parse_job(payload, PRESETS)
    assert err.value.job_id is None and "not a safe identifier" in err.value.message


def test_decode_rejects_deep_garbage():
    with pytest.raises(BadPayload):
        decode_element(json.dumps([json.dumps([1, 2])]))


@pytest.mark.parametrize("resolution, made", [("1024x576", (832, 480)), ("576x1024", (480, 832)),
                                              ("1024x1024", (624, 624))])
def test_v2_video_resolution_picks_the_aspect_at_the_presets_area(resolution, made):
    payload = build_payload("v2", "video_high", "waves", user_id=USER, job_id="job-9", resolution=resolution)
    job = parse_job(element("v2", payload), PRESETS)
    assert (job.width, job.height) == made and job.width % 16 == 0 and job.height % 16 == 0
    assert job.requested_size == tuple(int(v) for v in resolution.split("x"))
    assert job.width * job.height <= PRESETS.types["video_high"]["native_area"]


def test_explicit_sizes_stay_as_asked_and_sdxl_resolution_is_exact():
    v1 = parse_job(build_payload("v1", "video_fast", "waves", user_id=USER, job_id="job-10"), PRESETS)
    assert (v1.width, v1.height) == (480, 832) and v1.requested_size == (480, 832)
    sdxl = parse_job(build_payload("v2", "sdxl_image_fast", "a fox", user_id=USER, job_id="job-11",
                                   resolution="1024x576"), PRESETS)
    assert (sdxl.width, sdxl.height) == (1024, 576)
    fixed = parse_job(build_payload("v2", "video_fast", "waves", user_id=USER, job_id="job-12",
                                    resolution="1024x576"), PRESETS, policy="preset")
    assert (fixed.width, fixed.height) == (480, 832) and fixed.requested_size is None


def test_video_reference_frames_carry_no_denoise():
    payload = build_payload("v2", "video_fast", "a walk", user_id=USER, job_id="job-13")
    payload["metadata"].update({"video_reference_mode": "both", "start_reference_url": "s.png",
                                "end_reference_url": "e.png", "denoise_strength": 0.5})
    job = parse_job(payload, PRESETS)
    assert job.mode == "video" and job.references.video_reference_mode == "both"
    assert job.references.denoise_strength is None


@pytest.mark.parametrize("where", ["top", "config", "metadata"])
@pytest.mark.parametrize("weights, compel_text", [
    ("(masterpiece:1.2), (best quality:1.3)", "(masterpiece)1.2, (best quality)1.3"),
    ("(sharp)1.1 detailed++", "(sharp)1.1 detailed++"),
    ({"portrait": 1.2, "detailed": 1.1}, "(portrait)1.2, (detailed)1.1"),
    ('{"portrait": 1.2}', "(portrait)1.2"),
    (["(a:1.5)", "b"], "(a)1.5, b"),
])
def test_compel_weights_in_every_shape_become_compel_syntax(where, weights, compel_text):
    payload = build_payload("v1", "sdxl_image_fast", "a fox", user_id=USER, job_id="job-14")
    payload.update({"compel_enabled": None, "compel_weights": None})
    target = {"top": payload, "config": payload["config"], "metadata": payload["metadata"]}[where]
    target.update({"compel_enabled": True, "compel_weights": weights})
    job = parse_job(payload, PRESETS)
    assert job.compel_enabled and job.compel_weights == compel_text
    assert job.encoder_prompt == f"a fox {compel_text}"


def test_compel_flags_and_bad_weights():
    payload = build_payload("v2", "sdxl_image_fast", "a fox", user_id=USER, job_id="job-15")
    payload.update({"compel_enabled": False, "compel_weights": "(red:1.5)"})
    off = parse_job(payload, PRESETS)
    assert not off.compel_enabled and off.encoder_prompt == "a fox"  # switched off: the plain prompt
    del payload["compel_enabled"]
    assert parse_job(payload, PRESETS).encoder_prompt == "a fox (red)1.5"  # weights alone imply Compel
    payload["compel_weights"] = {"red": "very"}
    with pytest.raises(JobError) as err:
        parse_job(payload, PRESETS)
    assert err.value.error_type == "invalid_parameter" and "weight of 'red' must be a number" in err.value.message

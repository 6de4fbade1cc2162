import json

from shared.deliver.callback import Asset, build_callback, encode_body, sign, verify

ASSET = Asset(type="image", key="u/j/0.png", thumbnail_key="u/j/0.thumb.webp", metadata={"seed": 3, "width": 64})


def test_v1_assets_are_keys_and_v2_assets_are_objects():
    v1 = build_callback("v1", "j", "completed", [ASSET], metadata={"seed": 3})
    v2 = build_callback("v2", "j", "completed", [ASSET], metadata={"seed": 3})
    assert v1 == {"job_id": "j", "status": "completed", "assets": ["u/j/0.png"], "error_message": None,
                  "metadata": {"seed": 3}}
    assert v2["assets"] == [{"type": "image", "url": "u/j/0.png", "thumbnail_url": "u/j/0.thumb.webp",
                             "metadata": {"seed": 3, "width": 64}}]


def test_cancelled_is_a_failure_with_error_type_in_v1_and_its_own_status_in_v2():
    v1 = build_callback("v1", "j", "cancelled")
    v2 = build_callback("v2", "j", "cancelled")
    assert v1["status"] == "failed" and v1["metadata"]["error_type"] == "cancelled" and v1["error_message"]
    assert v2["status"] == "cancelled"


def test_signature_is_hmac_sha256_of_the_exact_body():
    body = encode_body(build_callback("v2", "j", "completed", [ASSET]))
    header = sign(body, "s3cret")
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify(body, "s3cret", header)
    assert not verify(body + b" ", "s3cret", header)
    assert not verify(body, "other", header)
    assert not verify(body, "s3cret", None)
    assert json.loads(body)["job_id"] == "j"

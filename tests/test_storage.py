import os
import stat

import pytest

from shared.decode.presets import load_presets
from shared.deliver.storage import BucketPolicy, FileStorage, SupabaseStorage, Uploader
from shared.engine.errors import JobError
from shared.ops.settings import DEFAULT_PRESETS

POLICY = BucketPolicy(load_presets(str(DEFAULT_PRESETS)))


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_file_storage_writes_outputs_readable_as_the_umask_allows(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        store = FileStorage(tmp_path)
    finally:
        os.umask(previous)
    store.put("sdxl_image_fast", "u/j/0.png", b"png", "image/png")
    assert stat.S_IMODE((tmp_path / "sdxl_image_fast" / "u/j/0.png").stat().st_mode) == mode


def test_file_storage_uses_the_bucket_layout_and_overwrites(tmp_path):
    store = FileStorage(tmp_path)
    store.put("sdxl_image_fast", "user/job/0.png", b"one", "image/png")
    store.put("sdxl_image_fast", "user/job/0.png", b"two", "image/png")
    assert (tmp_path / "sdxl_image_fast/user/job/0.png").read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "sdxl_image_fast/user/job").iterdir()] == ["0.png"]


@pytest.mark.parametrize("key", ["../escape.png", "user/../../x.png", "/abs.png", "a//b.png"])
def test_file_storage_refuses_keys_that_escape_the_bucket(tmp_path, key):
    with pytest.raises(JobError):
        FileStorage(tmp_path).put("bucket", key, b"x", "image/png")


def test_supabase_upload_sends_upsert_with_content_type(backend):
    store = SupabaseStorage(backend.url, "test-service-key")
    Uploader(store, POLICY, attempts=1).upload("workspace-temp", "u/j/0.png", b"png-bytes", "image/png")
    assert backend.objects[("workspace-temp", "u/j/0.png")] == (b"png-bytes", "image/png")


def test_transient_storage_errors_are_retried(backend):
    backend.storage.fail_next = 2  # 500, 500, then 200
    uploader = Uploader(SupabaseStorage(backend.url, "test-service-key"), POLICY, attempts=3, base_delay=0.01)
    uploader.upload("video_fast", "u/j/0.mp4", b"mp4", "video/mp4")
    assert ("video_fast", "u/j/0.mp4") in backend.objects


def test_storage_that_stays_down_is_a_retryable_job_error(backend):
    backend.storage.down = True
    uploader = Uploader(SupabaseStorage(backend.url, "test-service-key"), POLICY, attempts=2, base_delay=0.01)
    with pytest.raises(JobError) as err:
        uploader.upload("video_fast", "u/j/0.mp4", b"mp4", "video/mp4")
    assert err.value.retryable and err.value.error_type == "storage_unavailable"


def test_a_4xx_fails_the_job_with_the_stores_message(backend):
    uploader = Uploader(SupabaseStorage(backend.url, "wrong-key"), POLICY, attempts=3, base_delay=0.01)
    with pytest.raises(JobError) as err:
        uploader.upload("image_fast", "u/j/0.png", b"png", "image/png")
    assert not err.value.retryable and "invalid service key" in err.value.message
    assert "wrong-key" not in err.value.message


def test_limits_are_checked_before_upload(backend):
    uploader = Uploader(SupabaseStorage(backend.url, "test-service-key"), POLICY, attempts=1)
    with pytest.raises(JobError) as err:
        uploader.upload("sdxl_image_fast", "u/j/0.png", b"x" * (5 * 1024 * 1024 + 1), "image/png")
    assert err.value.error_type == "upload_too_large" and "5 MiB" in err.value.message
    with pytest.raises(JobError) as err:
        uploader.upload("video_fast", "u/j/0.thumb.webp", b"x", "image/webp")
    assert err.value.error_type == "upload_rejected"
    assert backend.upload_count == 0

"""The S3 backend against moto's S3 server over real HTTP (boto3 does the talking)."""

import socket

import boto3
import pytest
from moto.server import ThreadedMotoServer

from shared.decode.presets import load_presets
from shared.deliver.storage import BucketPolicy, S3Storage, Uploader, make_storage
from shared.engine.errors import JobError
from shared.ops.settings import DEFAULT_PRESETS, Settings


@pytest.fixture
def s3_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="renders")
    yield endpoint
    server.stop()


def test_s3_upload_lands_under_prefix_and_contract_bucket(s3_endpoint):
    storage = make_storage(Settings(storage_url=f"s3://renders?endpoint={s3_endpoint}&region=us-east-1&prefix=fleet"))
    assert isinstance(storage, S3Storage)
    storage.put("workspace-temp", "user/job/0.png", b"png-bytes", "image/png")
    obj = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").get_object(
        Bucket="renders", Key="fleet/workspace-temp/user/job/0.png")
    assert obj["Body"].read() == b"png-bytes" and obj["ContentType"] == "image/png"
    assert "renders" in storage.check()


def test_s3_missing_bucket_fails_the_job_with_the_stores_message(s3_endpoint):
    storage = S3Storage(f"s3://no-such-bucket?endpoint={s3_endpoint}&region=us-east-1")
    uploader = Uploader(storage, BucketPolicy(load_presets(str(DEFAULT_PRESETS))), attempts=2, base_delay=0.01)
    with pytest.raises(JobError) as err:
        uploader.upload("workspace-temp", "u/j/0.png", b"x", "image/png")
    assert err.value.error_type == "storage_error" and "404" in err.value.message

import io

import pytest
from PIL import Image

from shared.decode.fetch import ReferenceFetcher
from shared.deliver.storage import FileStorage
from shared.engine.errors import JobError
from shared.ops.settings import Settings


def png(size=(32, 16), color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def fetcher(backend, **overrides) -> ReferenceFetcher:
    values = dict(supabase_url=backend.url, reference_allow_private=True, reference_max_bytes=100_000,
                  reference_max_pixels=1_000_000)
    values.update(overrides)
    return ReferenceFetcher(Settings(**values))


def test_an_image_from_the_allowed_host_is_fetched(backend):
    backend.files["/refs/fox.png"] = (200, png(), {"Content-Type": "image/png"})
    image = fetcher(backend).fetch_image(f"{backend.url}/refs/fox.png?token=secret-signature")
    assert image.size == (32, 16) and image.mode == "RGB"


def test_private_addresses_are_refused_by_default(backend):
    backend.files["/refs/fox.png"] = (200, png(), {})
    with pytest.raises(JobError) as err:
        fetcher(backend, reference_allow_private=False).fetch_image(f"{backend.url}/refs/fox.png")
    assert err.value.error_type == "reference_error" and "non-public address (127.0.0.1)" in err.value.message


def test_hosts_not_allowed_are_refused_before_any_request(backend):
    with pytest.raises(JobError) as err:
        fetcher(backend, reference_allowed_hosts="cdn.example.com").fetch_image(f"{backend.url}/refs/x.png")
    assert "not allowed" in err.value.message


def test_redirects_are_checked_hop_by_hop(backend):
    backend.files["/refs/jump"] = (302, b"", {"Location": "http://169.254.169.254/latest/meta-data"})
    with pytest.raises(JobError) as err:
        fetcher(backend).fetch_image(f"{backend.url}/refs/jump")
    assert "169.254.169.254 is not allowed" in err.value.message


def test_wrong_content_is_refused_whatever_the_header_says(backend):
    backend.files["/refs/page.png"] = (200, b"<html>not an image</html>", {"Content-Type": "image/png"})
    with pytest.raises(JobError) as err:
        fetcher(backend).fetch_image(f"{backend.url}/refs/page.png")
    assert "not a PNG, JPEG or WEBP" in err.value.message


def test_too_many_bytes_and_too_many_pixels_are_refused(backend):
    backend.files["/refs/big.png"] = (200, b"\x89PNG\r\n\x1a\n" + b"0" * 200_000, {})
    with pytest.raises(JobError) as err:
        fetcher(backend).fetch_image(f"{backend.url}/refs/big.png")
    assert "limit is 100000" in err.value.message
    backend.files["/refs/wide.png"] = (200, png(size=(2000, 1000)), {})
    with pytest.raises(JobError) as err:
        fetcher(backend).fetch_image(f"{backend.url}/refs/wide.png")
    assert "2000x1000, more than 1000000 pixels" in err.value.message


def test_signed_url_tokens_never_appear_in_errors(backend):
    with pytest.raises(JobError) as err:
        fetcher(backend).fetch_image(f"{backend.url}/refs/missing.png?token=eyJsecret")
    assert "404" in err.value.message and "eyJsecret" not in err.value.message


def test_raw_storage_keys_are_read_through_storage(tmp_path, backend):
    store = FileStorage(tmp_path)
    store.put("user-library", "u1/ref.png", png(), "image/png")
    f = ReferenceFetcher(Settings(supabase_url=backend.url), store)
    assert f.fetch_image("user-library/u1/ref.png").size == (32, 16)
    with pytest.raises(JobError):
        f.fetch_image("secrets/u1/ref.png")
    with pytest.raises(JobError):
        f.fetch_image("file:///etc/passwd")


def test_raw_keys_in_the_real_reference_images_bucket(tmp_path, backend):
    store = FileStorage(tmp_path)
    store.put("reference_images", "u1/ref.png", png(), "image/png")
    store.put("reference-images", "u1/ref.png", png(), "image/png")
    f = ReferenceFetcher(Settings(supabase_url=backend.url), store)
    assert f.fetch_image("reference_images/u1/ref.png").size == (32, 16)
    with pytest.raises(JobError) as err:
        f.fetch_image("reference-images/u1/ref.png")  # no such bucket in the backend
    assert "neither a URL nor a key" in err.value.message


def test_an_allowed_host_with_a_port_matches_that_port_only(backend):
    backend.files["/refs/fox.png"] = (200, png(), {})
    port = int(backend.url.rsplit(":", 1)[1])
    url = f"{backend.url}/refs/fox.png"
    assert fetcher(backend, reference_allowed_hosts=f"127.0.0.1:{port}").fetch_image(url).size == (32, 16)
    assert fetcher(backend, reference_allowed_hosts="127.0.0.1").fetch_image(url).size == (32, 16)  # any port
    with pytest.raises(JobError) as err:
        fetcher(backend, reference_allowed_hosts=f"127.0.0.1:{port + 1}").fetch_image(url)
    assert f"127.0.0.1:{port} is not allowed" in err.value.message
    with pytest.raises(JobError):  # an explicit default port is a port like any other
        fetcher(backend, reference_allowed_hosts="127.0.0.1:443").fetch_image(url)
    # The default (no REFERENCE_ALLOWED_HOSTS): the SUPABASE_URL host at its own port only.
    assert Settings(supabase_url=backend.url).allowed_reference_hosts() == [f"127.0.0.1:{port}"]
    assert Settings(supabase_url="https://abc.supabase.co").allowed_reference_hosts() == ["abc.supabase.co"]

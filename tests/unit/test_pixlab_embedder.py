"""The PixLab embedder's wire contract (seeds/002) and its failure modes, against a loopback PixLab."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from lookalike.errors import BackendUnavailable, ConfigurationError, InvalidImage
from lookalike_pixlab.embedder import PixLabEmbedder, PixLabOptions
from tests.conftest import query_image
from tests.fake_pixlab import FakePixLab

KEY = "pixlab-test-key"


@pytest.fixture()
def pixlab(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePixLab]:
    server = FakePixLab(key=KEY)
    monkeypatch.setenv("PIXLAB_API_KEY", KEY)
    yield server
    server.stop()


def embedder(server: FakePixLab, **options: object) -> PixLabEmbedder:
    return PixLabEmbedder(PixLabOptions(endpoint=server.url, backoff_seconds=0, **options))


def photo() -> Image.Image:
    return Image.open(query_image("hat")).convert("RGB")


def test_request_shape_and_vectors(pixlab: FakePixLab) -> None:
    e = embedder(pixlab, dimension=1024)
    assert e.model_id == "pixlab/imgembed/1024" and e.dimension == 1024
    v = e.embed_images([photo()])
    assert v.shape == (1, 1024) and abs(float(np.linalg.norm(v)) - 1) < 1e-5
    sent = pixlab.requests[-1]
    assert sent["method"] == "POST" and sent["path"] == "/imgembed"
    assert sent["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="key"' in sent["raw"] and KEY.encode() in sent["raw"] and b'name="dimension"' in sent["raw"]
    assert b'name="file"; filename="image.jpg"' in sent["raw"] and b"\xff\xd8\xff" in sent["raw"]
    assert KEY not in str(sent["params"])  # the key travels in the body, not the URL (or its logs)


def test_retries_then_succeeds_or_gives_up(pixlab: FakePixLab) -> None:
    e = embedder(pixlab, max_retries=2)
    pixlab.fail_next("status", 429)
    pixlab.fail_next("status", 503)
    assert e.embed_images([photo()]).shape == (1, 1024)
    pixlab.fail_next("status", 502, times=3)
    with pytest.raises(BackendUnavailable, match="502"):
        e.embed_images([photo()])


def test_failure_modes(pixlab: FakePixLab, monkeypatch: pytest.MonkeyPatch) -> None:
    e = embedder(pixlab, max_retries=0, read_timeout=0.3)
    pixlab.fail_next("delay", 1.0)
    with pytest.raises(BackendUnavailable, match="in time"):
        e.embed_images([photo()])
    pixlab.fail_next("malformed")
    with pytest.raises(BackendUnavailable, match="malformed"):
        e.embed_images([photo()])
    pixlab.fail_next("status", 404)
    with pytest.raises(BackendUnavailable, match="404"):
        e.embed_images([photo()])
    monkeypatch.setenv("PIXLAB_API_KEY", "wrong")
    with pytest.raises(BackendUnavailable, match="refused the tenant's key"):
        embedder(pixlab).embed_images([photo()])
    monkeypatch.delenv("PIXLAB_API_KEY")
    with pytest.raises(ConfigurationError):
        embedder(pixlab)


def test_the_error_text_decides_not_the_status(pixlab: FakePixLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """PixLab sends body status 400 for a bad key, a bad parameter, a spent quota and a bad
    image alike; only the last is the user's 400."""
    e = embedder(pixlab, max_retries=0)
    monkeypatch.setattr("tests.fake_pixlab.fake_embedding", lambda data, dim: (_ for _ in ()).throw(OSError()))
    with pytest.raises(InvalidImage, match="Invalid image format"):
        e.embed_images([photo()])
    monkeypatch.undo()
    monkeypatch.setenv("PIXLAB_API_KEY", "wrong-key")
    with pytest.raises(BackendUnavailable, match="refused the tenant's key") as refused:
        embedder(pixlab).embed_images([photo()])
    assert "wrong-key" not in str(refused.value)
    monkeypatch.setenv("PIXLAB_API_KEY", KEY)
    pixlab.quota = 1
    assert embedder(pixlab).embed_images([photo()]).shape == (1, 1024)
    with pytest.raises(BackendUnavailable, match="quota is exhausted"):
        embedder(pixlab).embed_images([photo()])
    pixlab.quota = None
    odd = embedder(pixlab)
    odd.dimension = 768  # a parameter PixLab refuses: Lookalike's problem, in PixLab's words
    with pytest.raises(BackendUnavailable, match="refused the request: Invalid dimension"):
        odd.embed_images([photo()])


def test_a_proxy_page_is_retried_like_any_5xx(pixlab: FakePixLab) -> None:
    e = embedder(pixlab, max_retries=2)
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    pixlab.fail_next("raw", (502, page))
    pixlab.fail_next("raw", (503, b"upstream connect error"))
    assert e.embed_images([photo()]).shape == (1, 1024)
    pixlab.fail_next("raw", (504, page), times=3)
    with pytest.raises(BackendUnavailable, match="504"):
        e.embed_images([photo()])
    pixlab.fail_next("raw", (403, page))
    with pytest.raises(BackendUnavailable, match="403"):
        embedder(pixlab, max_retries=0).embed_images([photo()])


def test_key_from_secrets_manager(pixlab: FakePixLab, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On AWS the key comes from Secrets Manager (over its HTTP API here), not the config."""
    import boto3

    monkeypatch.delenv("PIXLAB_API_KEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server)
    boto3.client("secretsmanager").create_secret(Name="lookalike/pixlab-acme", SecretString=KEY)
    e = PixLabEmbedder(PixLabOptions(endpoint=pixlab.url, key_env=None, key_secret="lookalike/pixlab-acme"))
    assert e.embed_images([photo()]).shape == (1, 1024)
    assert KEY not in repr(e.options)  # the options name the secret, never hold it

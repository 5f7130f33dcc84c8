"""Blob stores (filesystem, S3 over HTTP on loopback) and embedders, each held to one contract."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from lookalike.contracts import BackendContext, BlobStore, Embedder
from lookalike.errors import BadRequest, NotFound
from lookalike_aws.s3 import S3BlobStore, S3Options
from lookalike_local.blobstore import FilesystemBlobStore
from lookalike_local.efficientnet import EfficientNetLite0, EfficientNetOptions
from lookalike_pixlab.embedder import PixLabEmbedder, PixLabOptions
from tests.conftest import catalog_images
from tests.fake_pixlab import FakePixLab
from tests.fakes import ColorHistogramEmbedder, MemoryBlobStore


@pytest.fixture(params=["filesystem", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "memory":
        yield MemoryBlobStore()
        return
    if request.param == "filesystem":
        yield FilesystemBlobStore(context=BackendContext(home=tmp_path))
        return
    endpoint = request.getfixturevalue("moto_server")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    yield S3BlobStore(S3Options(bucket=bucket, endpoint_url=endpoint, prefix="p/"))


def test_blob_roundtrip(store: BlobStore) -> None:
    store.put("t/anchors/a1", b"\x00\x01bytes", "image/png", {"model_id": "m"})
    blob = store.get("t/anchors/a1")
    assert (blob.data, blob.content_type, dict(blob.metadata)) == (b"\x00\x01bytes", "image/png", {"model_id": "m"})
    assert store.exists("t/anchors/a1") and not store.exists("t/anchors/a2")
    store.put("t/anchors/a1", b"new", "image/jpeg")
    assert store.get("t/anchors/a1").data == b"new"
    store.delete("t/anchors/a1")
    store.delete("t/anchors/a1")  # deleting twice is fine
    with pytest.raises(NotFound):
        store.get("t/anchors/a1")


def test_blob_keys_take_the_longest_item_id(store: BlobStore) -> None:
    """Item ids go to 256 characters, past a file name's 255 bytes; neighbours stay apart."""
    long_a, long_b = "t/items/" + "i" * 256, "t/items/" + "i" * 255 + "j"
    store.put(long_a, b"a", "image/png", {"item_id": "i" * 256})
    store.put(long_b, b"b", "image/png")
    assert store.get(long_a).data == b"a" and store.get(long_b).data == b"b"
    assert dict(store.get(long_a).metadata) == {"item_id": "i" * 256}
    store.delete(long_a)
    assert not store.exists(long_a) and store.exists(long_b)


def test_list_and_delete_a_prefix(store: BlobStore) -> None:
    """A collection's images are listed (orphan sweeps) and removed with it, nothing else."""
    long_id = "i" * 256
    keys = ["t/collections/c/images/a/v1", f"t/collections/c/images/{long_id}/v2", "t/collections/c/ingest/f.json"]
    for key in keys:
        store.put(key, b"x", "image/jpeg", {"item_id": "a"})
    store.put("t/collections/c2/images/a/v1", b"y")  # a neighbour whose name extends "c"
    listed = dict(store.list_keys("t/collections/c/"))
    assert sorted(listed) == sorted(keys)
    assert all(abs(t - time.time()) < 120 for t in listed.values())
    assert sorted(k for k, _ in store.list_keys("t/collections/c/images/")) == keys[:2]
    assert store.delete_prefix("t/collections/c/") == 3
    assert list(store.list_keys("t/collections/c/")) == [] and not store.exists(keys[1])
    assert store.get("t/collections/c2/images/a/v1").data == b"y"
    assert store.delete_prefix("t/collections/none/") == 0


def test_filesystem_cleans_what_killed_writes_left(tmp_path: Path) -> None:
    store = FilesystemBlobStore(context=BackendContext(home=tmp_path))
    store.put("t/collections/c/images/a/v1", b"kept")
    folder = store.root / "t" / "collections" / "c" / "images" / "a"
    stale_tmp, fresh_tmp = folder / ".tmp-abc", folder / ".tmp-def"
    lone_sidecar = folder / "v0.meta.json"  # killed between the sidecar and the blob
    for path in (stale_tmp, fresh_tmp, lone_sidecar):
        path.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale_tmp, (old, old))
    os.utime(lone_sidecar, (old, old))
    assert store.clean_temporaries(older_than_s=600) == 2
    assert not stale_tmp.exists() and not lone_sidecar.exists()
    assert fresh_tmp.exists()  # may belong to a write in flight
    assert store.get("t/collections/c/images/a/v1").data == b"kept"
    assert [k for k, _ in store.list_keys("t/")] == ["t/collections/c/images/a/v1"]


def test_filesystem_keys_cannot_escape_root(tmp_path: Path) -> None:
    store = FilesystemBlobStore(context=BackendContext(home=tmp_path))
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b", "x.meta.json"):
        with pytest.raises(BadRequest):
            store.put(key, b"x")


@pytest.fixture(params=["efficientnet-lite0", "test-color", "pixlab"])
def embedder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Embedder]:
    if request.param == "test-color":
        yield ColorHistogramEmbedder()
        return
    if request.param == "pixlab":
        server = FakePixLab(key="pixlab-test-key")
        monkeypatch.setenv("PIXLAB_API_KEY", "pixlab-test-key")
        yield PixLabEmbedder(PixLabOptions(endpoint=server.url, dimension=512, backoff_seconds=0))
        server.stop()
        return
    model_dir = request.getfixturevalue("model_dir")
    yield EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1, batch_size=4))


def test_embedder_contract(embedder: Embedder) -> None:
    images = [Image.open(p).convert("RGB") for p in catalog_images()[:6]]
    batch = embedder.embed_images(images)
    assert batch.shape == (6, embedder.dimension) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = np.stack([embedder.embed_images([img])[0] for img in images])
    assert np.allclose(batch, single, atol=1e-4)  # batching does not change vectors
    assert np.allclose(embedder.embed_images(images[:1]), batch[:1], atol=1e-5)  # deterministic
    assert embedder.embed_images([]).shape == (0, embedder.dimension)
    assert embedder.model_id and embedder.dimension > 0


def test_efficientnet_recognises_imagenet_classes(model_dir: Path) -> None:
    """The torch-free conversion is the real network: shoe photos classify as footwear."""
    e = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1))
    shoes = [Image.open(p).convert("RGB") for p in catalog_images() if "/shoes/" in p.as_posix()]
    top5 = np.argsort(e.logits(shoes), axis=1)[:, -5:]
    footwear = {502, 514, 630, 770, 774}  # ImageNet: clog, cowboy boot, loafer, running shoe, sandal
    assert sum(bool(footwear & set(row.tolist())) for row in top5) >= len(shoes) - 1

"""The offline models: text embeddings that match sentence-transformers, the image pipeline, projections."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lookalike.config import Settings
from lookalike.errors import BadRequest, ModelMismatch
from lookalike.process import Lookalike
from lookalike.service import ImageRef
from lookalike_local.efficientnet import EfficientNetLite0, EfficientNetOptions, projection_matrix
from lookalike_local.minilm import MiniLM, MiniLMOptions
from tests.conftest import catalog_images, query_image, write_deployment


def test_minilm_reproduces_sentence_transformers(model_dir: Path) -> None:
    """The similarities sentence-transformers documents for all-MiniLM-L6-v2, to 4 decimals."""
    model = MiniLM(MiniLMOptions(model_dir=model_dir, threads=1))
    v = model.embed_texts(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] == pytest.approx(0.6660, abs=5e-4)
    assert sims[0, 2] == pytest.approx(0.1046, abs=5e-4)
    assert sims[1, 2] == pytest.approx(0.1411, abs=5e-4)
    # Padding in a batch does not change a sentence's vector; neither does batch size.
    alone = model.embed_texts(["He drove to the stadium."])
    assert np.allclose(alone, v[2:], atol=1e-5)
    long = model.embed_texts(["word " * 2000])  # truncated to the model's 256 tokens, not an error
    assert long.shape == (1, 384)
    with pytest.raises(NotImplementedError):
        model.embed_images([Image.new("RGB", (8, 8))])


def test_projection_is_fixed_orthonormal_and_keeps_neighbours() -> None:
    m = projection_matrix(1280, 512)
    # Pinned: NumPy's legacy RandomState stream is stable, so every install has this matrix.
    assert m[0, :3] == pytest.approx([-0.0068768598, 0.0589219071, -0.0605326928], abs=1e-6)
    assert np.allclose(m.T @ m, np.eye(512), atol=1e-5)
    assert np.array_equal(m, projection_matrix(1280, 512))
    rng = np.random.default_rng(0)
    x = rng.random((200, 1280), dtype=np.float32)  # non-negative, like pooled ReLU features
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x @ projection_matrix(1280, 1024)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert np.abs((x @ x.T) - (y @ y.T)).max() < 0.1


def test_image_embedder_views_projection_and_ids(model_dir: Path) -> None:
    native = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1))
    assert native.model_id == "efficientnet-lite0/gem3/crop+pad/224" and native.dimension == 1280
    img = Image.open(query_image("shoes")).convert("RGB")
    mirrored_small = ImageOps.mirror(img).resize((img.width // 3, img.height // 3))
    a, b, other = native.embed_images([img, mirrored_small, Image.open(query_image("hat")).convert("RGB")])
    assert float(a @ b) > 0.85 > float(a @ other)  # a mirrored, shrunk copy stays a near neighbour
    small = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1, dimension=512))
    assert small.model_id.endswith("/p512") and small.dimension == 512
    projected = small.embed_images([img])
    assert projected.shape == (1, 512) and np.allclose(projected, native.project(a[None], 512), atol=1e-5)
    single = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1, views=["crop"], gem_p=1))
    assert single.model_id == "efficientnet-lite0/gap/crop/224"
    int8 = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, precision="int8", views=["crop"], gem_p=1))
    assert int8.model_id == "efficientnet-lite0-int8v2/gap/crop/224"


def test_the_int8_model_embeds_as_the_float32_one_does(model_dir: Path) -> None:
    """The quantised network's vectors stay next to the float model's, and keep the float
    model's neighbourhoods; each records its own model id, so collections never mix them."""
    int8 = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1, precision="int8"))
    float32 = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1))
    assert float32.model_id == "efficientnet-lite0/gem3/crop+pad/224" != int8.model_id
    photos = [Image.open(p).convert("RGB") for p in catalog_images()]
    a, b = int8.embed_images(photos), float32.embed_images(photos)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.95
    # Each photo's nearest other photo under int8 is one of its two nearest under float32.
    nearest_int8 = [int(np.argsort(-row)[1]) for row in a @ a.T]
    nearest_float32 = [set(np.argsort(-row)[1:3].tolist()) for row in b @ b.T]
    assert all(n in f for n, f in zip(nearest_int8, nearest_float32, strict=True))


# Emulated x86 CPUs whose int8 kernels differ from this one's: onnxruntime picks kernels by
# CPUID, which qemu answers for the CPU named. Haswell (AVX2, no AVX-512 or VNNI) is where
# U8S8 products saturate in 16 bits; Nehalem has SSE4.1 only.
EMULATED_CPUS = ("Haswell", "Nehalem")
EMBED_PHOTOS = """
import sys
import numpy as np
from PIL import Image
from lookalike_local.efficientnet import EfficientNetLite0, EfficientNetOptions
model_dir, out, *photos = sys.argv[1:]
embedder = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1, precision="int8"))
np.save(out, embedder.embed_images([Image.open(p).convert("RGB") for p in photos]))
"""


def test_the_int8_network_computes_its_quantised_graph_on_every_cpu(model_dir: Path, tmp_path: Path) -> None:
    """One photo, one vector: the int8 model, run as the embedder runs it, gives the embedding
    a saturation-free reference of its own quantised graph gives (its integer arithmetic in
    float64), on this CPU's kernels and on emulated AVX2 and SSE4.1 CPUs. Before issue 24 the
    AVX2 kernels' 16-bit sums gave 0.85 (bench/int8_models.py)."""
    from lookalike_local.qdq_reference import QDQReference

    embedder = EfficientNetLite0(EfficientNetOptions(model_dir=model_dir, threads=1, precision="int8"))
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("needs qemu-x86_64 (Debian's qemu-user; `make test` installs it) to emulate other CPUs")
    photos = catalog_images()[::3]  # one photo in three: the reference takes half a second a view
    images = [Image.open(p).convert("RGB") for p in photos]
    reference = embedder.embed_views(np.stack([embedder.prepare_image(img) for img in images]),
                                     network=QDQReference(embedder.model_path))
    got = {"this CPU": embedder.embed_images(images)}
    for cpu in EMULATED_CPUS:
        out = tmp_path / f"{cpu}.npy"
        subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", EMBED_PHOTOS, str(model_dir), str(out),
                        *map(str, photos)], check=True, timeout=600, capture_output=True)
        got[cpu] = np.load(out)
    agreement = {cpu: round(float(np.min(np.sum(v * reference, axis=1))), 4) for cpu, v in got.items()}
    assert all(cos >= 0.995 for cos in agreement.values()), agreement


def test_a_model_the_deployment_lacks_and_cannot_build_is_a_configuration_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Lambda, whose image layer holds the float32 model and no quantiser: a tenant that
    pins precision int8 gets a clear configuration error, not a 500 from an import."""
    from lookalike.errors import ConfigurationError

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # its import now fails
    int8 = EfficientNetLite0(EfficientNetOptions(model_dir=tmp_path, precision="int8"))
    with pytest.raises(ConfigurationError, match=r"efficientnet-lite0-int8v2\.onnx is not deployed here"):
        int8.embed_images([Image.new("RGB", (64, 64))])
    assert not list(tmp_path.glob("*.onnx*"))


def test_captions_are_searched_by_meaning(deployment: Path) -> None:
    tenant = Lookalike().tenant("demo")
    info = tenant.create_collection("c")
    assert (info.text_model_id, info.text_dimension) == ("all-minilm-l6-v2", 384)
    photo = query_image("shoes").read_bytes()
    for item_id, caption in (("sneaker", "white canvas running sneakers"), ("hat", "a thick woollen winter hat"),
                             ("dress", "red silk evening gown")):
        tenant.put_item("c", item_id, ImageRef(data=photo), {"caption": caption})
    tenant.put_item("c", "no-caption", ImageRef(data=photo), {})
    # No words in common with the captions: only meaning connects them.
    assert tenant.text_search("c", "something to keep my head warm").hits[0].id == "hat"
    assert tenant.text_search("c", "shoes for jogging").hits[0].id == "sneaker"
    page = tenant.text_search("c", "formal party clothes", limit=10)
    assert page.hits[0].id == "dress" and page.total == 3  # the uncaptioned item is not a text hit
    with pytest.raises(BadRequest):
        tenant.text_search("c", "?!")
    # keyword mode: only literal words count; hybrid: both lists fused by reciprocal rank.
    assert [h.id for h in tenant.text_search("c", "woollen", mode="keyword").hits] == ["hat"]
    assert tenant.text_search("c", "headwear", mode="keyword").hits == []
    hybrid = tenant.text_search("c", "woollen headwear for winter", mode="hybrid", limit=3)
    assert hybrid.hits[0].id == "hat" and hybrid.total == 3
    assert hybrid.hits[0].score == pytest.approx(2 / 61, abs=1e-6)  # first in both lists
    assert [h.id for h in tenant.text_search("c", "woollen headwear for winter", mode="hybrid", limit=1,
                                             offset=1).hits] == [hybrid.hits[1].id]


def test_text_embedder_fallbacks_and_mismatch(tmp_path: Path, model_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_MODEL_DIR", str(model_dir))
    write_deployment(tmp_path, {"defaults": {"text_embedder": {"name": "none"}}})
    app = Lookalike(Settings(home=tmp_path))
    tenant = app.tenant("demo")
    assert tenant.text_embedder is None
    info = tenant.create_collection("keywords")
    assert info.text_model_id is None
    tenant.put_item("keywords", "x", ImageRef(data=query_image().read_bytes()), {"caption": "blue suede shoes"})
    assert [h.id for h in tenant.text_search("keywords", "suede").hits] == ["x"]  # BM25 without a text model

    write_deployment(tmp_path, {"defaults": {"text_embedder": {"name": "efficientnet-lite0"}}})
    with pytest.raises(Exception, match="cannot embed text"):
        Lookalike(Settings(home=tmp_path)).tenant("demo")

    write_deployment(tmp_path)
    semantic = Lookalike(Settings(home=tmp_path)).tenant("demo")
    semantic.create_collection("semantic")
    monkeypatch.setattr(semantic.text_embedder, "model_id", "another-text-model")
    with pytest.raises(ModelMismatch, match="keeps text vectors of all-minilm-l6-v2"):
        semantic.text_search("semantic", "hat")

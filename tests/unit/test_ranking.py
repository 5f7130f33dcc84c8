"""Direct tests of the pure parts of search: rank fusion, the in-process top-k, the grouping
of hits into clusters, and local-feature geometry (issue 27: they were tested only through
whole searches)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lookalike import geometry
from lookalike.clustering import cluster
from lookalike.contracts import Hit
from lookalike.ranking import RRF_K, fuse, top_k
from tests.conftest import catalog_images


def hit(id: str, score: float, exact_match: bool = False) -> Hit:
    return Hit(id=id, score=score, metadata={}, image_key=None, exact_match=exact_match)


def hits(*ids: str) -> list[Hit]:
    return [hit(i, 1.0 - n / 100) for n, i in enumerate(ids)]


def test_fusion_sums_reciprocal_ranks_and_breaks_ties_by_id() -> None:
    page = fuse([hits("a", "b", "c"), hits("c", "d")], limit=10)
    scores = {h.id: h.score for h in page.hits}
    assert scores["c"] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1), abs=1e-6)
    assert scores["a"] == pytest.approx(1 / (RRF_K + 1), abs=1e-6)
    assert [h.id for h in page.hits] == ["c", "a", "b", "d"]  # b and d tie at rank 2: by id
    assert page.total == 4
    assert [h.id for h in fuse([hits("a", "b", "c"), hits("c", "d")], limit=2, offset=1).hits] == ["a", "b"]
    assert fuse([], limit=5).hits == [] and fuse([[], []], limit=5).total == 0


def test_top_k_keeps_every_tie_at_the_cut_and_orders_it_by_id() -> None:
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.9], dtype=np.float32)
    names = ["e", "d", "c", "b", "a"]
    order, total = top_k(scores, 2, lambda i: names[i])
    assert [names[i] for i in order] == ["a", "c"] and total == 5
    order, total = top_k(scores, 10, lambda i: names[i], candidates=np.array([0, 3]))
    assert [names[i] for i in order] == ["e", "b"] and total == 2


def test_clusters_follow_their_leaders_and_verified_copies_stay_together() -> None:
    base = np.eye(4, dtype=np.float32)
    near = base[0] + 0.3 * base[1]  # cosine distance 0.042: past threshold 0, within 4
    vectors = np.stack([base[0], near / np.linalg.norm(near), base[2], base[3]])
    ranked = [hit("a", 0.9), hit("b", 0.8), hit("c", 0.7, exact_match=True), hit("d", 0.6, exact_match=True)]
    tight = cluster(ranked, vectors, threshold=0)
    assert [[m.id for m in c.members] for c in tight] == [["a"], ["b"], ["c", "d"]]
    loose = cluster(ranked, vectors, threshold=4)
    assert [[m.id for m in c.members] for c in loose] == [["a", "b"], ["c", "d"]]


@pytest.mark.skipif(not geometry.available(), reason="needs OpenCV (opencv-python-headless, installed by make setup)")
def test_geometry_verifies_a_crop_and_a_turn_of_a_photo_and_not_another_photo() -> None:
    photo = Image.open(catalog_images()[0]).convert("RGB")
    other = Image.open(catalog_images()[7]).convert("RGB")
    w, h = photo.size
    crop = photo.crop((w // 8, h // 8, w - w // 8, h - h // 8)).resize((w, h))
    turned = photo.rotate(12, expand=True, fillcolor="white")
    query = geometry.extract(photo)
    assert geometry.loads(geometry.dumps(query)).descriptors.shape == query.descriptors.shape
    counts = [geometry.inliers(query, geometry.extract(p)) for p in (other, crop, turned)]
    assert counts[0] < geometry.MIN_INLIERS <= min(counts[1:]), counts
    assert geometry.verified(counts) == sorted([1, 2], key=lambda n: -counts[n])
    assert geometry.verified([3, 2, 1]) == []  # below MIN_INLIERS
    assert geometry.verified([200, 180, 5]) == [0, 1]  # the same photo twice in a catalog

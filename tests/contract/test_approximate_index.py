"""The embedded index's approximate path against its exact path, on the same SQLite file.

Two ``LocalIndex`` objects share one database: one searches approximately (a low
``ann_min_items``), the other exactly (the reference). Vectors are clustered like the
benchmark's: base vectors with jittered copies, so every query has many near neighbours.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.contracts import CollectionSpec, Item, TextQuery, VectorQuery
from lookalike.filters import And, Range, Term
from lookalike_local import ann
from lookalike_local.index import LocalIndex, LocalIndexOptions

DIM, TEXT_DIM, BASES, COPIES = 48, 16, 150, 20  # 3,000 items


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    bases = _unit(rng.normal(size=(BASES, DIM)))
    vectors = _unit(np.repeat(bases, COPIES, axis=0) + 0.08 * rng.normal(size=(BASES * COPIES, DIM)))
    text = _unit(rng.normal(size=(BASES * COPIES, TEXT_DIM)))
    queries = _unit(bases[rng.choice(BASES, 40)] + 0.08 * rng.normal(size=(40, DIM)))
    return {"vectors": vectors, "text": text, "queries": queries}


def _items(data: dict[str, np.ndarray]) -> list[Item]:
    return [Item(f"i{n:05d}", data["vectors"][n], {"shard": n % 100, "kind": "odd" if n % 2 else "even"},
                 text_vectors={"caption": data["text"][n]} if n % 3 else {})
            for n in range(len(data["vectors"]))]


@pytest.fixture()
def pair(tmp_path: Path, data: dict[str, np.ndarray]) -> tuple[LocalIndex, LocalIndex]:
    path = tmp_path / "index.sqlite"
    approximate = LocalIndex(LocalIndexOptions(path=path, ann_min_items=1000, ann_rebuild_min=200))
    exact = LocalIndex(LocalIndexOptions(path=path, ann_min_items=0))
    approximate.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM,
                                                      text_model_id="tm", text_dimension=TEXT_DIM))
    approximate.upsert("t", "c", _items(data))
    assert approximate.optimize("t", "c") == {"image": 3000, "caption": 2000, "prompt": 0}
    assert approximate.optimize("t", "c") == {}  # nothing written since: nothing to rebuild
    return approximate, exact


def _ids(page: object) -> list[str]:
    return [h.id for h in page.hits]  # type: ignore[attr-defined]


def test_same_top_results_within_the_recall_bound_and_exact_scores(pair: tuple[LocalIndex, LocalIndex],
                                                                    data: dict[str, np.ndarray]) -> None:
    approximate, exact = pair
    recalls = []
    for q in data["queries"]:
        got = approximate.search("t", "c", VectorQuery(vector=q, limit=10))
        want = exact.search("t", "c", VectorQuery(vector=q, limit=10))
        recalls.append(len(set(_ids(got)) & set(_ids(want))) / 10)
        assert got.total == want.total == 3000
        for hit in got.hits:  # every score is the exact cosine, read back from SQLite
            assert hit.score == pytest.approx(float(data["vectors"][int(hit.id[1:])] @ q), abs=1e-5)
        assert [h.score for h in got.hits] == sorted((h.score for h in got.hits), reverse=True)
    assert np.mean(recalls) >= 0.95


def test_filters_pages_min_score_and_exclusions(pair: tuple[LocalIndex, LocalIndex],
                                                data: dict[str, np.ndarray]) -> None:
    approximate, exact = pair
    q = data["queries"][0]
    for flt in (Term("shard", 7), And((Term("kind", "odd"), Range("shard", 0, 9)))):  # 1 % and 5 %
        got = approximate.search("t", "c", VectorQuery(vector=q, limit=10, filter=flt))
        want = exact.search("t", "c", VectorQuery(vector=q, limit=10, filter=flt))
        assert _ids(got) == _ids(want) and got.total == want.total and len(got.hits) == 10
    # Pages: consecutive, disjoint, in (score desc, id) order, the same as one long page.
    whole = approximate.search("t", "c", VectorQuery(vector=q, limit=30))
    pages = [approximate.search("t", "c", VectorQuery(vector=q, limit=10, offset=o)) for o in (0, 10, 20)]
    assert [i for p in pages for i in _ids(p)] == _ids(whole)
    # min_score: every hit clears it, and the total counts what does.
    cut = exact.search("t", "c", VectorQuery(vector=q, limit=15)).hits[-1].score
    got = approximate.search("t", "c", VectorQuery(vector=q, limit=50, min_score=cut))
    want = exact.search("t", "c", VectorQuery(vector=q, limit=50, min_score=cut))
    assert all(h.score >= cut - 1e-6 for h in got.hits) and got.total == len(got.hits)
    assert len(set(_ids(got)) & set(_ids(want))) >= 0.9 * len(want.hits)
    # Search by an item leaves the item out, and the total with it.
    top = _ids(whole)[0]
    got = approximate.search("t", "c", VectorQuery(vector=q, limit=10, exclude_ids=frozenset({top})))
    assert top not in _ids(got) and got.total == 2999


def test_writes_and_deletes_are_seen_at_once_by_every_process(pair: tuple[LocalIndex, LocalIndex],
                                                              data: dict[str, np.ndarray]) -> None:
    approximate, exact = pair
    q = data["queries"][1]
    top = _ids(approximate.search("t", "c", VectorQuery(vector=q, limit=5)))
    # The other "process" deletes the best hit and writes a new item right on the query.
    exact.delete("t", "c", [top[0]])
    exact.upsert("t", "c", [Item("fresh", q, {"shard": 7})])
    got = approximate.search("t", "c", VectorQuery(vector=q, limit=5))
    assert _ids(got)[0] == "fresh" and top[0] not in _ids(got)  # still in the snapshot, never answered
    assert got.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert approximate.get_collection("t", "c").item_count == 3000  # type: ignore[union-attr]
    # An item moved elsewhere is found where it now is, not where the snapshot has it.
    moved = _ids(got)[1]
    exact.upsert("t", "c", [Item(moved, -q, {})])
    assert moved not in _ids(approximate.search("t", "c", VectorQuery(vector=q, limit=10)))
    assert _ids(approximate.search("t", "c", VectorQuery(vector=-q, limit=1))) == [moved]
    filtered = approximate.search("t", "c", VectorQuery(vector=q, limit=3, filter=Term("shard", 7)))
    assert _ids(filtered)[0] == "fresh"


def test_a_filter_asked_again_sees_every_write_in_between(pair: tuple[LocalIndex, LocalIndex],
                                                         data: dict[str, np.ndarray]) -> None:
    """The approximate path keeps a filter's passing items until the collection changes: the
    same filter after another process's writes (an item leaving the filter, one joining it,
    one deleted) answers as the exact path does."""
    approximate, exact = pair
    q, shard7 = data["queries"][2], Term("shard", 7)

    def both() -> tuple[list[str], list[str]]:
        query = VectorQuery(vector=q, limit=10, filter=shard7)
        return _ids(approximate.search("t", "c", query)), _ids(exact.search("t", "c", query))

    first, reference = both()
    assert first == reference and len(first) == 10
    assert both()[0] == first  # asked again, unchanged
    leaving = first[0]
    exact.upsert("t", "c", [Item(leaving, approximate.get_item("t", "c", leaving).vector, {"shard": 8})])  # type: ignore[union-attr]
    exact.upsert("t", "c", [Item("joining", q, {"shard": 7})])
    got, reference = both()
    assert got == reference and got[0] == "joining" and leaving not in got
    exact.delete("t", "c", ["joining"])
    got, reference = both()
    assert got == reference and "joining" not in got


def test_many_writes_rebuild_the_snapshot_in_the_background(pair: tuple[LocalIndex, LocalIndex],
                                                            data: dict[str, np.ndarray]) -> None:
    approximate, exact = pair
    first = approximate._db.execute("SELECT file FROM ann_snapshots WHERE space = 'image'").fetchone()[0]
    rng = np.random.default_rng(9)
    extra = _unit(data["vectors"][:400] + 0.05 * rng.normal(size=(400, DIM)))
    exact.upsert("t", "c", [Item(f"x{n}", extra[n]) for n in range(400)])
    approximate.search("t", "c", VectorQuery(vector=data["queries"][2], limit=5))  # sees 400 > 200 new
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = approximate._db.execute("SELECT file, items FROM ann_snapshots WHERE space = 'image'").fetchone()
        if row[0] != first:
            break
        time.sleep(0.1)
    assert row[0] != first and row[1] == 3400
    assert not (approximate.ann_dir / first).exists()  # the replaced file is gone
    got = approximate.search("t", "c", VectorQuery(vector=extra[5], limit=1))
    assert _ids(got) == ["x5"]


def test_caption_vectors_get_the_same_treatment(pair: tuple[LocalIndex, LocalIndex],
                                                data: dict[str, np.ndarray]) -> None:
    approximate, exact = pair
    for n in (1, 2, 4, 5):
        q = data["text"][n]
        got = approximate.text_search("t", "c", TextQuery(text="x", vector=q, limit=5, fields=("caption",)))
        want = exact.text_search("t", "c", TextQuery(text="x", vector=q, limit=5, fields=("caption",)))
        assert _ids(got)[0] == _ids(want)[0] == f"i{n:05d}"
        assert got.hits[0].score == pytest.approx(1.0, abs=1e-5)
    # Items without a caption vector are no candidates on either path.
    got = approximate.text_search("t", "c", TextQuery(text="x", vector=data["text"][3], limit=2000,
                                                      fields=("caption",)))
    assert "i00003" not in _ids(got) and all(int(i[1:]) % 3 for i in _ids(got))


def test_reopening_maps_the_recorded_snapshot_and_sweeps_orphans(tmp_path: Path,
                                                                  pair: tuple[LocalIndex, LocalIndex],
                                                                  data: dict[str, np.ndarray],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    approximate, _ = pair
    orphan = approximate.ann_dir / "0123-left-by-a-killed-build.faiss"
    orphan.write_bytes(b"half a file")
    referenced = {r[0] for r in approximate._db.execute("SELECT file FROM ann_snapshots")}
    assert ann.sweep(approximate.ann_dir, referenced, older_than_s=0) == 1 and not orphan.exists()
    reopened = LocalIndex(LocalIndexOptions(path=approximate.path, ann_min_items=1000))
    q = data["queries"][3]
    built: list[Path] = []
    real_build = ann.build
    monkeypatch.setattr(ann, "build", lambda path, *a, **k: built.append(path) or real_build(path, *a, **k))
    got = reopened.search("t", "c", VectorQuery(vector=q, limit=10))
    assert built == []  # mapped, not rebuilt (counted, not timed: a loaded machine is slow, not wrong)
    assert _ids(got) == _ids(approximate.search("t", "c", VectorQuery(vector=q, limit=10)))
    assert reopened._db.execute("SELECT count(*) FROM ann_snapshots").fetchone()[0] == 3  # image, caption, prompt


def test_a_large_collection_without_a_snapshot_is_built_in_the_background(
        tmp_path: Path, data: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the size a request can wait for, the first search answers 503 "retry" and the
    snapshot is built beside it; the next searches use it."""
    from lookalike.errors import BackendUnavailable
    from lookalike_local import snapshots as snapshots_module

    monkeypatch.setattr(snapshots_module, "SYNC_BUILD_MAX", 1000)
    big = LocalIndex(LocalIndexOptions(path=tmp_path / "i.sqlite", ann_min_items=1000))
    big.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM))
    big.upsert("t", "c", [Item(f"i{n:05d}", data["vectors"][n]) for n in range(3000)])
    q = data["queries"][0]
    with pytest.raises(BackendUnavailable, match="retry"):
        big.search("t", "c", VectorQuery(vector=q, limit=5))
    deadline = time.monotonic() + 60
    while big.snapshots._building and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(big.search("t", "c", VectorQuery(vector=q, limit=5)).hits) == 5


def test_ties_and_scores_within_the_float16_error_page_exactly(tmp_path: Path) -> None:
    """Issue 28: candidates are ranked by float16 scores and only the page's edge is read back as
    float32. Identical vectors (exact ties) and vectors closer together than float16 can tell
    apart must still page in (exact score desc, id) order, the same as the exact path."""
    rng = np.random.default_rng(11)
    q = _unit(rng.normal(size=DIM))
    other = _unit(rng.normal(size=(1500, DIM)))
    twins = np.repeat(q[None] * 0.8 + 0.2 * _unit(rng.normal(size=DIM)), 40, axis=0)  # 40 exact ties
    # 40 more whose cosines to q differ by about 1e-5: below float16's resolution.
    step = _unit(rng.normal(size=DIM))
    close = _unit(np.stack([q * 0.7 + step * (0.3 + 1e-5 * n) for n in range(40)]))
    vectors = np.concatenate([other, _unit(twins), close]).astype(np.float32)
    path = tmp_path / "index.sqlite"
    approximate = LocalIndex(LocalIndexOptions(path=path, ann_min_items=100))
    exact = LocalIndex(LocalIndexOptions(path=path, ann_min_items=0))
    approximate.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM))
    ids = [f"z{n:04d}" if n < 1500 else f"{'abcdefghij'[n % 10]}{n:04d}" for n in range(len(vectors))]
    approximate.upsert("t", "c", [Item(i, v, {"shard": n % 7})
                                  for n, (i, v) in enumerate(zip(ids, vectors, strict=True))])
    approximate.optimize("t", "c")
    for flt in (None, Term("shard", 3)):
        whole = exact.search("t", "c", VectorQuery(vector=q, limit=90, filter=flt))
        pages = [approximate.search("t", "c", VectorQuery(vector=q, limit=9, offset=o, filter=flt))
                 for o in range(0, 90, 9)]
        paged = [h for p in pages for h in p.hits]
        assert [h.id for h in paged] == _ids(whole)[:len(paged)] and len(paged) == len(whole.hits)
        assert [h.score for h in paged] == [h.score for h in whole.hits]
        cut = whole.hits[30].score  # min_score inside the run of near-equal scores
        got = approximate.search("t", "c", VectorQuery(vector=q, limit=100, min_score=cut, filter=flt))
        want = exact.search("t", "c", VectorQuery(vector=q, limit=100, min_score=cut, filter=flt))
        assert _ids(got) == _ids(want) and got.total == want.total


def test_a_snapshot_written_before_the_float16_file_is_still_searched_exactly(
        pair: tuple[LocalIndex, LocalIndex], data: dict[str, np.ndarray]) -> None:
    """Snapshots built by an earlier release have no float16 file: their candidates are read
    back from SQLite as before, until the next rebuild writes one."""
    approximate, exact = pair
    for row in approximate._db.execute("SELECT file FROM ann_snapshots").fetchall():
        for sidecar in ann.sidecars(approximate.ann_dir / row[0]):
            sidecar.unlink()
    reopened = LocalIndex(LocalIndexOptions(path=approximate.path, ann_min_items=1000))
    for q in data["queries"][:10]:
        got = reopened.search("t", "c", VectorQuery(vector=q, limit=10, filter=Term("kind", "odd")))
        want = exact.search("t", "c", VectorQuery(vector=q, limit=10, filter=Term("kind", "odd")))
        assert len(set(_ids(got)) & set(_ids(want))) >= 8 and got.total == want.total
        for hit in got.hits:
            assert hit.score == pytest.approx(float(data["vectors"][int(hit.id[1:])] @ q), abs=1e-5)

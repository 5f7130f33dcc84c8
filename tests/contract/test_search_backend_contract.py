"""One contract for every search backend: the embedded index and the in-memory fake alike."""

from __future__ import annotations

import functools
import os
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from lookalike.contracts import BackendContext, CollectionSpec, Item, SearchBackend, TextQuery, VectorQuery
from lookalike.errors import BadRequest, Conflict, NotAvailableHere, NotFound
from lookalike.filters import (
    MAX_FILTER_NODES,
    MAX_FILTER_VALUE_CHARS,
    And,
    Filter,
    Not,
    Or,
    Range,
    Term,
    count_nodes,
    from_json,
    matches,
)
from lookalike_local.index import LocalIndex
from lookalike_marqo.backend import MarqoBackend, MarqoOptions
from lookalike_opensearch.backend import OpenSearchBackend, OpenSearchOptions
from tests.fake_marqo import FakeMarqo
from tests.fakes import MemoryIndex

DIM = 8
Factory = Callable[[], SearchBackend]


REAL_OPENSEARCH = pytest.mark.skipif(
    not os.environ.get("OPENSEARCH_URL"),
    reason="needs a real OpenSearch at OPENSEARCH_URL: `make test` starts one (scripts/opensearch_node.py)")
# Backends that keep caption/prompt vectors beside image vectors (supports_text_vectors). OpenSearch
# is the real engine only: a fake of our own would hold it to our own assumptions.
TEXT_BACKENDS = ["local", "memory", pytest.param("opensearch", marks=REAL_OPENSEARCH)]
BACKENDS = [*TEXT_BACKENDS, "marqo-fake"]


@contextmanager
def backends_of(kind: str, tmp_path: Path) -> Iterator[Factory]:
    made: list[SearchBackend] = []
    shared = MemoryIndex()
    fake: FakeMarqo | None = None
    if kind == "marqo-fake":
        fake = FakeMarqo()
    prefix = f"t{uuid.uuid4().hex[:8]}"  # a real cluster is shared: each test gets its own indices

    def factory() -> SearchBackend:
        if kind == "local":
            backend: SearchBackend = LocalIndex(context=BackendContext(home=tmp_path))
        elif kind == "memory":
            backend = shared
        elif kind == "marqo-fake":
            assert fake is not None
            backend = MarqoBackend(MarqoOptions(url=fake.url, api_key_env=None, max_retries=1, backoff_seconds=0))
        else:
            backend = OpenSearchBackend(OpenSearchOptions(url=os.environ["OPENSEARCH_URL"], refresh="true",
                                                          index_prefix=prefix, max_retries=1, backoff_seconds=0))
        made.append(backend)
        return backend

    try:
        yield factory
    finally:
        for b in made:
            b.close()
        if fake:
            fake.stop()


@pytest.fixture(params=BACKENDS)
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    with backends_of(request.param, tmp_path) as factory:
        yield factory


@pytest.fixture(params=TEXT_BACKENDS)
def make_text_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    with backends_of(request.param, tmp_path) as factory:
        yield factory


def vec(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def spec(name: str = "c") -> CollectionSpec:
    return CollectionSpec(name=name, model_id="m", dimension=DIM, settings={"reverse_search_enabled": True})


@pytest.fixture()
def backend(make_backend: Factory) -> SearchBackend:
    b = make_backend()
    b.create_collection("t", spec())
    b.upsert("t", "c", [
        Item("red-shoe", vec(1, 0.1), {"color": "red", "kind": "shoe", "price": 50, "tags": ["a", "b"],
                                       "caption": "red leather shoe", "sale": True}),
        Item("red-hat", vec(0.9, 0.5), {"color": "red", "kind": "hat", "price": 20, "caption": "a red hat"}),
        Item("blue-shoe", vec(0.2, 1), {"color": "blue", "kind": "shoe", "price": 80, "tags": ["b"],
                                        "prompt": "blue running shoe", "sale": False}),
        Item("green-hat", vec(0, 0, 1), {"color": "green", "kind": "hat", "price": "cheap"}),
    ])
    return b


def ids(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.id for h in page.hits]


def test_collections_lifecycle(make_backend: Factory) -> None:
    b = make_backend()
    info = b.create_collection("t", spec("one"))
    assert (info.name, info.model_id, info.dimension, info.item_count, info.status) == ("one", "m", DIM, 0, "READY")
    with pytest.raises(Conflict):
        b.create_collection("t", spec("one"))
    b.create_collection("other-tenant", spec("one"))  # names are per tenant
    assert [c.name for c in b.list_collections("t")] == ["one"]
    assert b.get_collection("t", "missing") is None
    b.set_status("t", "one", "INDEXING")
    assert b.get_collection("t", "one").status == "INDEXING"
    assert b.delete_collection("t", "one") is True
    assert b.get_collection("t", "one") is None
    assert b.get_collection("other-tenant", "one") is not None


def test_search_ranks_by_cosine_and_pages_stably(backend: SearchBackend) -> None:
    page = backend.search("t", "c", VectorQuery(vector=vec(1, 0.1), limit=10))
    assert ids(page)[0] == "red-shoe"
    assert page.total == 4
    scores = [h.score for h in page.hits]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    first = backend.search("t", "c", VectorQuery(vector=vec(1, 0.1), limit=2))
    second = backend.search("t", "c", VectorQuery(vector=vec(1, 0.1), limit=2, offset=2))
    assert ids(first) + ids(second) == ids(page)
    assert backend.search("t", "c", VectorQuery(vector=vec(1, 0.1), limit=2, offset=10)).hits == []


def test_exact_ties_break_by_id(make_backend: Factory) -> None:
    b = make_backend()
    b.create_collection("t", spec())
    b.upsert("t", "c", [Item(f"dup-{n}", vec(1, 1)) for n in (3, 1, 2, 0)])
    pages = [ids(b.search("t", "c", VectorQuery(vector=vec(1, 1), limit=1, offset=o))) for o in range(4)]
    assert pages == [["dup-0"], ["dup-1"], ["dup-2"], ["dup-3"]]


def test_upsert_replaces_and_delete_removes(backend: SearchBackend) -> None:
    backend.upsert("t", "c", [Item("red-shoe", vec(0, 0, 1), {"color": "purple"})])
    got = backend.get_item("t", "c", "red-shoe")
    assert got is not None and got.metadata == {"color": "purple"}
    assert np.allclose(got.vector, vec(0, 0, 1))
    assert backend.get_collection("t", "c").item_count == 4
    assert backend.delete("t", "c", ["red-shoe", "nope"]) == 1
    assert backend.get_item("t", "c", "red-shoe") is None
    assert "red-shoe" not in ids(backend.search("t", "c", VectorQuery(vector=vec(0, 0, 1), limit=10)))
    assert backend.get_collection("t", "c").item_count == 3


def test_a_write_that_began_earlier_never_replaces_a_later_one(backend: SearchBackend) -> None:
    """The version is when the write began (``Item.updated_at``): a late commit of an older write
    (a killed server's orphaned worker) is refused and reported; a newer one, or the same again
    (a retry), replaces."""
    now = backend.get_item("t", "c", "red-hat").updated_at  # type: ignore[union-attr]
    assert backend.upsert("t", "c", [Item("red-hat", vec(0, 1), {"v": "later"}, updated_at=now + 10)]) == []
    late = [Item("red-hat", vec(1, 0), {"v": "earlier"}, updated_at=now + 5),
            Item("new-one", vec(0, 0, 0, 1), {"v": "new"}, updated_at=now + 5)]
    assert backend.upsert("t", "c", late) == ["red-hat"]
    kept = backend.get_item("t", "c", "red-hat")
    assert kept is not None and kept.metadata == {"v": "later"} and np.allclose(kept.vector, vec(0, 1))
    assert ids(backend.search("t", "c", VectorQuery(vector=vec(0, 1), limit=1))) == ["red-hat"]
    assert backend.get_item("t", "c", "new-one") is not None  # the rest of the batch is written
    assert backend.upsert("t", "c", [Item("red-hat", vec(0, 1), {"v": "again"}, updated_at=now + 10)]) == []
    assert backend.get_item("t", "c", "red-hat").metadata == {"v": "again"}  # type: ignore[union-attr]
    assert backend.upsert("t", "c", [Item("red-hat", vec(1, 1), {"v": "newest"}, updated_at=now + 20)]) == []
    assert backend.get_item("t", "c", "red-hat").metadata == {"v": "newest"}  # type: ignore[union-attr]


@pytest.mark.parametrize(("flt", "expected"), [
    (Term("color", "red"), {"red-shoe", "red-hat"}),
    (Term("tags", "b"), {"red-shoe", "blue-shoe"}),
    (Term("price", 50), {"red-shoe"}),
    (Term("price", "80"), {"blue-shoe"}),  # a numeric-looking text term matches the number
    (Term("price", "cheap"), {"green-hat"}),
    (Term("sale", True), {"red-shoe"}),
    (Term("sale", False), {"blue-shoe"}),
    (Range("price", 20, 50), {"red-shoe", "red-hat"}),
    (Range("price", None, 60), {"red-shoe", "red-hat"}),
    (Range("price", 60, None), {"blue-shoe"}),
    (And((Term("kind", "shoe"), Not(Term("color", "red")))), {"blue-shoe"}),
    (Or((Term("color", "green"), Term("kind", "shoe"))), {"red-shoe", "blue-shoe", "green-hat"}),
    (Term("missing", "x"), set()),
    (Not(Term("missing", "x")), {"red-shoe", "red-hat", "blue-shoe", "green-hat"}),
])
def test_filters(backend: SearchBackend, flt, expected: set[str]) -> None:  # type: ignore[no-untyped-def]
    page = backend.search("t", "c", VectorQuery(vector=vec(1), limit=10, filter=flt))
    assert set(ids(page)) == expected
    assert page.total == len(expected)


def _leaf(rng: random.Random) -> Filter:
    field = rng.choice(["color", "kind", "price", "tags", "sale", "missing"])
    kind = rng.randrange(4)
    if kind == 0:
        return Term(field, rng.choice(["red", "shoe", "b", "cheap", 50, 80, True, False]))
    if kind == 1:
        return Range(field, rng.choice([None, 0, 20, 51]), rng.choice([None, 50, 100]))
    if kind == 2:
        return Term(field, "x" * MAX_FILTER_VALUE_CHARS)  # the longest value a filter may hold
    return Term(field, rng.choice(["red", "hat", "blue"]))


def _deep(rng: random.Random, depth: int) -> Filter:
    """A filter ``depth`` levels deep: NOT, AND and OR nested in a random order."""
    if depth <= 1:
        return _leaf(rng)
    inner = _deep(rng, depth - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return Not(inner)
    siblings = tuple(_leaf(rng) for _ in range(rng.randrange(1, 3)))
    return And((inner, *siblings)) if kind == 1 else Or((*siblings, inner))


def test_filters_at_the_documented_limits_compile_and_match_on_every_backend(backend: SearchBackend) -> None:
    """Random filters as deep as the Marqo DSL lets a caller write (32 NOTs or parentheses around
    a term: 33 levels), as wide as MAX_FILTER_NODES, with values of MAX_FILTER_VALUE_CHARS: every
    backend (the real OpenSearch node included) answers each exactly as the reference semantics."""
    rng = random.Random(26)
    stored = {i: backend.get_item("t", "c", i) for i in ("red-shoe", "red-hat", "blue-shoe", "green-hat")}
    shapes: list[Filter] = [_deep(rng, 33) for _ in range(12)]
    shapes += [Not(Not(Not(_leaf(rng)))) for _ in range(3)]
    shapes.append(functools.reduce(lambda inner, _: Not(inner), range(32), Term("color", "red")))
    shapes.append(And(tuple(_leaf(rng) for _ in range(MAX_FILTER_NODES - 1))))
    shapes.append(Or(tuple(_leaf(rng) for _ in range(MAX_FILTER_NODES - 1))))
    for flt in shapes:
        assert count_nodes(flt) <= MAX_FILTER_NODES
        page = backend.search("t", "c", VectorQuery(vector=vec(1, 1, 1), limit=10, filter=flt))
        expected = {i for i, item in stored.items() if item is not None and matches(flt, item.metadata)}
        assert set(ids(page)) == expected, flt


def test_selective_filter_still_returns_k(make_backend: Factory) -> None:
    b = make_backend()
    b.create_collection("t", spec())
    rng = np.random.default_rng(0)
    items = [Item(f"i{n:03}", rng.normal(size=DIM).astype(np.float32), {"rare": n % 50 == 0}) for n in range(500)]
    b.upsert("t", "c", items)
    page = b.search("t", "c", VectorQuery(vector=vec(1), limit=10, filter=from_json({"rare": True})))
    assert len(page.hits) == 10 and page.total == 10


def test_min_score_and_exclude(backend: SearchBackend) -> None:
    page = backend.search("t", "c", VectorQuery(vector=vec(1, 0.1), limit=10, min_score=0.9))
    assert set(ids(page)) == {"red-shoe", "red-hat"} and page.total == 2
    page = backend.search("t", "c", VectorQuery(vector=vec(1, 0.1), limit=10, exclude_ids=frozenset({"red-shoe"})))
    assert "red-shoe" not in ids(page) and page.total == 3


def test_dimension_mismatch_is_bad_request(backend: SearchBackend) -> None:
    with pytest.raises(BadRequest):
        backend.search("t", "c", VectorQuery(vector=np.ones(DIM + 1, dtype=np.float32)))
    with pytest.raises(BadRequest):
        backend.upsert("t", "c", [Item("x", np.ones(3, dtype=np.float32))])
    assert backend.get_collection("t", "c").item_count == 4  # nothing stored was lost


def test_unknown_collection_and_tenant_isolation(backend: SearchBackend) -> None:
    with pytest.raises(NotFound):
        backend.search("t", "missing", VectorQuery(vector=vec(1)))
    with pytest.raises(NotFound):
        backend.search("other", "c", VectorQuery(vector=vec(1)))  # same name, other tenant
    with pytest.raises(NotFound):
        backend.upsert("other", "c", [Item("x", vec(1))])


def test_text_search(backend: SearchBackend) -> None:
    page = backend.text_search("t", "c", TextQuery(text="shoe", limit=10))
    assert set(ids(page)) == {"red-shoe", "blue-shoe"}
    page = backend.text_search("t", "c", TextQuery(text="shoe", fields=("caption",), limit=10))
    assert ids(page) == ["red-shoe"]
    page = backend.text_search("t", "c", TextQuery(text="red", limit=10, filter=Term("kind", "hat")))
    assert ids(page) == ["red-hat"]
    with pytest.raises(BadRequest):
        backend.text_search("t", "c", TextQuery(text="!!!"))


def test_keyword_search_reads_a_caption_list_on_every_backend(make_backend: Factory) -> None:
    """A caption may be a list of strings; each backend built its keyword text its own way, and
    only the embedded index found these (issue 27): ``item_text`` is now the one way."""
    b = make_backend()
    b.create_collection("t", spec())
    b.upsert("t", "c", [Item("listed", vec(1), {"caption": ["red", "leather boot"], "prompt": ["studio", "shot"]}),
                        Item("plain", vec(0, 1), {"caption": "blue canvas hat"})])
    assert ids(b.text_search("t", "c", TextQuery(text="leather", limit=10))) == ["listed"]
    assert ids(b.text_search("t", "c", TextQuery(text="studio", fields=("prompt",), limit=10))) == ["listed"]
    assert ids(b.text_search("t", "c", TextQuery(text="canvas", limit=10))) == ["plain"]


def test_facets(backend: SearchBackend) -> None:
    facets = backend.facets("t", "c", ["color", "kind", "tags"])
    assert facets["color"] == [("red", 2), ("blue", 1), ("green", 1)]
    assert facets["kind"] == [("hat", 2), ("shoe", 2)]
    assert facets["tags"] == [("b", 2), ("a", 1)]
    assert backend.facets("t", "c", ["color"], filter=Term("kind", "shoe"))["color"] == [("blue", 1), ("red", 1)]


def test_local_index_persists_and_sees_other_writers(tmp_path: Path) -> None:
    """Two processes share one database: a write by one is seen by the other's next search."""
    a = LocalIndex(context=BackendContext(home=tmp_path))
    b = LocalIndex(context=BackendContext(home=tmp_path))
    a.create_collection("t", spec())
    a.upsert("t", "c", [Item("x", vec(1))])
    assert ids(b.search("t", "c", VectorQuery(vector=vec(1)))) == ["x"]  # b builds its cache
    a.upsert("t", "c", [Item("y", vec(1, 0.01))])
    a.delete("t", "c", ["x"])
    assert ids(b.search("t", "c", VectorQuery(vector=vec(1)))) == ["y"]
    a.close()
    b.close()
    c = LocalIndex(context=BackendContext(home=tmp_path))
    assert c.get_item("t", "c", "y") is not None
    c.close()


TDIM = 4


def tvec(*values: float) -> np.ndarray:
    v = np.zeros(TDIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


@pytest.fixture()
def texts(make_text_backend: Factory) -> SearchBackend:
    b = make_text_backend()
    b.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM, text_model_id="tm",
                                            text_dimension=TDIM))
    b.upsert("t", "c", [
        Item("both", vec(1), {"kind": "a"}, text_vectors={"caption": tvec(1), "prompt": tvec(0, 1)}),
        Item("caption-only", vec(1), {"kind": "b"}, text_vectors={"caption": tvec(1, 1)}),
        Item("prompt-only", vec(1), {"kind": "a"}, text_vectors={"prompt": tvec(1, 0.2)}),
        Item("none", vec(1), {"kind": "a"}),
    ])
    return b


def test_semantic_text_search_takes_the_best_field(texts: SearchBackend) -> None:
    info = texts.get_collection("t", "c")
    assert (info.text_model_id, info.text_dimension) == ("tm", TDIM)
    page = texts.text_search("t", "c", TextQuery(text="x", vector=tvec(1), limit=10))
    assert ids(page) == ["both", "prompt-only", "caption-only"] and page.total == 3  # "none" has no text
    assert page.hits[0].score == pytest.approx(1.0, abs=1e-5)
    page = texts.text_search("t", "c", TextQuery(text="x", vector=tvec(0, 1), fields=("prompt",), limit=10))
    assert ids(page) == ["both", "prompt-only"]
    page = texts.text_search("t", "c", TextQuery(text="x", vector=tvec(1), fields=("caption",), limit=1, offset=1))
    assert ids(page) == ["caption-only"] and page.total == 2
    page = texts.text_search("t", "c", TextQuery(text="x", vector=tvec(1), filter=Term("kind", "a"), min_score=0.5))
    assert ids(page) == ["both", "prompt-only"] and page.total == 2  # the total honours min_score too
    page = texts.text_search("t", "c", TextQuery(text="x", vector=tvec(1), min_score=0.9, limit=1))
    assert len(page.hits) == 1 and page.total == 2  # "caption-only" scores 0.71
    with pytest.raises(BadRequest):
        texts.text_search("t", "c", TextQuery(text="x", vector=np.ones(TDIM + 1, dtype=np.float32)))


def test_text_vectors_follow_upserts_and_deletes(texts: SearchBackend) -> None:
    texts.delete("t", "c", ["both"])  # the last row moves into its place: its text rows must move too
    texts.upsert("t", "c", [Item("caption-only", vec(1), {}, text_vectors={"prompt": tvec(0, 0, 1)})])
    page = texts.text_search("t", "c", TextQuery(text="x", vector=tvec(0, 0, 1), limit=10))
    assert ids(page)[0] == "caption-only" and page.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert set(texts.get_item("t", "c", "caption-only").text_vectors) == {"prompt"}
    with pytest.raises(BadRequest):
        texts.upsert("t", "c", [Item("bad", vec(1), {}, text_vectors={"caption": np.ones(3, dtype=np.float32)})])
    assert texts.get_item("t", "c", "bad") is None


def test_semantic_text_search_needs_text_vectors(backend: SearchBackend) -> None:
    with pytest.raises(BadRequest):
        backend.text_search("t", "c", TextQuery(text="x", vector=tvec(1)))


def test_text_vectors_are_refused_where_not_kept(make_backend: Factory) -> None:
    b = make_backend()
    if b.supports_text_vectors:
        b.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM, text_model_id="tm",
                                                text_dimension=TDIM))
        b.upsert("t", "c", [Item("x", vec(1), {}, text_vectors={"caption": tvec(1)})])
        assert set(b.get_item("t", "c", "x").text_vectors) == {"caption"}
        return
    with pytest.raises(BadRequest):
        b.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM, text_model_id="tm",
                                                text_dimension=TDIM))
    assert b.get_collection("t", "c") is None
    b.create_collection("t", spec())
    with pytest.raises(BadRequest):
        b.upsert("t", "c", [Item("x", vec(1), {}, text_vectors={"caption": tvec(1)})])
    assert b.get_item("t", "c", "x") is None


def test_local_index_reloads_text_vectors(tmp_path: Path) -> None:
    a = LocalIndex(context=BackendContext(home=tmp_path))
    a.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM, text_model_id="tm",
                                            text_dimension=TDIM))
    a.upsert("t", "c", [Item(f"i{n}", vec(1), {}, text_vectors={"caption": tvec(1, n)}) for n in range(40)])
    a.close()
    b = LocalIndex(context=BackendContext(home=tmp_path))
    assert ids(b.text_search("t", "c", TextQuery(text="x", vector=tvec(1), limit=1))) == ["i0"]
    b.close()


def test_scan_walks_every_item_in_pages_in_code_point_order(make_text_backend: Factory) -> None:
    """The walk a copy rests on: every item once, in code point order (non-ASCII ids and ids
    that differ only in case included), with its vector, text vectors, metadata, photo key and
    version; resumable from any id, even one deleted since; other collections and tenants unseen."""
    b = make_text_backend()
    b.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=DIM, text_model_id="tm",
                                            text_dimension=TDIM))
    b.create_collection("t", CollectionSpec(name="other", model_id="m", dimension=DIM))
    b.create_collection("u", CollectionSpec(name="c", model_id="m", dimension=DIM))
    rng = np.random.default_rng(7)
    names = [f"item-{n:03d}" for n in range(23)] + ["Zebra", "zebra", "émile", "ü-1", "日本", "a b", "a.b", "~"]
    written = {}
    for n, name in enumerate(names):
        v = rng.standard_normal(DIM).astype(np.float32)
        written[name] = Item(name, v / np.linalg.norm(v), {"n": n, "caption": f"cap {n}"}, image_key=f"k/{name}",
                             updated_at=1000.0 + n, text_vectors={"caption": tvec(1, n)} if n % 3 == 0 else {})
    b.upsert("t", "c", list(written.values()))
    b.upsert("t", "other", [Item("item-000x", vec(1), {})])
    b.upsert("u", "c", [Item("item-000y", vec(1), {})])
    seen: list[Item] = []
    after = None
    for _ in range(50):  # bounded: 31 items in pages of 4
        page = b.scan_items("t", "c", after=after, limit=4)
        assert len(page) <= 4
        if not page:
            break
        seen.extend(page)
        after = page[-1].id
    assert [i.id for i in seen] == sorted(names)  # Python's str order: code points
    for item in seen:
        w = written[item.id]
        np.testing.assert_array_equal(item.vector, w.vector)
        assert item.metadata == w.metadata and item.image_key == w.image_key and item.updated_at == w.updated_at
        assert set(item.text_vectors) == set(w.text_vectors)
        for f, v in w.text_vectors.items():
            np.testing.assert_array_equal(item.text_vectors[f], v)
    # resumed from an id that is gone: the walk goes on from where it was
    b.delete("t", "c", ["item-010"])
    rest = b.scan_items("t", "c", after="item-010", limit=100)
    assert [i.id for i in rest] == sorted(n for n in names if n > "item-010")
    assert b.scan_items("t", "c", after=max(names), limit=10) == []
    with pytest.raises(NotFound):
        b.scan_items("t", "missing")


def test_scan_is_refused_clearly_where_the_engine_cannot_list(make_backend: Factory) -> None:
    """Marqo has no API that lists an index's documents: the walk (and so a copy out of it) is
    refused with a 501 that says so, never an empty walk that a copy would take for "done"."""
    b = make_backend()
    b.create_collection("t", spec())
    b.upsert("t", "c", [Item("x", vec(1), {})])
    if not isinstance(b, MarqoBackend):
        assert [i.id for i in b.scan_items("t", "c")] == ["x"]
        return
    with pytest.raises(NotAvailableHere) as refused:
        b.scan_items("t", "c")
    assert refused.value.status == 501 and "list" in refused.value.message


@REAL_OPENSEARCH
def test_an_opensearch_collection_killed_between_its_record_and_its_index_is_completed(tmp_path: Path) -> None:
    """create_collection writes the registry record, then the index: a process killed between
    the two (a copy SIGKILLed as it creates its destination) left a collection that every read
    answered 404 and that could not be created again. Its index is now made on first read."""
    with backends_of("opensearch", tmp_path) as factory:
        b = factory()
        assert isinstance(b, OpenSearchBackend)
        b.create_collection("t", spec())
        b._request("DELETE", f"/{b._index('t', 'c')}")  # as if killed before the index was made
        info = b.get_collection("t", "c")
        assert info is not None and info.item_count == 0 and info.dimension == DIM
        b.upsert("t", "c", [Item("x", vec(1), {"color": "red"})])
        assert [h.id for h in b.search("t", "c", VectorQuery(vector=vec(1))).hits] == ["x"]
        assert [c.name for c in b.list_collections("t")] == ["c"]
        b.delete_collection("t", "c")

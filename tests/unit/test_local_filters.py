"""The embedded index's field index answers every filter exactly as the reference semantics."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from lookalike.contracts import CollectionSpec, Item, VectorQuery
from lookalike.filters import And, Filter, Not, Or, Range, Term, matches
from lookalike_local.index import LocalIndex, LocalIndexOptions

VALUES = ["red", "blue", "5", "5.0", "x y", "", "true"]


def _value(rng: random.Random) -> object:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice(VALUES)
    if kind == 1:
        return rng.choice([5, 5.0, -2, 0, 2.5, 10**17])
    if kind == 2:
        return rng.random() < 0.5
    return [rng.choice([*VALUES, 5, 2.5]) for _ in range(rng.randrange(3))]


def _filter(rng: random.Random, depth: int = 0) -> Filter:
    kind = rng.randrange(6 if depth < 3 else 2)
    field = rng.choice("abc")
    if kind == 0:
        return Term(field, rng.choice([*VALUES, 5, 2.5, True, False, -2, 10**17]))
    if kind == 1:
        lo, hi = rng.choice([None, -2, 0, 2.5]), rng.choice([None, 5, 10])
        return Range(field, lo, hi)
    if kind == 2:
        return And(tuple(_filter(rng, depth + 1) for _ in range(rng.randrange(3))))
    if kind == 3:
        return Or(tuple(_filter(rng, depth + 1) for _ in range(rng.randrange(3))))
    return Not(_filter(rng, depth + 1))


def test_random_filters_match_the_reference(tmp_path: Path) -> None:
    rng = random.Random(7)
    index = LocalIndex(LocalIndexOptions(path=tmp_path / "i.sqlite"))
    index.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=4))
    items = []
    for n in range(150):
        metadata = {k: _value(rng) for k in "abc" if rng.random() < 0.7}
        items.append(Item(f"i{n:03d}", np.array([1, n / 150, 0, 0], dtype=np.float32), metadata))
    index.upsert("t", "c", items)
    index.delete("t", "c", ["i000", "i001"])
    live = {i.id: i.metadata for i in items if i.id not in ("i000", "i001")}
    for _ in range(400):
        flt = _filter(rng)
        page = index.search("t", "c", VectorQuery(vector=np.array([1, 0, 0, 0], dtype=np.float32), limit=200,
                                                  filter=flt))
        assert {h.id for h in page.hits} == {i for i, m in live.items() if matches(flt, m)}, flt
        assert page.total == len(page.hits)


def test_a_database_from_before_the_field_index_is_indexed_on_open(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    index = LocalIndex(LocalIndexOptions(path=path))
    index.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=4))
    index.upsert("t", "c", [Item("a", np.array([1, 0, 0, 0], dtype=np.float32), {"color": ["red", "blue"]})])
    index.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM item_fields")
    db.execute("DELETE FROM counters WHERE name = 'fields_indexed'")
    db.commit()
    db.close()
    reopened = LocalIndex(LocalIndexOptions(path=path))
    page = reopened.search("t", "c", VectorQuery(vector=np.array([1, 0, 0, 0], dtype=np.float32),
                                                 filter=Term("color", "blue")))
    assert [h.id for h in page.hits] == ["a"]


def test_filters_nested_to_the_documented_depth_compile(tmp_path: Path) -> None:
    """Issue 26: 12 nested NOTs (the documented depth is 32) overflowed SQLite's parser stack
    (500). Every shape at depth 32 answers, as the reference semantics say."""
    index = LocalIndex(LocalIndexOptions(path=tmp_path / "i.sqlite"))
    index.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=4))
    items = [Item(f"i{n}", np.array([1, n / 10, 0, 0], dtype=np.float32), {"a": n % 3, "b": "red" if n % 2 else "blue"})
             for n in range(10)]
    index.upsert("t", "c", items)
    leaf_a, leaf_b = Term("a", 1), Term("b", "red")
    shapes: dict[str, Filter] = {"not": leaf_a, "and/or": leaf_a, "not-and": leaf_a}
    for depth in range(32):
        shapes["not"] = Not(shapes["not"])
        shapes["and/or"] = (And if depth % 2 else Or)((shapes["and/or"], leaf_b if depth % 3 else Not(leaf_a)))
        shapes["not-and"] = Not(And((shapes["not-and"], Or((leaf_b, Range("a", 0, 1))))))
    for name, flt in shapes.items():
        page = index.search("t", "c", VectorQuery(vector=np.array([1, 0, 0, 0], dtype=np.float32), limit=20,
                                                  filter=flt))
        assert {h.id for h in page.hits} == {i.id for i in items if matches(flt, i.metadata)}, name

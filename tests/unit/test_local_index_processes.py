"""Several processes on one embedded index: each one's writes are seen by the others, at once.

Two ``LocalIndex`` objects on one SQLite file stand for two processes (the server and the
CLI): each has its own connection and its own cache of the vectors. A third, raw connection
holds a write transaction open, so a write waits for the lock while another one commits.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from lookalike.contracts import CollectionSpec, Item, VectorQuery
from lookalike_local.index import LocalIndex, LocalIndexOptions


def vec(*xs: float) -> np.ndarray:
    v = np.zeros(4, dtype=np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def _index(path: Path) -> LocalIndex:
    return LocalIndex(LocalIndexOptions(path=path))


def _ids(index: LocalIndex, limit: int = 10) -> list[str]:
    return [h.id for h in index.search("t", "c", VectorQuery(vector=vec(1, 1), limit=limit)).hits]


def test_a_write_that_waited_for_the_lock_still_sees_what_committed_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    server, cli = _index(path), _index(path)
    server.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=4))
    server.upsert("t", "c", [Item("a", vec(1)), Item("b", vec(0, 1)), Item("gone", vec(1, 1))])
    assert sorted(_ids(server)) == ["a", "b", "gone"]  # the server has the vectors cached

    third = sqlite3.connect(path, isolation_level=None, timeout=30)
    third.execute("BEGIN IMMEDIATE")
    writer = threading.Thread(target=lambda: server.upsert("t", "c", [Item("new", vec(1, 0.5))]))
    writer.start()
    time.sleep(0.5)  # the server's upsert now waits for the write lock
    # Meanwhile another process removes an item and bumps the revision, as the index does.
    third.execute("DELETE FROM items WHERE id = 'gone'")
    third.execute("UPDATE counters SET value = value + 1 WHERE name = 'revision'")
    third.execute("UPDATE collections SET revision = (SELECT value FROM counters WHERE name = 'revision')")
    third.execute("COMMIT")
    writer.join(30)

    assert sorted(_ids(server)) == ["a", "b", "new"]  # not "gone" (it answered 500 before)
    assert server.get_collection("t", "c").item_count == 3
    assert sorted(_ids(cli)) == ["a", "b", "new"]


def test_each_process_sees_the_others_writes_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    server, cli = _index(path), _index(path)
    server.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=4))
    server.upsert("t", "c", [Item("a", vec(1))])
    assert _ids(server) == ["a"] and _ids(cli) == ["a"]
    cli.upsert("t", "c", [Item("b", vec(0, 1))])
    cli.delete("t", "c", ["a"])
    assert _ids(server) == ["b"] and server.get_collection("t", "c").item_count == 1
    server.delete("t", "c", ["b"])
    server.upsert("t", "c", [Item("c", vec(1, 1))])
    assert _ids(cli) == ["c"] and cli.get_collection("t", "c").item_count == 1


def test_a_collection_created_again_is_never_served_from_the_old_cache(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    server, cli = _index(path), _index(path)
    spec = CollectionSpec(name="c", model_id="m", dimension=4)
    server.create_collection("t", spec)
    server.upsert("t", "c", [Item("old", vec(1))])
    assert _ids(server) == ["old"]
    cli.delete_collection("t", "c")
    cli.create_collection("t", spec)
    cli.upsert("t", "c", [Item("fresh", vec(1))])
    assert _ids(server) == ["fresh"]


def test_concurrent_writers_in_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    one, two = _index(path), _index(path)
    one.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=4))

    def write(index: LocalIndex, prefix: str) -> None:
        for n in range(60):
            index.upsert("t", "c", [Item(f"{prefix}-{n}", vec(1, n / 60))])
            if n % 3 == 0:
                index.delete("t", "c", [f"{prefix}-{n}"])

    threads = [threading.Thread(target=write, args=(i, p)) for i, p in ((one, "x"), (two, "y"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected = sorted(f"{p}-{n}" for p in "xy" for n in range(60) if n % 3)
    for index in (one, two):
        assert sorted(_ids(index, limit=200)) == expected
        assert index.get_collection("t", "c").item_count == len(expected)

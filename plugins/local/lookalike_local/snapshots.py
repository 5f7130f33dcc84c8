"""The embedded index's approximate path: one snapshot per collection and vector space, and
searching through it.

A *snapshot* is an approximate-index file (``lookalike_local.ann``: a memory-mapped IVF of 8-bit
codes) covering a space's vectors up to a revision, recorded in the ``ann_snapshots`` table.
Writes after it sit in a per-process delta; the snapshot is rebuilt, in the background, once
the writes and deletes since it pass the rebuild limit. Candidates are rescored with their
float32 vectors from SQLite, so scores, ``min_score``, ties by id and pages stay exact for what
is found. (The word means only this: a search's consistent read of SQLite is a *read view*.)
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.contracts import TEXT_FIELDS
from lookalike.errors import BackendUnavailable
from lookalike_local import ann
from lookalike_local.matrix import stacked

# A first snapshot of a collection larger than this is built in the background, not inside
# the search that needs it (1M items take about a minute; a request has 30 s).
SYNC_BUILD_MAX = 200_000
# A filter that passes at most this many items is answered by scoring each of them from the
# float16 file rather than through the IVF, which would visit every list to find them.
BRUTE_FORCE_MAX = 20_000


def auto_nprobe(nlist: int) -> int:
    """IVF lists a query visits by default: a sixteenth of them, 8 to 16. Measured on
    catalog-shaped vectors (bench/peers.py, bench/ann.py): recall@10 0.956 at 20,000 items (8
    of 128 lists), 0.993 at 100,000 (16 of 256), 0.964 at 1M (16 of 1,024: 21 ms a search on
    this project's 2-core machine, where a sixteenth, 64 lists, took 67 ms for 0.9985)."""
    return max(1, min(nlist, max(8, min(16, nlist // 16))))


@dataclass(frozen=True)
class SnapshotSettings:
    nprobe: int | None  # IVF lists a query visits (None: auto_nprobe); nprobe / sqrt(s) under a filter passing s
    candidates: int  # candidates rescored per result wanted
    rebuild_fraction: float  # rebuild once the writes and deletes since a snapshot pass this share of it
    rebuild_min: int  # ... or this many


@dataclass
class _Loaded:
    """A snapshot mapped by this process, and the vectors written after it (this process's delta)."""

    snapshot: ann.Snapshot
    delta: ann.Delta


class Snapshots:
    """The snapshots of every collection of one database. ``db`` is the index's own connection
    (searches read through it inside their read view); builds use a connection of their own."""

    def __init__(self, db: sqlite3.Connection, path: Path, settings: SnapshotSettings) -> None:
        self.db, self.path, self.settings = db, path, settings
        self.dir = path.with_name(path.name + ".ann")
        self._loaded: dict[tuple[str, str, str], _Loaded] = {}
        self._building: set[tuple[str, str, str]] = set()
        if self.dir.exists():
            ann.sweep(self.dir, {r[0] for r in db.execute("SELECT file FROM ann_snapshots")})

    def forget(self, tenant: str, collection: str, files: list[str]) -> None:
        """A deleted collection's snapshots: dropped from memory and their ``files`` removed (call
        after the commit that removed their rows: a kill before it leaves them referenced)."""
        for key in [k for k in self._loaded if k[:2] == (tenant, collection)]:
            del self._loaded[key]
        for file in files:
            ann.remove(self.dir / file)

    # ------------------------------------------------------------ building

    def stale(self, tenant: str, collection: str, space: str) -> bool:
        """Whether a space has no snapshot, or more writes and deletes since it than the
        rebuild limit allows."""
        row = self.db.execute("SELECT revision, items FROM ann_snapshots WHERE tenant = ? AND collection = ?"
                              " AND space = ?", (tenant, collection, space)).fetchone()
        if row is None:
            return True
        where, _ = _space_sql(space)
        key = (tenant, collection)
        written = self.db.execute(f"SELECT count(*) {where} AND i.vrev > ?", (*key, row[0])).fetchone()[0]
        live = self.db.execute(f"SELECT count(*) {where}", key).fetchone()[0]
        return written + max(0, int(row[1]) - (live - written)) > self._rebuild_limit(int(row[1]))

    def _rebuild_limit(self, items: int) -> float:
        return max(self.settings.rebuild_min, self.settings.rebuild_fraction * items)

    def build(self, tenant: str, collection: str, space: str, wait: bool, first: bool = False) -> int | None:
        """Build and record a snapshot of one space from its own connection; None when another
        process holds the build lock (and ``wait`` is off) or the collection went away. With
        ``first``, a snapshot another process built while this one waited is kept."""
        lock = self.dir / f".{_digest(tenant, collection, space)}.lock"
        with ann.build_lock(lock, wait) as taken:
            if not taken:
                return None
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                return self._build(db, tenant, collection, space, first)
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                db.close()

    def _build(self, db: sqlite3.Connection, tenant: str, collection: str, space: str, first: bool) -> int | None:
        if first:
            built = db.execute("SELECT items FROM ann_snapshots WHERE tenant = ? AND collection = ? AND space = ?",
                               (tenant, collection, space)).fetchone()
            if built is not None:
                return int(built[0])
        db.execute("BEGIN")  # one read view of the database for the whole build
        row = db.execute("SELECT revision, dimension, text_dimension, created_at FROM collections"
                         " WHERE tenant = ? AND name = ?", (tenant, collection)).fetchone()
        if row is None:
            return None
        revision, created_at = int(row[0]), row[3]
        dim = int(row[1] if space == "image" else row[2])
        where, column = _space_sql(space)
        key = (tenant, collection)
        pks = np.array([r[0] for r in db.execute(f"SELECT i.pk {where} ORDER BY i.pk", key)], dtype=np.int64)

        def vectors(chosen: np.ndarray) -> np.ndarray:
            out = np.empty((len(chosen), dim), dtype=np.float32)
            for start in range(0, len(chosen), 900):
                part = chosen[start:start + 900].tolist()
                marks = ",".join("?" * len(part))
                got = dict(db.execute(f"SELECT i.pk, {column} {where} AND i.pk IN ({marks})", (*key, *part)))
                for n, pk in enumerate(part):
                    out[start + n] = np.frombuffer(got[pk], dtype=np.float32)
            return out

        def sample(n: int) -> np.ndarray:
            rng = np.random.default_rng(revision)
            return vectors(np.sort(rng.choice(pks, size=min(n, len(pks)), replace=False)))

        def chunks() -> Any:
            last = -1
            while True:
                rows = db.execute(f"SELECT i.pk, {column} {where} AND i.pk > ? ORDER BY i.pk LIMIT ?",
                                  (*key, last, ann.CHUNK)).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                yield np.array([r[0] for r in rows], dtype=np.int64), stacked(rows, dim)

        name = f"{_digest(tenant, collection, space)}-{revision}-{uuid.uuid4().hex[:8]}.faiss"
        self.dir.mkdir(parents=True, exist_ok=True)
        count = ann.build(self.dir / name, dim, len(pks), sample, chunks())
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        alive = db.execute("SELECT created_at FROM collections WHERE tenant = ? AND name = ?", key).fetchone()
        old = db.execute("SELECT file FROM ann_snapshots WHERE tenant = ? AND collection = ? AND space = ?",
                         (*key, space)).fetchone()
        if alive is None or alive[0] != created_at:
            db.execute("ROLLBACK")
            ann.remove(self.dir / name)
            return None
        db.execute("INSERT OR REPLACE INTO ann_snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (*key, space, name, revision, count, time.time()))
        db.execute("COMMIT")
        if old and old[0] != name:
            ann.remove(self.dir / old[0])  # processes that mapped it keep it
        return count

    def _rebuild_in_background(self, key: tuple[str, str, str]) -> None:
        if key in self._building:
            return
        self._building.add(key)

        def rebuild() -> None:
            try:
                self.build(*key, wait=False)
            finally:
                self._building.discard(key)

        threading.Thread(target=rebuild, daemon=True, name="lookalike-ann-build").start()

    def _current(self, tenant: str, collection: str, space: str, revision: int, count: int) -> _Loaded | None:
        """The space's snapshot and this process's delta, current as of the search's read view
        (the collection at ``revision`` holds ``count`` items); builds the first snapshot
        (waiting for it), starts later rebuilds in the background."""
        key = (tenant, collection, space)
        row = self.db.execute("SELECT file, revision, items FROM ann_snapshots"
                              " WHERE tenant = ? AND collection = ? AND space = ?", key).fetchone()
        if row is None:
            if count > SYNC_BUILD_MAX:
                # Too long to build inside a request (a worker is stopped at its timeout and
                # would start over): build in the background, and ask the caller to come back.
                self._rebuild_in_background(key)
                raise BackendUnavailable("this collection's search index is being built; retry in a minute")
            if self.build(tenant, collection, space, wait=True, first=True) is None:
                return None
            # The search's read view predates the new row: read it on a fresh connection.
            with sqlite3.connect(self.path, timeout=30) as fresh:
                row = fresh.execute("SELECT file, revision, items FROM ann_snapshots"
                                    " WHERE tenant = ? AND collection = ? AND space = ?", key).fetchone()
            if row is None:
                return None
        loaded = self._loaded.get(key)
        if loaded is None or loaded.snapshot.path.name != row[0]:
            snapshot = ann.Snapshot.open(self.dir / row[0], int(row[1]), int(row[2]))
            loaded = _Loaded(snapshot=snapshot, delta=ann.Delta.empty(snapshot))
            self._loaded[key] = loaded
        if loaded.delta.revision < revision:
            where, column = _space_sql(space)
            rows = self.db.execute(f"SELECT i.pk, {column} {where} AND i.vrev > ?",
                                   (tenant, collection, loaded.delta.revision)).fetchall()
            if rows:
                loaded.delta.add(np.array([r[0] for r in rows], dtype=np.int64),
                                 stacked(rows, loaded.snapshot.index.d))
            loaded.delta.revision = revision
        stale = len(loaded.delta.pks) + max(0, loaded.snapshot.count - (count - len(loaded.delta.pks)))
        if stale > self._rebuild_limit(loaded.snapshot.count):
            self._rebuild_in_background(key)
        return loaded

    # ------------------------------------------------------------ searching

    def search(self, tenant: str, collection: str, spaces: tuple[str, ...], q: np.ndarray, *, revision: int,
               count: int, allowed: np.ndarray | None, min_score: float | None, exclude: frozenset[str],
               limit: int, offset: int) -> tuple[list[tuple[str, float]], int]:
        """The page's (id, exact score) pairs and the total.

        Candidates come from each space's IVF (``allowed``: the pks a filter passes, handed to
        faiss as a bitmap) or, when a filter passes few enough items, are every item it passes.
        They are ranked by their float16 scores in one vectorised step (the best over the spaces,
        as the exact path scores text); only those that can still reach the page (within twice
        the float16 error of its edge) are read back from SQLite as float32, so every score
        answered is exact, ties go by id, and an item SQLite no longer has is never answered."""
        pool = count if allowed is None else len(allowed)
        if pool == 0:
            return [], 0
        loaded = [self._current(tenant, collection, space, revision, count) for space in spaces]
        excluded = self._pks_of(tenant, collection, exclude)
        scan_all = allowed is not None and len(allowed) <= BRUTE_FORCE_MAX
        want = offset + limit
        k = max(100, self.settings.candidates * (want + len(exclude)))
        while True:
            candidates = allowed if scan_all else self._from_ivf(loaded, q, k, count, allowed)
            candidates = candidates[~np.isin(candidates, excluded)]  # type: ignore[index]
            ranked = self._approximate_scores(loaded, candidates, q)
            floor = -np.inf if min_score is None else min_score - 2 * ann.FLOAT16_ERROR
            keep = ~(ranked < floor) & (ranked != -np.inf)  # NaN (not known here) is kept
            candidates, ranked = candidates[keep], ranked[keep]
            page, passing = self._exact_page(tenant, collection, spaces, q, candidates, ranked, want, min_score)
            if min_score is None or scan_all or passing < len(candidates) or k >= min(pool, 20_000):
                break
            k *= 4  # every candidate passed min_score: more may pass beyond them
        if min_score is not None:
            total = passing  # within the approximate index's recall
        else:
            total = pool - (len(excluded) if allowed is None else int(np.isin(excluded, allowed).sum()))
        return page[offset:offset + limit], total

    def _from_ivf(self, loaded: list[_Loaded | None], q: np.ndarray, k: int, count: int,
                  allowed: np.ndarray | None) -> np.ndarray:
        found: list[np.ndarray] = []
        for state in loaded:
            if state is None:
                continue
            nprobe = self.settings.nprobe or auto_nprobe(state.snapshot.index.nlist)
            if allowed is not None:  # a selective filter visits more lists, up to all (bench/ann.py)
                nprobe = math.ceil(nprobe * math.sqrt(count / len(allowed)))
            found.append(ann.search(state.snapshot, state.delta, q, k, nprobe, allowed))
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    @staticmethod
    def _approximate_scores(loaded: list[_Loaded | None], pks: np.ndarray, q: np.ndarray) -> np.ndarray:
        """The best score over the spaces (``ann.scores``): -inf where no space holds the pk."""
        best = np.full(len(pks), -np.inf, dtype=np.float32)
        for state in loaded:
            if state is not None:
                got = ann.scores(state.snapshot, state.delta, pks, q)
                best = np.where(np.isnan(got) | np.isnan(best), np.nan, np.maximum(best, got))
        return best

    def _exact_page(self, tenant: str, collection: str, spaces: tuple[str, ...], q: np.ndarray,
                    pks: np.ndarray, ranked: np.ndarray, want: int,
                    min_score: float | None) -> tuple[list[tuple[str, float]], int]:
        """The best ``want`` of ``pks`` by exact score as (id, score), ordered (score desc, id),
        and how many pass ``min_score``.

        ``ranked`` is each pk's float16 score (NaN: unknown, always read). Read back: the ``want``
        best, every pk within ``margin`` below the worst of them, and those within ``margin`` of
        ``min_score``. No pk left unread can then beat one read: it scores below the edge by more
        than the float16 error. A pk SQLite no longer has leaves room for the next, read too."""
        margin = 2 * ann.FLOAT16_ERROR
        unknown = np.isnan(ranked)
        order = np.argsort(np.where(unknown, -np.inf, -ranked), kind="stable")
        exact: dict[int, tuple[str, float]] = {}
        read = np.zeros(len(pks), dtype=bool)
        reach = want
        while True:
            head = order[:reach]
            known = ranked[head][~unknown[head]]
            edge = float(known.min()) if len(known) else np.inf
            todo = ~read & (unknown | (ranked >= edge - margin))
            todo[head] = ~read[head]
            if min_score is not None:
                todo |= ~read & (np.abs(ranked - min_score) < margin)
            if todo.any():
                exact.update(self._exact(tenant, collection, spaces, pks[todo], q))
                read |= todo
            present = sum(1 for pk in pks[head].tolist() if pk in exact)
            if present >= min(want, len(pks)) or reach >= len(pks):
                break
            reach += want - present
        page = sorted(exact.values(), key=lambda hit: (-hit[1], hit[0]))
        if min_score is None:
            return page, len(page)
        page = [hit for hit in page if hit[1] >= min_score]
        sure = pks[~read & (ranked >= min_score + margin)]
        return page, len(page) + len(self._present(tenant, collection, spaces, sure))

    def _pks_of(self, tenant: str, collection: str, ids: frozenset[str]) -> np.ndarray:
        if not ids:
            return np.zeros(0, dtype=np.int64)
        marks = ",".join("?" * len(ids))
        return np.array([r[0] for r in self.db.execute(
            f"SELECT pk FROM items WHERE tenant = ? AND collection = ? AND id IN ({marks})",
            (tenant, collection, *ids))], dtype=np.int64)

    def _present(self, tenant: str, collection: str, spaces: tuple[str, ...], pks: np.ndarray) -> list[int]:
        """Which of ``pks`` SQLite still holds a vector of in ``spaces`` (no vector is read)."""
        return [row[0] for row in self._held(tenant, collection, spaces, pks, with_vectors=False)]

    def _exact(self, tenant: str, collection: str, spaces: tuple[str, ...], pks: np.ndarray,
               q: np.ndarray) -> dict[int, tuple[str, float]]:
        """pk -> (id, exact cosine) of the ``pks`` SQLite still has: the best over ``spaces``."""
        best: dict[int, tuple[str, float]] = {}
        rows = self._held(tenant, collection, spaces, pks, with_vectors=True)
        if rows:
            scores = stacked([(pk, vector) for pk, vector, _ in rows], -1) @ q
            for (pk, _, item_id), score in zip(rows, scores.tolist(), strict=True):
                if pk not in best or score > best[pk][1]:
                    best[pk] = (item_id, score)
        return best

    def _held(self, tenant: str, collection: str, spaces: tuple[str, ...], pks: np.ndarray,
              with_vectors: bool) -> list[tuple[Any, ...]]:
        """(pk, vector, id) rows, or (pk,) rows, of the ``pks`` SQLite holds a vector of in
        ``spaces`` (one row per space for text). "+" makes SQLite look the pks up by rowid,
        never by scanning the (tenant, collection) index."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(pks), 900):
            part = pks[start:start + 900].tolist()
            marks = ",".join("?" * len(part))
            if spaces == ("image",):
                columns = "pk, vector, id" if with_vectors else "pk"
                sql = f"SELECT {columns} FROM items WHERE pk IN ({marks}) AND +tenant = ? AND +collection = ?"
                params: tuple[Any, ...] = (*part, tenant, collection)
            else:
                columns = "t.pk, t.vector, i.id" if with_vectors else "DISTINCT t.pk"
                fields = ",".join("?" * len(spaces))
                sql = (f"SELECT {columns} FROM text_vectors t JOIN items i ON i.pk = t.pk WHERE t.pk IN ({marks})"
                       f" AND t.field IN ({fields}) AND +i.tenant = ? AND +i.collection = ?")
                params = (*part, *spaces, tenant, collection)
            rows += self.db.execute(sql, params).fetchall()
        return rows


def _space_sql(space: str) -> tuple[str, str]:
    """(FROM ... WHERE clause over the space's vectors, the vector column) for ``space``."""
    if space == "image":
        return "FROM items i WHERE i.tenant = ? AND i.collection = ?", "i.vector"
    assert space in TEXT_FIELDS  # a fixed name, so it may be spelled into the SQL
    return ("FROM text_vectors t JOIN items i ON i.pk = t.pk WHERE i.tenant = ? AND i.collection = ?"
            f" AND t.field = '{space}'"), "t.vector"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]

"""The embedded default search backend: SQLite for metadata, facets and text; numpy for vectors.

SQLite holds everything (vectors included) and is the source of truth. A per-collection
revision counter lets several processes (the server and a CLI ingest) share one database and
reload only when another one wrote.

Collections below ``ann_min_items`` are searched exactly: one matrix-vector product over
float32 vectors cached in memory (the reference the approximate path is tested against).
Larger ones are searched through ``lookalike_local.ann``: a memory-mapped IVF of 8-bit codes
shared by every process, whose candidates are rescored with their float32 vectors from
SQLite, so scores, ``min_score``, ties broken by id and pages stay exact for what is found.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lookalike.contracts import (
    TEXT_FIELDS,
    BackendContext,
    CollectionInfo,
    CollectionSpec,
    Hit,
    Item,
    SearchBackend,
    SearchPage,
    TextQuery,
    VectorQuery,
    item_text,
)
from lookalike.errors import BackendUnavailable, BadRequest, Conflict, NotFound
from lookalike.filters import And, Filter, Not, Or, Range, Term, as_number
from lookalike.ranking import top_k
from lookalike_local import ann

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    tenant TEXT NOT NULL, name TEXT NOT NULL, model_id TEXT NOT NULL, dimension INTEGER NOT NULL,
    settings TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, name));
CREATE TABLE IF NOT EXISTS items (
    pk INTEGER PRIMARY KEY, tenant TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,
    metadata TEXT NOT NULL, image_key TEXT, vector BLOB NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (tenant, collection, id));
CREATE VIRTUAL TABLE IF NOT EXISTS items_text USING fts5(caption, prompt, tokenize='porter unicode61');
CREATE TABLE IF NOT EXISTS text_vectors (
    pk INTEGER NOT NULL, field TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (pk, field));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- One row per filterable metadata value (list members each), so that a filter is an index
-- lookup instead of a json_each over every item: text, number or flag (booleans).
CREATE TABLE IF NOT EXISTS item_fields (
    pk INTEGER NOT NULL, tenant TEXT NOT NULL, collection TEXT NOT NULL, key TEXT NOT NULL,
    text TEXT, num REAL, flag INTEGER);
CREATE INDEX IF NOT EXISTS item_fields_text ON item_fields (tenant, collection, key, text, pk) WHERE text IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_num ON item_fields (tenant, collection, key, num, pk) WHERE num IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_flag ON item_fields (tenant, collection, key, flag, pk) WHERE flag IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_pk ON item_fields (pk);
-- The approximate index files in force, one per collection and vector space ('image', or a
-- caption/prompt field), each covering the vectors written up to its revision.
CREATE TABLE IF NOT EXISTS ann_snapshots (
    tenant TEXT NOT NULL, collection TEXT NOT NULL, space TEXT NOT NULL, file TEXT NOT NULL,
    revision INTEGER NOT NULL, items INTEGER NOT NULL, built_at REAL NOT NULL,
    PRIMARY KEY (tenant, collection, space));
INSERT OR IGNORE INTO counters VALUES ('revision', (SELECT coalesce(max(revision), 0) FROM collections));
"""
# Columns added after the first release; databases created before get them on open.
_MIGRATIONS = (
    ("collections", "text_model_id", "ALTER TABLE collections ADD COLUMN text_model_id TEXT"),
    ("collections", "text_dimension", "ALTER TABLE collections ADD COLUMN text_dimension INTEGER"),
    # The revision that wrote an item's vectors: what an approximate snapshot covers.
    ("items", "vrev", "ALTER TABLE items ADD COLUMN vrev INTEGER NOT NULL DEFAULT 0"),
)


_COUNT_SQL = "(SELECT count(*) FROM items i WHERE i.tenant = c.tenant AND i.collection = c.name)"
_INFO_SQL = ("SELECT name, model_id, dimension, settings, status, created_at, {count},"
             " text_model_id, text_dimension, revision FROM collections c")


# A first snapshot of a collection larger than this is built in the background, not inside
# the search that needs it (1M items take about a minute; a request has 30 s).
SYNC_BUILD_MAX = 200_000


class LocalIndexOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path | None = None  # defaults to <home>/index.sqlite
    # Collections with at least this many items are searched approximately: the two paths
    # cost the same there (2.3 ms, bench/ann_choice.py); 0 turns the approximate index off.
    ann_min_items: int = Field(default=20_000, ge=0)
    # IVF lists visited per query; a filter that passes a share s of the items visits nprobe / sqrt(s).
    ann_nprobe: int = Field(default=32, ge=1, le=4096)
    ann_candidates: int = Field(default=4, ge=1, le=64)  # candidates rescored per result wanted
    # Rebuild a snapshot once the writes and deletes since it pass this share of it (or 5,000).
    ann_rebuild_fraction: float = Field(default=0.1, gt=0, le=10)
    ann_rebuild_min: int = Field(default=5_000, ge=1)


@dataclass
class _Matrix:
    """In-memory vectors of one collection, kept in step with SQLite.

    Row n of ``vectors`` and of each ``text[field]`` belong to item ``ids[n]``; a text row
    counts only where ``has_text[field]`` is set (not every item has a caption).
    """

    revision: int
    ids: list[str]
    vectors: np.ndarray  # (capacity, d); rows [0, len(ids)) are live
    position: dict[str, int]
    text: dict[str, np.ndarray]
    has_text: dict[str, np.ndarray]

    @property
    def live(self) -> np.ndarray:
        return self.vectors[: len(self.ids)]


class LocalIndex(SearchBackend):
    Options = LocalIndexOptions
    stores_in_home = True

    def __init__(self, options: LocalIndexOptions | None = None, context: BackendContext | None = None) -> None:
        options = options or LocalIndexOptions()
        home = context.home if context else Path(".lookalike")
        self.path = options.path or home / "index.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for table, column, ddl in _MIGRATIONS:
            if column not in {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(ddl)
        self._db.execute("CREATE INDEX IF NOT EXISTS items_vrev ON items (tenant, collection, vrev)")
        self._backfill_fields()
        self._cache: dict[tuple[str, str], _Matrix] = {}
        self.options = options
        self.ann_dir = self.path.with_name(self.path.name + ".ann")
        self._ann: dict[tuple[str, str, str], _AnnState] = {}
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}
        self._building: set[tuple[str, str, str]] = set()
        if self.ann_dir.exists():
            referenced = {r[0] for r in self._db.execute("SELECT file FROM ann_snapshots")}
            ann.sweep(self.ann_dir, referenced)

    # ------------------------------------------------------------ collections

    def create_collection(self, tenant: str, spec: CollectionSpec) -> CollectionInfo:
        with self._lock:
            try:
                with self._tx():
                    self._db.execute(
                        "INSERT INTO collections (tenant, name, model_id, dimension, settings, status, created_at,"
                        " text_model_id, text_dimension, revision) VALUES (?, ?, ?, ?, ?, 'READY', ?, ?, ?, ?)",
                        (tenant, spec.name, spec.model_id, spec.dimension, json.dumps(dict(spec.settings)),
                         time.time(), spec.text_model_id, spec.text_dimension, self._next_revision()),
                    )
            except sqlite3.IntegrityError:
                raise Conflict(f"Collection {spec.name!r} already exists") from None
            info = self.get_collection(tenant, spec.name)
            assert info is not None
            return info

    def get_collection(self, tenant: str, name: str) -> CollectionInfo | None:
        with self._lock:
            # Every search asks for its collection: count from the cached vectors when they are
            # current (counting 100k rows in SQLite costs ~5 ms), from SQLite otherwise.
            row = self._db.execute(
                _INFO_SQL.format(count="-1") + " WHERE tenant = ? AND name = ?", (tenant, name),
            ).fetchone()
            if row is None:
                return None
            return _info((*row[:6], self._count(tenant, name, int(row[9])), *row[7:]))

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        with self._lock:
            rows = self._db.execute(
                _INFO_SQL.format(count=_COUNT_SQL) + " WHERE tenant = ? ORDER BY name", (tenant,),
            ).fetchall()
        return [_info(r) for r in rows]

    def delete_collection(self, tenant: str, name: str) -> bool:
        with self._lock:
            with self._tx():
                for table, key in (("items_text", "rowid"), ("text_vectors", "pk")):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE {key} IN"
                        " (SELECT pk FROM items WHERE tenant = ? AND collection = ?)", (tenant, name))
                self._db.execute("DELETE FROM items WHERE tenant = ? AND collection = ?", (tenant, name))
                self._db.execute("DELETE FROM item_fields WHERE tenant = ? AND collection = ?", (tenant, name))
                files = [r[0] for r in self._db.execute(
                    "DELETE FROM ann_snapshots WHERE tenant = ? AND collection = ? RETURNING file", (tenant, name))]
                cur = self._db.execute("DELETE FROM collections WHERE tenant = ? AND name = ?", (tenant, name))
            self._cache.pop((tenant, name), None)
            for key in [k for k in self._ann if k[:2] == (tenant, name)]:
                del self._ann[key]
        for file in files:  # after the commit: a kill before it leaves them referenced
            (self.ann_dir / file).unlink(missing_ok=True)
        return cur.rowcount > 0

    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None:
        with self._lock:
            self._db.execute("UPDATE collections SET status = ? WHERE tenant = ? AND name = ?", (status, tenant, name))

    # ------------------------------------------------------------ items

    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> list[str]:
        if not items:
            return []
        with self._lock:
            with self._tx():
                # The revision is read under the write lock: a write another process made before
                # we got the lock is loaded first, never overwritten by our bump.
                dim, text_dim = self._dimensions(tenant, collection)
                rows = [(item, _checked(item.vector, dim, "vector"),
                         {f: _checked(v, text_dim, "text vector") for f, v in item.text_vectors.items()
                          if f in TEXT_FIELDS})
                        for item in items]
                before = self._revision(tenant, collection)
                revision = self._next_revision()
                superseded: list[str] = []
                for item, v, texts in rows:
                    cur = self._db.execute(
                        "INSERT INTO items (tenant, collection, id, metadata, image_key, vector, updated_at, vrev)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, collection, id) DO UPDATE SET"
                        " metadata = excluded.metadata, image_key = excluded.image_key,"
                        " vector = excluded.vector, updated_at = excluded.updated_at, vrev = excluded.vrev"
                        " WHERE excluded.updated_at >= items.updated_at"  # a later-begun write stays
                        " RETURNING pk",
                        (tenant, collection, item.id, json.dumps(item.metadata), item.image_key,
                         v.tobytes(), item.updated_at, revision),
                    )
                    row = cur.fetchone()
                    if row is None:
                        superseded.append(item.id)
                        continue
                    pk = row[0]
                    self._db.execute("DELETE FROM items_text WHERE rowid = ?", (pk,))
                    self._db.execute("DELETE FROM text_vectors WHERE pk = ?", (pk,))
                    self._db.execute("DELETE FROM item_fields WHERE pk = ?", (pk,))
                    self._db.executemany(
                        "INSERT INTO item_fields (pk, tenant, collection, key, text, num, flag)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)", _field_rows(pk, tenant, collection, item.metadata))
                    text = [item_text(item.metadata, f) for f in TEXT_FIELDS]
                    if any(text):
                        self._db.execute("INSERT INTO items_text (rowid, caption, prompt) VALUES (?, ?, ?)",
                                         (pk, *text))
                    for field, tv in texts.items():
                        self._db.execute("INSERT INTO text_vectors (pk, field, vector) VALUES (?, ?, ?)",
                                         (pk, field, tv.tobytes()))
                self._set_revision(tenant, collection, revision)
            # The cache changes only once the commit succeeded (an exception skips this), and
            # only if it held exactly the state before this write; otherwise it reloads.
            matrix = self._cache.get((tenant, collection))
            if matrix is not None and matrix.revision == before:
                for item, v, texts in rows:
                    if item.id not in superseded:
                        _matrix_put(matrix, item.id, v, texts)
                matrix.revision = revision
            else:
                self._cache.pop((tenant, collection), None)
            return superseded

    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        with self._lock:
            with self._tx():
                self._dimensions(tenant, collection)
                before = revision = self._revision(tenant, collection)
                removed = 0
                for item_id in ids:
                    row = self._db.execute(
                        "DELETE FROM items WHERE tenant = ? AND collection = ? AND id = ? RETURNING pk",
                        (tenant, collection, item_id),
                    ).fetchone()
                    if row:
                        self._db.execute("DELETE FROM items_text WHERE rowid = ?", (row[0],))
                        self._db.execute("DELETE FROM text_vectors WHERE pk = ?", (row[0],))
                        self._db.execute("DELETE FROM item_fields WHERE pk = ?", (row[0],))
                        removed += 1
                if removed:
                    revision = self._next_revision()
                    self._set_revision(tenant, collection, revision)
            matrix = self._cache.get((tenant, collection))
            if matrix is not None and matrix.revision == before:
                for item_id in ids:
                    _matrix_remove(matrix, item_id)
                matrix.revision = revision
            else:
                self._cache.pop((tenant, collection), None)
            return removed

    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, metadata, image_key, vector, updated_at, pk FROM items"
                " WHERE tenant = ? AND collection = ? AND id = ?", (tenant, collection, item_id),
            ).fetchone()
            if not row:
                return None
            texts = {f: np.frombuffer(v, dtype=np.float32).copy() for f, v in self._db.execute(
                "SELECT field, vector FROM text_vectors WHERE pk = ?", (row[5],))}
        return Item(id=row[0], metadata=json.loads(row[1]), image_key=row[2],
                    vector=np.frombuffer(row[3], dtype=np.float32).copy(), updated_at=row[4], text_vectors=texts)

    # ------------------------------------------------------------ search

    def search(self, tenant: str, collection: str, query: VectorQuery) -> SearchPage:
        with self._lock, self._snapshot():
            dim, _ = self._dimensions(tenant, collection)
            q = _checked(query.vector, dim, "query vector")
            if self._approximate(tenant, collection):
                return self._ann_search(tenant, collection, ("image",), q, query.filter, query.min_score,
                                        query.exclude_ids, query.limit, query.offset)
            matrix = self._matrix(tenant, collection)
            return self._rank(tenant, collection, matrix, matrix.live @ q, query.filter, query.min_score,
                              query.exclude_ids, query.limit, query.offset)

    def text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage:
        if query.vector is not None:
            return self._semantic_text_search(tenant, collection, query)
        terms = re.findall(r"\w+", query.text.lower())[:64]
        if not terms:
            raise BadRequest("query has no searchable words")
        columns = " ".join(f for f in TEXT_FIELDS if f in query.fields)
        match = "{" + columns + "}: (" + " OR ".join(f'"{t}"' for t in terms) + ")"
        where, params = self._where(tenant, collection, query.filter)
        with self._lock, self._snapshot():
            self._dimensions(tenant, collection)
            base = (f" FROM items_text JOIN items ON items.pk = items_text.rowid"
                    f" WHERE items_text MATCH ? AND {where}")
            total = self._db.execute("SELECT count(*)" + base, (match, *params)).fetchone()[0]
            rows = self._db.execute(
                "SELECT items.id, -bm25(items_text), items.metadata, items.image_key" + base +
                " ORDER BY bm25(items_text), items.id LIMIT ? OFFSET ?",
                (match, *params, query.limit, query.offset),
            ).fetchall()
        hits = [Hit(id=r[0], score=float(r[1]), metadata=json.loads(r[2]), image_key=r[3]) for r in rows]
        return SearchPage(hits=hits, total=total)

    def _semantic_text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage:
        with self._lock, self._snapshot():
            _, text_dim = self._dimensions(tenant, collection)
            if text_dim is None:
                raise BadRequest("this collection has no text embeddings")
            q = _checked(query.vector, text_dim, "query vector")
            floor = -1.0 if query.min_score is None else query.min_score
            if self._approximate(tenant, collection):
                return self._ann_search(tenant, collection, tuple(query.fields), q, query.filter, floor,
                                        frozenset(), query.limit, query.offset)
            matrix = self._matrix(tenant, collection)
            n = len(matrix.ids)
            scores = np.full(n, -np.inf, dtype=np.float32)
            for field in query.fields:
                if field in matrix.text:
                    field_scores = np.where(matrix.has_text[field][:n], matrix.text[field][:n] @ q, -np.inf)
                    np.maximum(scores, field_scores, out=scores)
            return self._rank(tenant, collection, matrix, scores, query.filter, floor, frozenset(),
                              query.limit, query.offset)

    def _rank(self, tenant: str, collection: str, matrix: _Matrix, scores: np.ndarray, node: Filter | None,
              min_score: float | None, exclude: frozenset[str], limit: int, offset: int) -> SearchPage:
        """Filter, cut off, exclude and page ``scores`` (aligned with the matrix rows)."""
        keep = np.ones(scores.shape[0], dtype=bool)
        if node is not None:
            allowed = np.fromiter((matrix.position[i] for i in self._filtered(tenant, collection, node)
                                   if i in matrix.position), dtype=np.int64)
            keep[:] = False
            keep[allowed] = True
        if min_score is not None:
            keep &= scores >= min_score
        for excluded in exclude:
            pos = matrix.position.get(excluded)
            if pos is not None:
                keep[pos] = False
        ids = matrix.ids
        candidates = None if keep.all() else np.nonzero(keep)[0]
        ranked, total = top_k(scores, offset + limit, ids.__getitem__, candidates)
        chosen = [ids[r] for r in ranked[offset:]]
        meta = self._metadata(tenant, collection, chosen)
        hits = [Hit(id=i, score=float(scores[matrix.position[i]]), metadata=meta[i][0], image_key=meta[i][1])
                for i in chosen]
        return SearchPage(hits=hits, total=total)

    def facets(self, tenant: str, collection: str, fields: Sequence[str], filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        where, params = self._where(tenant, collection, filter)
        out: dict[str, list[tuple[str, int]]] = {}
        with self._lock:
            self._dimensions(tenant, collection)
            for field in fields:
                rows = self._db.execute(
                    "SELECT j.value, count(DISTINCT items.pk) AS n FROM items, json_each(items.metadata, ?) j"
                    f" WHERE {where} AND j.type IN ('text', 'integer')"
                    " GROUP BY j.value ORDER BY n DESC, j.value LIMIT ?",
                    (_json_path(field), *params, size),
                ).fetchall()
                out[field] = [(str(v), int(n)) for v, n in rows]
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ internals

    def _tx(self, begin: str = "BEGIN IMMEDIATE") -> Any:
        """A write transaction (or, with ``BEGIN``, a read snapshot)."""
        db = self._db

        class _Tx:
            def __enter__(self) -> None:
                db.execute(begin)

            def __exit__(self, exc_type: Any, *_: Any) -> None:
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def _snapshot(self) -> Any:
        """One consistent view for a search: the revision check, the vectors it may reload,
        the filter and the hits' metadata all read the same database state."""
        return self._tx("BEGIN")

    def _dimensions(self, tenant: str, collection: str) -> tuple[int, int | None]:
        """(image dimension, text dimension or None); NotFound for an unknown collection."""
        row = self._db.execute(
            "SELECT dimension, text_dimension FROM collections WHERE tenant = ? AND name = ?", (tenant, collection)
        ).fetchone()
        if not row:
            raise NotFound("Collection not found")
        return int(row[0]), (int(row[1]) if row[1] is not None else None)

    def _next_revision(self) -> int:
        # One counter for every collection, never reset: a collection deleted and created again
        # never reuses a revision that a process still has cached for the old one.
        return self._db.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value").fetchone()[0]

    def _revision(self, tenant: str, collection: str) -> int:
        return int(self._db.execute("SELECT revision FROM collections WHERE tenant = ? AND name = ?",
                                    (tenant, collection)).fetchone()[0])

    def _set_revision(self, tenant: str, collection: str, revision: int) -> None:
        self._db.execute("UPDATE collections SET revision = ? WHERE tenant = ? AND name = ?",
                         (revision, tenant, collection))

    def _count(self, tenant: str, collection: str, revision: int) -> int:
        """Items in the collection at ``revision``: from the cached vectors or the count cache
        when they are current (counting 1M rows in SQLite costs ~50 ms), else from SQLite."""
        cached = self._cache.get((tenant, collection))
        if cached is not None and cached.revision == revision:
            return len(cached.ids)
        known = self._counts.get((tenant, collection))
        if known is not None and known[0] == revision:
            return known[1]
        n = int(self._db.execute("SELECT count(*) FROM items WHERE tenant = ? AND collection = ?",
                                 (tenant, collection)).fetchone()[0])
        self._counts[(tenant, collection)] = (revision, n)
        return n

    def _matrix(self, tenant: str, collection: str) -> _Matrix:
        """The cached vectors, reloaded when another process changed the collection."""
        key = (tenant, collection)
        row = self._db.execute(
            "SELECT revision, dimension, text_dimension FROM collections WHERE tenant = ? AND name = ?", key
        ).fetchone()
        revision, dim, text_dim = int(row[0]), int(row[1]), row[2]
        cached = self._cache.get(key)
        if cached is not None and cached.revision == revision:
            return cached
        rows = self._db.execute(
            "SELECT pk, id, vector FROM items WHERE tenant = ? AND collection = ? ORDER BY pk", key
        ).fetchall()
        capacity = max(16, len(rows))
        vectors = np.empty((capacity, dim), dtype=np.float32)
        for n, (_, _, blob) in enumerate(rows):
            vectors[n] = np.frombuffer(blob, dtype=np.float32)
        ids = [r[1] for r in rows]
        text: dict[str, np.ndarray] = {}
        has_text: dict[str, np.ndarray] = {}
        if text_dim is not None:
            row_of = {pk: n for n, (pk, _, _) in enumerate(rows)}
            text = {f: np.zeros((capacity, int(text_dim)), dtype=np.float32) for f in TEXT_FIELDS}
            has_text = {f: np.zeros(capacity, dtype=bool) for f in TEXT_FIELDS}
            for pk, field, blob in self._db.execute(
                    "SELECT t.pk, t.field, t.vector FROM text_vectors t JOIN items i ON i.pk = t.pk"
                    " WHERE i.tenant = ? AND i.collection = ?", key):
                if field in text:
                    text[field][row_of[pk]] = np.frombuffer(blob, dtype=np.float32)
                    has_text[field][row_of[pk]] = True
        matrix = _Matrix(revision=revision, ids=ids, vectors=vectors,
                         position={i: n for n, i in enumerate(ids)}, text=text, has_text=has_text)
        self._cache[key] = matrix
        return matrix

    # ------------------------------------------------------------ approximate search

    def _approximate(self, tenant: str, collection: str) -> bool:
        minimum = self.options.ann_min_items
        return (bool(minimum) and ann.AVAILABLE
                and self._count(tenant, collection, self._revision(tenant, collection)) >= minimum)

    def optimize(self, tenant: str, collection: str) -> dict[str, int]:
        """Build the approximate snapshots of a large collection now (``lookalike ingest``
        does at its end), instead of on its first search; {space: vectors}."""
        with self._lock:
            if not self._approximate(tenant, collection):
                return {}
            _, text_dim = self._dimensions(tenant, collection)
        spaces = ["image", *(TEXT_FIELDS if text_dim is not None else ())]
        return {space: self._build(tenant, collection, space, wait=True) or 0 for space in spaces
                if self._stale(tenant, collection, space)}

    def _stale(self, tenant: str, collection: str, space: str) -> bool:
        """Whether a space has no snapshot, or more writes and deletes since it than the
        rebuild limit allows."""
        with self._lock:
            row = self._db.execute("SELECT revision, items FROM ann_snapshots"
                                   " WHERE tenant = ? AND collection = ? AND space = ?",
                                   (tenant, collection, space)).fetchone()
            if row is None:
                return True
            where, _ = self._space_sql(space)
            key = (tenant, collection)
            written = self._db.execute(f"SELECT count(*) {where} AND i.vrev > ?", (*key, row[0])).fetchone()[0]
            live = self._db.execute(f"SELECT count(*) {where}", key).fetchone()[0]
        stale = written + max(0, int(row[1]) - (live - written))
        return stale > max(self.options.ann_rebuild_min, self.options.ann_rebuild_fraction * int(row[1]))

    def _space_sql(self, space: str) -> tuple[str, str]:
        """(FROM ... WHERE clause over the space's vectors, the vector column) for ``space``."""
        if space == "image":
            return "FROM items i WHERE i.tenant = ? AND i.collection = ?", "i.vector"
        assert space in TEXT_FIELDS  # a fixed name, so it may be spelled into the SQL
        return ("FROM text_vectors t JOIN items i ON i.pk = t.pk WHERE i.tenant = ? AND i.collection = ?"
                f" AND t.field = '{space}'"), "t.vector"

    def _build(self, tenant: str, collection: str, space: str, wait: bool, first: bool = False) -> int | None:
        """Build and record a snapshot of one space from its own connection; None when another
        process holds the build lock (and ``wait`` is off) or the collection went away. With
        ``first``, a snapshot another process built while this one waited is kept."""
        lock = self.ann_dir / f".{_digest(tenant, collection, space)}.lock"
        with ann.build_lock(lock, wait) as taken:
            if not taken:
                return None
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                if first:
                    built = db.execute("SELECT items FROM ann_snapshots WHERE tenant = ? AND collection = ?"
                                       " AND space = ?", (tenant, collection, space)).fetchone()
                    if built is not None:
                        return int(built[0])
                db.execute("BEGIN")  # one snapshot of the database for the whole build
                row = db.execute("SELECT revision, dimension, text_dimension, created_at FROM collections"
                                 " WHERE tenant = ? AND name = ?", (tenant, collection)).fetchone()
                if row is None:
                    return None
                revision, created_at = int(row[0]), row[3]
                dim = int(row[1] if space == "image" else row[2])
                where, column = self._space_sql(space)
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
                        yield (np.array([r[0] for r in rows], dtype=np.int64),
                               _stacked(rows, dim))

                name = f"{_digest(tenant, collection, space)}-{revision}-{uuid.uuid4().hex[:8]}.faiss"
                self.ann_dir.mkdir(parents=True, exist_ok=True)
                count = ann.build(self.ann_dir / name, dim, len(pks), sample, chunks())
                db.execute("COMMIT")
                db.execute("BEGIN IMMEDIATE")
                alive = db.execute("SELECT created_at FROM collections WHERE tenant = ? AND name = ?",
                                   key).fetchone()
                old = db.execute("SELECT file FROM ann_snapshots WHERE tenant = ? AND collection = ? AND space = ?",
                                 (*key, space)).fetchone()
                if alive is None or alive[0] != created_at:
                    db.execute("ROLLBACK")
                    (self.ann_dir / name).unlink(missing_ok=True)
                    return None
                db.execute("INSERT OR REPLACE INTO ann_snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (*key, space, name, revision, count, time.time()))
                db.execute("COMMIT")
                if old and old[0] != name:
                    (self.ann_dir / old[0]).unlink(missing_ok=True)  # processes that mapped it keep it
                return count
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                db.close()

    def _ann_state(self, tenant: str, collection: str, space: str) -> _AnnState | None:
        """The space's snapshot and this process's delta, current as of the search's
        transaction; builds the first snapshot (waiting for it), starts later rebuilds in
        the background."""
        key = (tenant, collection, space)
        row = self._db.execute("SELECT file, revision, items FROM ann_snapshots"
                               " WHERE tenant = ? AND collection = ? AND space = ?", key).fetchone()
        if row is None:
            if self._count(tenant, collection, self._revision(tenant, collection)) > SYNC_BUILD_MAX:
                # Too long to build inside a request (a worker is stopped at its timeout and
                # would start over): build in the background, and ask the caller to come back.
                self._rebuild_in_background(key)
                raise BackendUnavailable("this collection's search index is being built; retry in a minute")
            if self._build(tenant, collection, space, wait=True, first=True) is None:
                return None
            # The search's transaction predates the new row: read it on a fresh one.
            with sqlite3.connect(self.path, timeout=30) as fresh:
                row = fresh.execute("SELECT file, revision, items FROM ann_snapshots"
                                    " WHERE tenant = ? AND collection = ? AND space = ?", key).fetchone()
            if row is None:
                return None
        state = self._ann.get(key)
        if state is None or state.snapshot.path.name != row[0]:
            snapshot = ann.Snapshot.open(self.ann_dir / row[0], int(row[1]), int(row[2]))
            state = _AnnState(snapshot=snapshot, delta=ann.Delta.empty(snapshot))
            self._ann[key] = state
        revision = self._revision(tenant, collection)
        if state.delta.revision < revision:
            where, column = self._space_sql(space)
            rows = self._db.execute(f"SELECT i.pk, {column} {where} AND i.vrev > ?",
                                    (tenant, collection, state.delta.revision)).fetchall()
            if rows:
                dim = state.snapshot.index.d
                state.delta.add(np.array([r[0] for r in rows], dtype=np.int64),
                                _stacked(rows, dim))
            state.delta.revision = revision
        count = self._count(tenant, collection, revision)
        stale = len(state.delta.pks) + max(0, state.snapshot.count - (count - len(state.delta.pks)))
        limit = max(self.options.ann_rebuild_min, self.options.ann_rebuild_fraction * state.snapshot.count)
        if stale > limit:
            self._rebuild_in_background(key)
        return state

    def _rebuild_in_background(self, key: tuple[str, str, str]) -> None:
        if key in self._building:
            return
        self._building.add(key)

        def rebuild() -> None:
            try:
                self._build(*key, wait=False)
            finally:
                self._building.discard(key)

        threading.Thread(target=rebuild, daemon=True, name="lookalike-ann-build").start()

    def _ann_search(self, tenant: str, collection: str, spaces: tuple[str, ...], q: np.ndarray,
                    node: Filter | None, min_score: float | None, exclude: frozenset[str], limit: int,
                    offset: int) -> SearchPage:
        """Candidates from each space's IVF, rescored with their float32 vectors from SQLite
        (the best over the spaces, as the exact path scores text), then cut, excluded, ordered
        by (score desc, id) and paged like the exact path."""
        count = self._count(tenant, collection, self._revision(tenant, collection))
        allowed = None if node is None else np.array(self._filtered(tenant, collection, node, "pk"), dtype=np.int64)
        pool = count if allowed is None else len(allowed)
        if pool == 0:
            return SearchPage(hits=[], total=0)
        states = [(space, self._ann_state(tenant, collection, space)) for space in spaces]
        k = max(100, self.options.ann_candidates * (offset + limit + len(exclude)))
        while True:
            found: list[np.ndarray] = []
            for _, state in states:
                if state is None:
                    continue
                nprobe = self.options.ann_nprobe
                if allowed is not None:  # a selective filter visits more lists, up to all (bench/ann.py)
                    nprobe = math.ceil(nprobe * math.sqrt(count / len(allowed)))
                found.append(ann.search(state.snapshot, state.delta, q, k, nprobe, allowed))
            candidates = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
            scored = self._rescore(tenant, collection, spaces, candidates, q)
            passing = [(i, sc) for i, sc in scored if (min_score is None or sc >= min_score) and i not in exclude]
            if min_score is None or len(passing) < len(scored) or k >= min(pool, 20_000):
                break
            k *= 4  # every candidate passed min_score: more may pass beyond them
        passing.sort(key=lambda hit: (-hit[1], hit[0]))
        if min_score is not None:
            total = len(passing)  # within the approximate index's recall
        else:
            total = pool - self._excluded(tenant, collection, exclude, allowed)
        chosen = passing[offset:offset + limit]
        meta = self._metadata(tenant, collection, [i for i, _ in chosen])
        return SearchPage(hits=[Hit(id=i, score=sc, metadata=meta[i][0], image_key=meta[i][1]) for i, sc in chosen],
                          total=total)

    def _excluded(self, tenant: str, collection: str, exclude: frozenset[str], allowed: np.ndarray | None) -> int:
        """How many of ``exclude`` are in the pool the search ranks."""
        if not exclude:
            return 0
        marks = ",".join("?" * len(exclude))
        pks = [r[0] for r in self._db.execute(
            f"SELECT pk FROM items WHERE tenant = ? AND collection = ? AND id IN ({marks})",
            (tenant, collection, *exclude))]
        return len(pks) if allowed is None else int(np.isin(pks, allowed).sum())

    def _rescore(self, tenant: str, collection: str, spaces: tuple[str, ...], pks: np.ndarray,
                 q: np.ndarray) -> list[tuple[str, float]]:
        """(id, exact cosine) of the candidates SQLite still has: the best over ``spaces``."""
        best: dict[str, float] = {}
        for start in range(0, len(pks), 900):
            part = pks[start:start + 900].tolist()
            marks = ",".join("?" * len(part))
            if spaces == ("image",):
                # "+": look the pks up by rowid, never by scanning the (tenant, collection) index.
                rows = self._db.execute(f"SELECT id, vector FROM items WHERE pk IN ({marks})"
                                        " AND +tenant = ? AND +collection = ?", (*part, tenant, collection)).fetchall()
            else:
                fields = ",".join("?" * len(spaces))
                rows = self._db.execute(
                    f"SELECT i.id, t.vector FROM text_vectors t JOIN items i ON i.pk = t.pk WHERE t.pk IN ({marks})"
                    f" AND t.field IN ({fields}) AND +i.tenant = ? AND +i.collection = ?",
                    (*part, *spaces, tenant, collection)).fetchall()
            if not rows:
                continue
            matrix = _stacked(rows, -1)
            for (item_id, _), score in zip(rows, (matrix @ q).tolist(), strict=True):
                if score > best.get(item_id, -math.inf):
                    best[item_id] = score
        return list(best.items())

    def _where(self, tenant: str, collection: str, node: Filter | None) -> tuple[str, list[Any]]:
        params: list[Any] = [tenant, collection]
        sql = "items.tenant = ? AND items.collection = ?"
        if node is not None:
            sql += " AND items.pk IN (" + _compile(node, tenant, collection, params) + ")"
        return sql, params

    def _filtered(self, tenant: str, collection: str, node: Filter, column: str = "id") -> list[Any]:
        """The ``id`` (or ``pk``) of every item that passes ``node``, from the field index."""
        params: list[Any] = []
        sets = _compile(node, tenant, collection, params)
        if column == "pk":
            return [r[0] for r in self._db.execute(sets, params)]
        return [r[0] for r in self._db.execute(f"SELECT items.{column} FROM items WHERE items.pk IN ({sets})",
                                                params)]

    def _backfill_fields(self) -> None:
        """Index the metadata of items stored before the field index existed (once)."""
        if self._db.execute("SELECT 1 FROM counters WHERE name = 'fields_indexed'").fetchone():
            return
        with self._tx():
            if not self._db.execute("SELECT 1 FROM counters WHERE name = 'fields_indexed'").fetchone():
                self._db.execute("DELETE FROM item_fields")
                for pk, tenant, collection, metadata in self._db.execute(
                        "SELECT pk, tenant, collection, metadata FROM items").fetchall():
                    self._db.executemany("INSERT INTO item_fields (pk, tenant, collection, key, text, num, flag)"
                                         " VALUES (?, ?, ?, ?, ?, ?, ?)",
                                         _field_rows(pk, tenant, collection, json.loads(metadata)))
                self._db.execute("INSERT INTO counters VALUES ('fields_indexed', 1)")

    def _metadata(self, tenant: str, collection: str, ids: list[str]) -> dict[str, tuple[dict, str | None]]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(
            f"SELECT id, metadata, image_key FROM items WHERE tenant = ? AND collection = ? AND id IN ({marks})",
            (tenant, collection, *ids),
        ).fetchall()
        return {r[0]: (json.loads(r[1]), r[2]) for r in rows}


def _info(row: tuple) -> CollectionInfo:
    return CollectionInfo(name=row[0], model_id=row[1], dimension=int(row[2]), settings=json.loads(row[3]),
                          status=row[4], created_at=float(row[5]), item_count=int(row[6]),
                          text_model_id=row[7], text_dimension=row[8])


def _checked(vector: Any, dim: int | None, what: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if dim is None or v.shape[0] != dim:
        raise BadRequest(f"{what} dimension {v.shape[0]} does not match the collection's {dim}")
    return v


def _json_path(field: str) -> str:
    return '$."' + field.replace('"', "") + '"'


def _field_rows(pk: int, tenant: str, collection: str, metadata: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = []
    for key, value in metadata.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool):
                rows.append((pk, tenant, collection, key, None, None, int(v)))
            elif isinstance(v, (int, float)):
                rows.append((pk, tenant, collection, key, None, float(v), None))
            elif isinstance(v, str):
                rows.append((pk, tenant, collection, key, v, None, None))
    return rows


_FIELDS = "SELECT pk FROM item_fields WHERE tenant = ? AND collection = ? AND key = ?"


def _compile(node: Filter, tenant: str, collection: str, params: list[Any]) -> str:
    """Filter AST -> one SELECT of the passing items' pks over the field index, with the
    semantics of ``filters.matches``: And is INTERSECT, Or UNION, Not EXCEPT.

    Each node is a common table expression naming its children's, so the statement nests one
    level whatever the filter's depth: nested subqueries overflowed SQLite's parser stack at
    about ten levels, within the documented depth of 32."""
    tables: list[str] = []
    own: list[Any] = []

    def table(sql: str, values: Sequence[Any]) -> str:
        name = f"f{len(tables)}"
        tables.append(f"{name}(pk) AS ({sql})")
        own.extend(values)
        return name

    def emit(n: Filter) -> str:
        if isinstance(n, (Term, Range)):
            values: list[Any] = []
            return table(_leaf(n, tenant, collection, values), values)
        if isinstance(n, (And, Or)):
            if not n.items:
                return table(_EVERY, (tenant, collection)) if isinstance(n, And) else table(
                    "SELECT pk FROM items WHERE 0", ())
            names = [emit(c) for c in n.items]
            joiner = " INTERSECT " if isinstance(n, And) else " UNION "
            return table(joiner.join(f"SELECT pk FROM {name}" for name in names), ())
        if isinstance(n, Not):
            child = emit(n.item)
            return table(f"{_EVERY} EXCEPT SELECT pk FROM {child}", (tenant, collection))
        raise TypeError(f"unknown filter node {n!r}")

    root = emit(node)
    params.extend(own)
    return f"WITH {', '.join(tables)} SELECT pk FROM {root}"


_EVERY = "SELECT pk FROM items WHERE tenant = ? AND collection = ?"


def _leaf(node: Term | Range, tenant: str, collection: str, params: list[Any]) -> str:
    if isinstance(node, Term):
        value = node.value
        params.extend((tenant, collection, node.field))
        if isinstance(value, bool):
            params.append(int(value))
            return _FIELDS + " AND flag = ?"
        if isinstance(value, (int, float)):
            params.append(float(value))
            return _FIELDS + " AND num = ?"
        number = as_number(value)
        params.append(value)
        if number is None:
            return _FIELDS + " AND text = ?"
        params.extend((tenant, collection, node.field, number))
        return f"{_FIELDS} AND text = ? UNION {_FIELDS} AND num = ?"
    params.extend((tenant, collection, node.field))
    sql = _FIELDS + " AND num IS NOT NULL"
    if node.lower is not None:
        sql += " AND num >= ?"
        params.append(node.lower)
    if node.upper is not None:
        sql += " AND num <= ?"
        params.append(node.upper)
    return sql


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    grown = np.zeros((max(16, array.shape[0] * 2), *array.shape[1:]), dtype=array.dtype)
    grown[:rows] = array[:rows]
    return grown


def _matrix_put(m: _Matrix, item_id: str, vector: np.ndarray, texts: dict[str, np.ndarray]) -> None:
    pos = m.position.get(item_id)
    if pos is None:
        pos = len(m.ids)
        if pos >= m.vectors.shape[0]:
            m.vectors = _grow(m.vectors, pos)
            m.text = {f: _grow(a, pos) for f, a in m.text.items()}
            m.has_text = {f: _grow(a, pos) for f, a in m.has_text.items()}
        m.ids.append(item_id)
        m.position[item_id] = pos
    m.vectors[pos] = vector
    for field in m.text:
        m.has_text[field][pos] = field in texts
        if field in texts:
            m.text[field][pos] = texts[field]


def _matrix_remove(m: _Matrix, item_id: str) -> None:
    pos = m.position.pop(item_id, None)
    if pos is None:
        return
    last = len(m.ids) - 1
    if pos != last:  # swap the last row into the hole
        moved = m.ids[last]
        m.ids[pos] = moved
        m.vectors[pos] = m.vectors[last]
        for field in m.text:
            m.text[field][pos] = m.text[field][last]
            m.has_text[field][pos] = m.has_text[field][last]
        m.position[moved] = pos
    for field in m.text:
        m.has_text[field][last] = False
    m.ids.pop()


@dataclass
class _AnnState:
    snapshot: ann.Snapshot
    delta: ann.Delta


def _stacked(rows: Sequence[tuple[Any, bytes]], dim: int) -> np.ndarray:
    """The float32 vector blobs in the second column of ``rows``, as one (n, dim) matrix."""
    return np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]

"""The embedded default search backend: SQLite for metadata, facets and text; numpy for vectors.

Exact cosine search (one matrix-vector product) is fast enough for 100k items per
collection on one core. Vectors are persisted in SQLite next to their metadata and cached
in memory per collection; a per-collection revision counter lets several processes (the
server and a CLI ingest) share one database and reload only when another one wrote.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

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
)
from lookalike.errors import BadRequest, Conflict, NotFound
from lookalike.filters import And, Filter, Not, Or, Range, Term, as_number
from lookalike.ranking import top_k

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
CREATE INDEX IF NOT EXISTS item_fields_text ON item_fields (tenant, collection, key, text) WHERE text IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_num ON item_fields (tenant, collection, key, num) WHERE num IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_flag ON item_fields (tenant, collection, key, flag) WHERE flag IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_pk ON item_fields (pk);
INSERT OR IGNORE INTO counters VALUES ('revision', (SELECT coalesce(max(revision), 0) FROM collections));
"""
# Columns added after the first release; databases created before get them on open.
_MIGRATIONS = (
    ("collections", "text_model_id", "ALTER TABLE collections ADD COLUMN text_model_id TEXT"),
    ("collections", "text_dimension", "ALTER TABLE collections ADD COLUMN text_dimension INTEGER"),
)


_COUNT_SQL = "(SELECT count(*) FROM items i WHERE i.tenant = c.tenant AND i.collection = c.name)"
_INFO_SQL = ("SELECT name, model_id, dimension, settings, status, created_at, {count},"
             " text_model_id, text_dimension, revision FROM collections c")


class LocalIndexOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path | None = None  # defaults to <home>/index.sqlite


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
    supports_text_search = True

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
        self._backfill_fields()
        self._cache: dict[tuple[str, str], _Matrix] = {}

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
            cached = self._cache.get((tenant, name))
            if cached is not None and cached.revision == row[9]:
                return _info((*row[:6], len(cached.ids), *row[7:]))
            row = self._db.execute(
                _INFO_SQL.format(count=_COUNT_SQL) + " WHERE tenant = ? AND name = ?", (tenant, name),
            ).fetchone()
        return _info(row) if row else None

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        with self._lock:
            rows = self._db.execute(
                _INFO_SQL.format(count=_COUNT_SQL) + " WHERE tenant = ? ORDER BY name", (tenant,),
            ).fetchall()
        return [_info(r) for r in rows]

    def delete_collection(self, tenant: str, name: str) -> bool:
        with self._lock, self._tx():
            for table, key in (("items_text", "rowid"), ("text_vectors", "pk")):
                self._db.execute(
                    f"DELETE FROM {table} WHERE {key} IN (SELECT pk FROM items WHERE tenant = ? AND collection = ?)",
                    (tenant, name),
                )
            self._db.execute("DELETE FROM items WHERE tenant = ? AND collection = ?", (tenant, name))
            self._db.execute("DELETE FROM item_fields WHERE tenant = ? AND collection = ?", (tenant, name))
            cur = self._db.execute("DELETE FROM collections WHERE tenant = ? AND name = ?", (tenant, name))
            self._cache.pop((tenant, name), None)
            return cur.rowcount > 0

    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None:
        with self._lock:
            self._db.execute("UPDATE collections SET status = ? WHERE tenant = ? AND name = ?", (status, tenant, name))

    # ------------------------------------------------------------ items

    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> None:
        if not items:
            return
        with self._lock:
            with self._tx():
                # The revision is read under the write lock: a write another process made before
                # we got the lock is loaded first, never overwritten by our bump.
                dim, text_dim = self._dimensions(tenant, collection)
                rows = [(item, _checked(item.vector, dim, "vector"),
                         {f: _checked(v, text_dim, "text vector") for f, v in item.text_vectors.items()
                          if f in TEXT_FIELDS})
                        for item in items]
                matrix = self._matrix(tenant, collection)
                for item, v, texts in rows:
                    cur = self._db.execute(
                        "INSERT INTO items (tenant, collection, id, metadata, image_key, vector, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, collection, id) DO UPDATE SET"
                        " metadata = excluded.metadata, image_key = excluded.image_key,"
                        " vector = excluded.vector, updated_at = excluded.updated_at RETURNING pk",
                        (tenant, collection, item.id, json.dumps(item.metadata), item.image_key,
                         v.tobytes(), item.updated_at),
                    )
                    pk = cur.fetchone()[0]
                    self._db.execute("DELETE FROM items_text WHERE rowid = ?", (pk,))
                    self._db.execute("DELETE FROM text_vectors WHERE pk = ?", (pk,))
                    self._db.execute("DELETE FROM item_fields WHERE pk = ?", (pk,))
                    self._db.executemany(
                        "INSERT INTO item_fields (pk, tenant, collection, key, text, num, flag)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)", _field_rows(pk, tenant, collection, item.metadata))
                    text = [_text(item.metadata.get(f)) for f in TEXT_FIELDS]
                    if any(text):
                        self._db.execute("INSERT INTO items_text (rowid, caption, prompt) VALUES (?, ?, ?)",
                                         (pk, *text))
                    for field, tv in texts.items():
                        self._db.execute("INSERT INTO text_vectors (pk, field, vector) VALUES (?, ?, ?)",
                                         (pk, field, tv.tobytes()))
                revision = self._bump(tenant, collection)
            # The cache changes only once the commit succeeded (an exception skips this).
            for item, v, texts in rows:
                _matrix_put(matrix, item.id, v, texts)
            matrix.revision = revision

    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        with self._lock:
            with self._tx():
                self._dimensions(tenant, collection)
                matrix = self._matrix(tenant, collection)
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
                revision = self._bump(tenant, collection) if removed else matrix.revision
            for item_id in ids:
                _matrix_remove(matrix, item_id)
            matrix.revision = revision
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
            matrix = self._matrix(tenant, collection)
            n = len(matrix.ids)
            scores = np.full(n, -np.inf, dtype=np.float32)
            for field in query.fields:
                if field in matrix.text:
                    field_scores = np.where(matrix.has_text[field][:n], matrix.text[field][:n] @ q, -np.inf)
                    np.maximum(scores, field_scores, out=scores)
            floor = -1.0 if query.min_score is None else query.min_score
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

    def _bump(self, tenant: str, collection: str) -> int:
        revision = self._next_revision()
        self._db.execute("UPDATE collections SET revision = ? WHERE tenant = ? AND name = ?",
                         (revision, tenant, collection))
        return revision

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


def _text(value: Any) -> str:
    if value is None:
        return ""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


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
    semantics of ``filters.matches``: And is INTERSECT, Or UNION, Not EXCEPT."""
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
    if isinstance(node, Range):
        params.extend((tenant, collection, node.field))
        sql = _FIELDS + " AND num IS NOT NULL"
        if node.lower is not None:
            sql += " AND num >= ?"
            params.append(node.lower)
        if node.upper is not None:
            sql += " AND num <= ?"
            params.append(node.upper)
        return sql
    every = "SELECT pk FROM items WHERE tenant = ? AND collection = ?"
    if isinstance(node, (And, Or)):
        if not node.items:
            if isinstance(node, And):
                params.extend((tenant, collection))
                return every
            return "SELECT pk FROM items WHERE 0"
        joiner = " INTERSECT " if isinstance(node, And) else " UNION "
        return joiner.join(f"SELECT pk FROM ({_compile(n, tenant, collection, params)})" for n in node.items)
    if isinstance(node, Not):
        params.extend((tenant, collection))
        return f"{every} EXCEPT SELECT pk FROM ({_compile(node.item, tenant, collection, params)})"
    raise TypeError(f"unknown filter node {node!r}")


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

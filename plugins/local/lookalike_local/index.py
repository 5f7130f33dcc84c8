"""The embedded default search backend: SQLite for metadata, facets and text; numpy for vectors.

SQLite holds everything (vectors included) and is the source of truth (``schema``). A
per-collection revision counter lets several processes (the server and a CLI ingest) share one
database and reload only when another one wrote.

This module keeps the collections, the item writes and the exact search: collections below
``ann_min_items`` are searched by one matrix-vector product over their float32 vectors cached
in memory (``matrix``), the reference the approximate path is tested against. Larger ones are
searched through their approximate snapshots (``snapshots``). Filters compile to SQL over the
field index (``query``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
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
from lookalike.errors import BadRequest, Conflict, NotFound
from lookalike.filters import Filter
from lookalike.ranking import top_k
from lookalike_local import ann, query
from lookalike_local.matrix import Matrix
from lookalike_local.schema import open_database
from lookalike_local.snapshots import Snapshots, SnapshotSettings

# Filters' passing sets kept by the approximate path (_passing_pks): at most this many, and
# this many item keys in all (8 bytes each).
PASSING_SETS = 64
PASSING_PKS = 4_000_000

_COUNT_SQL = "(SELECT count(*) FROM items i WHERE i.tenant = c.tenant AND i.collection = c.name)"
_ITEM_COLUMNS = "id, metadata, image_key, vector, updated_at, pk"  # what _as_items reads
_INFO_SQL = ("SELECT name, model_id, dimension, settings, status, created_at, {count},"
             " text_model_id, text_dimension, revision FROM collections c")


class LocalIndexOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path | None = None  # defaults to <home>/index.sqlite
    # Collections with at least this many items are searched approximately: the two paths
    # cost the same there (2.3 ms, bench/ann_choice.py); 0 turns the approximate index off.
    ann_min_items: int = Field(default=20_000, ge=0)
    # IVF lists visited per query (default: a sixteenth of them, 8 to 16); a filter that passes a
    # share s of the items visits nprobe / sqrt(s), or scores each item when it passes few enough.
    ann_nprobe: int | None = Field(default=None, ge=1, le=4096)
    ann_candidates: int = Field(default=4, ge=1, le=64)  # candidates rescored per result wanted
    # Rebuild a snapshot once the writes and deletes since it pass this share of it (or 5,000).
    ann_rebuild_fraction: float = Field(default=0.1, gt=0, le=10)
    ann_rebuild_min: int = Field(default=5_000, ge=1)



class LocalIndex(SearchBackend):
    Options = LocalIndexOptions
    stores_in_home = True

    def __init__(self, options: LocalIndexOptions | None = None, context: BackendContext | None = None) -> None:
        options = options or LocalIndexOptions()
        home = context.home if context else Path(".lookalike")
        self.path = options.path or home / "index.sqlite"
        self._lock = threading.RLock()
        self._db = open_database(self.path)
        self._cache: dict[tuple[str, str], Matrix] = {}
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}
        self._passing: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()  # _passing_pks
        self.options = options
        self.snapshots = Snapshots(self._db, self.path, SnapshotSettings(
            nprobe=options.ann_nprobe, candidates=options.ann_candidates,
            rebuild_fraction=options.ann_rebuild_fraction, rebuild_min=options.ann_rebuild_min))
        self.ann_dir = self.snapshots.dir

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
            self.snapshots.forget(tenant, name, files)  # after the commit: a kill before it leaves them referenced
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
                    self._db.executemany(query.FIELD_ROW_SQL, query.field_rows(pk, tenant, collection, item.metadata))
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
                        matrix.put(item.id, v, texts)
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
                    matrix.remove(item_id)
                matrix.revision = revision
            else:
                self._cache.pop((tenant, collection), None)
            return removed

    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE tenant = ? AND collection = ? AND id = ?",
                (tenant, collection, item_id),
            ).fetchall()
            items = self._as_items(rows)
        return items[0] if items else None

    def scan_items(self, tenant: str, collection: str, after: str | None = None, limit: int = 500) -> list[Item]:
        # SQLite compares TEXT as UTF-8 bytes (BINARY), which is code point order.
        with self._lock, self._read_view():
            self._dimensions(tenant, collection)  # NotFound for a missing collection
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE tenant = ? AND collection = ? AND id > ? ORDER BY id LIMIT ?",
                (tenant, collection, after or "", max(1, limit)),
            ).fetchall()
            return self._as_items(rows)

    def _as_items(self, rows: list[tuple[Any, ...]]) -> list[Item]:
        """Items from ``_ITEM_COLUMNS`` rows, with their caption / prompt vectors (under the lock)."""
        texts: dict[int, dict[str, np.ndarray]] = {}
        if rows:
            marks = ",".join("?" * len(rows))
            for pk, f, v in self._db.execute(
                    f"SELECT pk, field, vector FROM text_vectors WHERE pk IN ({marks})", [r[5] for r in rows]):
                texts.setdefault(pk, {})[f] = np.frombuffer(v, dtype=np.float32).copy()
        return [Item(id=r[0], metadata=json.loads(r[1]), image_key=r[2], updated_at=r[4],
                     vector=np.frombuffer(r[3], dtype=np.float32).copy(), text_vectors=texts.get(r[5], {}))
                for r in rows]

    # ------------------------------------------------------------ search

    def search(self, tenant: str, collection: str, vq: VectorQuery) -> SearchPage:
        with self._lock, self._read_view():
            dim, _ = self._dimensions(tenant, collection)
            q = _checked(vq.vector, dim, "query vector")
            revision = self._approximate(tenant, collection)
            if revision is not None:
                return self._approximate_search(tenant, collection, revision, ("image",), q, vq.filter,
                                                vq.min_score, vq.exclude_ids, vq.limit, vq.offset)
            matrix = self._matrix(tenant, collection)
            return self._rank(tenant, collection, matrix, matrix.live @ q, vq.filter, vq.min_score,
                              vq.exclude_ids, vq.limit, vq.offset)

    def text_search(self, tenant: str, collection: str, tq: TextQuery) -> SearchPage:
        if tq.vector is not None:
            return self._semantic_text_search(tenant, collection, tq)
        terms = re.findall(r"\w+", tq.text.lower())[:64]
        if not terms:
            raise BadRequest("query has no searchable words")
        columns = " ".join(f for f in TEXT_FIELDS if f in tq.fields)
        match = "{" + columns + "}: (" + " OR ".join(f'"{t}"' for t in terms) + ")"
        where, params = query.where(tenant, collection, tq.filter)
        with self._lock, self._read_view():
            self._dimensions(tenant, collection)
            base = (f" FROM items_text JOIN items ON items.pk = items_text.rowid"
                    f" WHERE items_text MATCH ? AND {where}")
            total = self._db.execute("SELECT count(*)" + base, (match, *params)).fetchone()[0]
            rows = self._db.execute(
                "SELECT items.id, -bm25(items_text), items.metadata, items.image_key" + base +
                " ORDER BY bm25(items_text), items.id LIMIT ? OFFSET ?",
                (match, *params, tq.limit, tq.offset),
            ).fetchall()
        hits = [Hit(id=r[0], score=float(r[1]), metadata=json.loads(r[2]), image_key=r[3]) for r in rows]
        return SearchPage(hits=hits, total=total)

    def _semantic_text_search(self, tenant: str, collection: str, tq: TextQuery) -> SearchPage:
        with self._lock, self._read_view():
            _, text_dim = self._dimensions(tenant, collection)
            if text_dim is None:
                raise BadRequest("this collection has no text embeddings")
            q = _checked(tq.vector, text_dim, "query vector")
            floor = -1.0 if tq.min_score is None else tq.min_score
            revision = self._approximate(tenant, collection)
            if revision is not None:
                return self._approximate_search(tenant, collection, revision, tuple(tq.fields), q, tq.filter,
                                                floor, frozenset(), tq.limit, tq.offset)
            matrix = self._matrix(tenant, collection)
            n = len(matrix.ids)
            scores = np.full(n, -np.inf, dtype=np.float32)
            for field in tq.fields:
                if field in matrix.text:
                    field_scores = np.where(matrix.has_text[field][:n], matrix.text[field][:n] @ q, -np.inf)
                    np.maximum(scores, field_scores, out=scores)
            return self._rank(tenant, collection, matrix, scores, tq.filter, floor, frozenset(),
                              tq.limit, tq.offset)

    def _rank(self, tenant: str, collection: str, matrix: Matrix, scores: np.ndarray, node: Filter | None,
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
        where, params = query.where(tenant, collection, filter)
        out: dict[str, list[tuple[str, int]]] = {}
        with self._lock:
            self._dimensions(tenant, collection)
            for field in fields:
                rows = self._db.execute(
                    "SELECT j.value, count(DISTINCT items.pk) AS n FROM items, json_each(items.metadata, ?) j"
                    f" WHERE {where} AND j.type IN ('text', 'integer')"
                    " GROUP BY j.value ORDER BY n DESC, j.value LIMIT ?",
                    (query.json_path(field), *params, size),
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

    def _read_view(self) -> Any:
        """One consistent read for a search: the revision check, the vectors it may reload,
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

    def _matrix(self, tenant: str, collection: str) -> Matrix:
        """The cached vectors, reloaded when another process changed the collection."""
        key = (tenant, collection)
        row = self._db.execute(
            "SELECT revision, dimension, text_dimension FROM collections WHERE tenant = ? AND name = ?", key
        ).fetchone()
        revision = int(row[0])
        cached = self._cache.get(key)
        if cached is not None and cached.revision == revision:
            return cached
        self._cache[key] = matrix = Matrix.load(self._db, tenant, collection, revision, int(row[1]), row[2])
        return matrix

    # ------------------------------------------------------------ approximate search

    def _approximate(self, tenant: str, collection: str) -> int | None:
        """The collection's revision when it is searched approximately, else None."""
        minimum = self.options.ann_min_items
        if not minimum or not ann.AVAILABLE:
            return None
        revision = self._revision(tenant, collection)
        return revision if self._count(tenant, collection, revision) >= minimum else None

    def optimize(self, tenant: str, collection: str) -> dict[str, int]:
        """Build the approximate snapshots of a large collection now (``lookalike ingest``
        does at its end), instead of on its first search; {space: vectors}."""
        with self._lock:
            if self._approximate(tenant, collection) is None:
                return {}
            _, text_dim = self._dimensions(tenant, collection)
            spaces = ["image", *(TEXT_FIELDS if text_dim is not None else ())]
            stale = [space for space in spaces if self.snapshots.stale(tenant, collection, space)]
        return {space: self.snapshots.build(tenant, collection, space, wait=True) or 0 for space in stale}

    def _approximate_search(self, tenant: str, collection: str, revision: int, spaces: tuple[str, ...],
                            q: np.ndarray, node: Filter | None, min_score: float | None, exclude: frozenset[str],
                            limit: int, offset: int) -> SearchPage:
        allowed = None if node is None else self._passing_pks(tenant, collection, revision, node)
        chosen, total = self.snapshots.search(
            tenant, collection, spaces, q, revision=revision, count=self._count(tenant, collection, revision),
            allowed=allowed, min_score=min_score, exclude=exclude, limit=limit, offset=offset)
        meta = self._metadata(tenant, collection, [i for i, _ in chosen])
        return SearchPage(hits=[Hit(id=i, score=sc, metadata=meta[i][0], image_key=meta[i][1]) for i, sc in chosen],
                          total=total)

    def _passing_pks(self, tenant: str, collection: str, revision: int, node: Filter) -> np.ndarray:
        """The ``pk`` of every item that passes ``node`` at ``revision``, remembered until the
        collection changes: a shop filters by the same few categories again and again, and
        computing a set in SQLite costs 0.3 ms per 1,000 items it holds, more than the
        approximate search itself (bench/peers.py). A revision is never reused, so an entry
        cannot outlive the data it was read from; read-only, as several searches share it."""
        params: list[Any] = []
        sets = query.compile_filter(node, tenant, collection, params)
        key = (tenant, collection, str(revision), sets, repr(params))
        pks = self._passing.get(key)
        if pks is not None:
            self._passing.move_to_end(key)
            return pks
        pks = np.fromiter((r[0] for r in self._db.execute(sets, params)), dtype=np.int64)
        pks.flags.writeable = False
        self._passing[key] = pks
        while len(self._passing) > PASSING_SETS or sum(a.size for a in self._passing.values()) > PASSING_PKS:
            self._passing.popitem(last=False)
        return pks

    def _filtered(self, tenant: str, collection: str, node: Filter) -> list[str]:
        """The id of every item that passes ``node``, from the field index (the approximate path
        takes pks instead: ``_passing_pks``)."""
        params: list[Any] = []
        sets = query.compile_filter(node, tenant, collection, params)
        return [r[0] for r in self._db.execute(f"SELECT items.id FROM items WHERE items.pk IN ({sets})", params)]

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

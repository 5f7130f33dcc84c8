"""The exact path's vectors: one collection's float32 vectors (image, and caption/prompt where
kept) loaded from SQLite into memory, kept in step by each write of this process and reloaded
when another process changed the collection (its revision moved)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lookalike.contracts import TEXT_FIELDS


@dataclass
class Matrix:
    """In-memory vectors of one collection at ``revision``.

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

    @classmethod
    def load(cls, db: sqlite3.Connection, tenant: str, collection: str, revision: int, dim: int,
             text_dim: int | None) -> Matrix:
        key = (tenant, collection)
        rows = db.execute("SELECT pk, id, vector FROM items WHERE tenant = ? AND collection = ? ORDER BY pk",
                          key).fetchall()
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
            for pk, field, blob in db.execute(
                    "SELECT t.pk, t.field, t.vector FROM text_vectors t JOIN items i ON i.pk = t.pk"
                    " WHERE i.tenant = ? AND i.collection = ?", key):
                if field in text:
                    text[field][row_of[pk]] = np.frombuffer(blob, dtype=np.float32)
                    has_text[field][row_of[pk]] = True
        return cls(revision=revision, ids=ids, vectors=vectors, position={i: n for n, i in enumerate(ids)},
                   text=text, has_text=has_text)

    def put(self, item_id: str, vector: np.ndarray, texts: dict[str, np.ndarray]) -> None:
        pos = self.position.get(item_id)
        if pos is None:
            pos = len(self.ids)
            if pos >= self.vectors.shape[0]:
                self.vectors = _grow(self.vectors, pos)
                self.text = {f: _grow(a, pos) for f, a in self.text.items()}
                self.has_text = {f: _grow(a, pos) for f, a in self.has_text.items()}
            self.ids.append(item_id)
            self.position[item_id] = pos
        self.vectors[pos] = vector
        for field in self.text:
            self.has_text[field][pos] = field in texts
            if field in texts:
                self.text[field][pos] = texts[field]

    def remove(self, item_id: str) -> None:
        pos = self.position.pop(item_id, None)
        if pos is None:
            return
        last = len(self.ids) - 1
        if pos != last:  # swap the last row into the hole
            moved = self.ids[last]
            self.ids[pos] = moved
            self.vectors[pos] = self.vectors[last]
            for field in self.text:
                self.text[field][pos] = self.text[field][last]
                self.has_text[field][pos] = self.has_text[field][last]
            self.position[moved] = pos
        for field in self.text:
            self.has_text[field][last] = False
        self.ids.pop()


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    grown = np.zeros((max(16, array.shape[0] * 2), *array.shape[1:]), dtype=array.dtype)
    grown[:rows] = array[:rows]
    return grown


def stacked(rows: Sequence[tuple[Any, bytes]], dim: int) -> np.ndarray:
    """The float32 vector blobs in the second column of ``rows``, as one (n, dim) matrix."""
    return np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)

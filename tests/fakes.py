"""Test doubles, each held to the same contract tests as the real backend it stands in for.

None of them stands in for a vendor's service: they implement Lookalike's own contracts
(``lookalike.contracts``) with the reference semantics (``lookalike.filters.matches``), so that
code is their source. The stand-ins for hosted services are ``tests/fake_marqo.py`` and
``tests/fake_pixlab.py``, which cite their sources at their tops.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
from PIL import Image

from lookalike.contracts import (
    Blob,
    BlobStore,
    CollectionInfo,
    CollectionSpec,
    Embedder,
    Hit,
    Item,
    SearchBackend,
    SearchPage,
    TextQuery,
    VectorQuery,
)
from lookalike.errors import BadRequest, Conflict, NotFound
from lookalike.filters import Filter, facet_keys, matches
from lookalike.hookspecs import hookimpl
from lookalike.ranking import top_k


class ColorHistogramEmbedder(Embedder):
    """Deterministic and fast: a normalised 4x4x4 colour histogram (64-d). Tests only."""

    supports_images = True
    dimension = 64
    model_id = "test/color-histogram"
    batch_size = 4

    def __init__(self, options: object = None, context: object = None) -> None:
        pass

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), 64), dtype=np.float32)
        for i, img in enumerate(images):
            px = np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.int64) // 64
            idx = px[..., 0] * 16 + px[..., 1] * 4 + px[..., 2]
            out[i] = np.bincount(idx.ravel(), minlength=64)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


class MemoryIndex(SearchBackend):
    """In-memory search backend with the reference filter semantics (``filters.matches``)."""


    def __init__(self, options: object = None, context: object = None) -> None:
        self.collections: dict[tuple[str, str], dict] = {}
        self.fail: Callable[[str], None] | None = None  # fault injection: raise from here

    def _get(self, tenant: str, name: str) -> dict:
        if self.fail:
            self.fail("read")
        c = self.collections.get((tenant, name))
        if c is None:
            raise NotFound("Collection not found")
        return c

    def _info(self, tenant: str, name: str) -> CollectionInfo:
        c = self.collections[(tenant, name)]
        s: CollectionSpec = c["spec"]
        return CollectionInfo(name=name, model_id=s.model_id, dimension=s.dimension, item_count=len(c["items"]),
                              settings=dict(s.settings), status=c["status"], created_at=c["created_at"],
                              text_model_id=s.text_model_id, text_dimension=s.text_dimension)

    def create_collection(self, tenant: str, spec: CollectionSpec) -> CollectionInfo:
        if (tenant, spec.name) in self.collections:
            raise Conflict(f"Collection {spec.name!r} already exists")
        self.collections[(tenant, spec.name)] = {"spec": spec, "items": {}, "status": "READY",
                                                 "created_at": time.time()}
        return self._info(tenant, spec.name)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo | None:
        return self._info(tenant, name) if (tenant, name) in self.collections else None

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        return [self._info(t, n) for (t, n) in sorted(self.collections) if t == tenant]

    def delete_collection(self, tenant: str, name: str) -> bool:
        return self.collections.pop((tenant, name), None) is not None

    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None:
        self._get(tenant, name)["status"] = status

    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> list[str]:
        c = self._get(tenant, collection)
        spec: CollectionSpec = c["spec"]
        for item in items:
            if np.asarray(item.vector).reshape(-1).shape[0] != spec.dimension:
                raise BadRequest("vector dimension does not match the collection's")
            for v in item.text_vectors.values():
                if spec.text_dimension is None or np.asarray(v).reshape(-1).shape[0] != spec.text_dimension:
                    raise BadRequest("text vector dimension does not match the collection's")
        if self.fail:
            self.fail("write")
        superseded = []
        for item in items:
            stored = c["items"].get(item.id)
            if stored is not None and stored.updated_at > item.updated_at:
                superseded.append(item.id)
                continue
            c["items"][item.id] = Item(
                id=item.id, vector=np.asarray(item.vector, dtype=np.float32).reshape(-1),
                metadata=dict(item.metadata), image_key=item.image_key, updated_at=item.updated_at,
                text_vectors={f: np.asarray(v, dtype=np.float32).reshape(-1) for f, v in item.text_vectors.items()
                              if f in ("caption", "prompt")})
        return superseded

    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        c = self._get(tenant, collection)
        return sum(c["items"].pop(i, None) is not None for i in ids)

    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None:
        return self._get(tenant, collection)["items"].get(item_id)

    def scan_items(self, tenant: str, collection: str, after: str | None = None, limit: int = 500) -> list[Item]:
        items = self._get(tenant, collection)["items"]
        return [items[i] for i in sorted(i for i in items if after is None or i > after)[:max(1, limit)]]

    def search(self, tenant: str, collection: str, query: VectorQuery) -> SearchPage:
        c = self._get(tenant, collection)
        q = np.asarray(query.vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != c["spec"].dimension:
            raise BadRequest("query dimension does not match the collection's")
        items = [i for i in c["items"].values() if matches(query.filter, i.metadata) and i.id not in query.exclude_ids]
        scores = np.array([float(i.vector @ q) for i in items], dtype=np.float32)
        if query.min_score is not None:
            keep = [n for n, s in enumerate(scores) if s >= query.min_score]
            items, scores = [items[n] for n in keep], scores[keep]
        order, total = top_k(scores, query.offset + query.limit, lambda r: items[r].id)
        page = order[query.offset:]
        return SearchPage(hits=[Hit(items[r].id, float(scores[r]), items[r].metadata, items[r].image_key)
                                for r in page], total=total)

    def text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage:
        c = self._get(tenant, collection)
        if query.vector is not None:
            spec: CollectionSpec = c["spec"]
            q = np.asarray(query.vector, dtype=np.float32).reshape(-1)
            if spec.text_dimension is None or q.shape[0] != spec.text_dimension:
                raise BadRequest("query dimension does not match the collection's text vectors")
            items, found = [], []
            for i in c["items"].values():
                fields = [f for f in query.fields if f in i.text_vectors]
                if fields and matches(query.filter, i.metadata):
                    score = max(float(i.text_vectors[f] @ q) for f in fields)
                    if query.min_score is None or score >= query.min_score:
                        items.append(i)
                        found.append(score)
            scores = np.array(found, dtype=np.float32)
            order, total = top_k(scores, query.offset + query.limit, lambda r: items[r].id)
            return SearchPage(hits=[Hit(items[r].id, float(scores[r]), items[r].metadata, items[r].image_key)
                                    for r in order[query.offset:]], total=total)
        terms = set(re.findall(r"\w+", query.text.lower()))
        if not terms:
            raise BadRequest("query has no searchable words")
        scored = []
        for item in c["items"].values():
            if not matches(query.filter, item.metadata):
                continue
            words = [w for f in query.fields for w in re.findall(r"\w+", str(item.metadata.get(f, "")).lower())]
            score = sum(words.count(t) for t in terms)
            if score:
                scored.append((-score, item.id, item))
        scored.sort(key=lambda s: (s[0], s[1]))
        page = scored[query.offset:query.offset + query.limit]
        return SearchPage(hits=[Hit(i.id, float(-s), i.metadata, i.image_key) for s, _, i in page], total=len(scored))

    def facets(self, tenant: str, collection: str, fields: Sequence[str], filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        c = self._get(tenant, collection)
        out: dict[str, list[tuple[str, int]]] = {}
        for field in fields:
            counts: dict[str, int] = {}
            for item in c["items"].values():
                if not matches(filter, item.metadata):
                    continue
                for key in facet_keys(item.metadata.get(field)):
                    counts[key] = counts.get(key, 0) + 1
            out[field] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
        return out


class MemoryBlobStore(BlobStore):
    """Blobs in a dict, with the same key rules as the filesystem store."""

    def __init__(self, options: object = None, context: object = None) -> None:
        self.blobs: dict[str, Blob] = {}
        self.modified: dict[str, float] = {}

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        self.blobs[key] = Blob(bytes(data), content_type, dict(metadata or {}))
        self.modified[key] = time.time()

    def get(self, key: str) -> Blob:
        if key not in self.blobs:
            raise NotFound("Blob not found")
        return self.blobs[key]

    def delete(self, key: str) -> None:
        self.blobs.pop(key, None)
        self.modified.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self.blobs

    def list_keys(self, prefix: str) -> Iterator[tuple[str, float]]:
        return iter([(k, self.modified[k]) for k in sorted(self.blobs) if k.startswith(prefix)])


class TestPlugin:
    """A plugin defined in the tests, registered like a third-party one."""

    @hookimpl
    def register_embedders(self, register: Callable[[str, type], None]) -> None:
        register("test-color", ColorHistogramEmbedder)

    @hookimpl
    def register_search_backends(self, register: Callable[[str, type], None]) -> None:
        register("memory", MemoryIndex)

    @hookimpl
    def register_blob_stores(self, register: Callable[[str, type], None]) -> None:
        register("memory", MemoryBlobStore)



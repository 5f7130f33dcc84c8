"""The Marqo search backend: a tenant's collections kept in Marqo (Cloud or self-hosted).

Lookalike embeds; Marqo stores and searches. Every call goes through Marqo's official Python
client, py-marqo (``marqo`` on PyPI, 3.18+, which needs Marqo 2.23.1+). Each collection is one
*unstructured* Marqo index created with ``model: no_model`` (vectors are brought, Marqo embeds
nothing) and the ``prenormalized-angular`` space; an item is a document whose
``lookalike_vector`` field is a ``custom_vector``. Searches send the query vector as
``context.tensor`` and filters as Marqo's DSL, compiled from the filter AST
(``lookalike_marqo.query``, which also explains the bounded field layout).

How it maps onto what Marqo offers:

* Scores. Marqo's tensor ``_score`` is Vespa's closeness, 1 / (1 + (1 - cos)), and is
  turned back into cosine similarity, so ``min_score`` and the Visual Layer distances mean
  the same on every backend.
* The collection record (model, dimension, settings, status) is a document with no vector
  in the collection's own index, so deleting the index deletes everything at once.
* Deletes. Marqo counts a delete of a missing document as deleted (Vespa answers 200), so
  ``delete`` looks the ids up first and reports only those that existed.
* Counting. Marqo reports no total for a filtered search. Unfiltered totals come from the
  index stats; filtered ones from an exact (brute force) scan of at most ``scan_limit``
  hits, as do facets, which Marqo cannot aggregate. Beyond ``scan_limit`` counts are capped.
* Keyword search is Marqo's ``LEXICAL`` (BM25) search with ``searchableAttributes`` set to
  the caption/prompt fields asked for (supported by unstructured indexes created by Marqo
  2.13+, which every index this backend creates is), so nothing else in a document matches.
* One vector space per index: caption/prompt vectors (another model, another dimension)
  cannot be kept, so ``supports_text_vectors`` is False and text search is keyword search.
* Concurrent schema changes (a new field, an index being created or deleted) answer 409
  ``OperationConflictError``; those are retried with backoff like 429 and 5xx.

Marqo Cloud (``url`` on ``marqo.ai``) creates and deletes indexes through its control plane
(``/api/v2/indexes``) and serves each index at its own ``marqoEndpoint``, which py-marqo's
Cloud instance mappings find by listing the indexes. Index creation there takes minutes:
``create_collection`` polls the index status for up to ``create_timeout_seconds`` (py-marqo's
own wait has no bound) and otherwise asks the caller to retry. ``inference_type`` is sent
only when set: py-marqo 3 deprecates and ignores it, a ``no_model`` index runs no inference,
and ``marqo.CPU.small`` is deprecated on Cloud, so only the current types are accepted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np

from lookalike.contracts import (
    TEXT_FIELDS,
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
from lookalike.filters import Filter, facet_keys
from lookalike_marqo.client import SERVING, MarqoConnection, MarqoOptions
from lookalike_marqo.query import compile_filter, excluding, filter_fields

__all__ = ["MarqoBackend", "MarqoOptions"]

RECORD_ID = "~lookalike-collection"  # "~" cannot start an item id, so no item can overwrite it
VECTOR_FIELD = "lookalike_vector"
ITEM_FIELD = "lookalike_item"
KIND_FIELD = "lookalike_kind"
TEXT_FIELD = {field: f"lookalike_{field}" for field in TEXT_FIELDS}  # keyword-searchable copies
LAYOUT = 2  # the document layout of lookalike_marqo.query; older collections must be re-ingested
MAX_BATCH = 128  # Marqo's largest add-documents batch


class MarqoBackend(MarqoConnection, SearchBackend):
    Options = MarqoOptions
    supports_text_vectors: ClassVar[bool] = False

    # ------------------------------------------------------------ collections

    def _documents(self, index: str, ids: list[str], vectors: bool = False) -> list[dict[str, Any]]:
        """The found documents among ``ids`` (``GET /indexes/{index}/documents`` with the ids in
        the body, so no id is ever spelled into a URL path)."""
        found = []
        for start in range(0, len(ids), MAX_BATCH):
            batch = ids[start:start + MAX_BATCH]
            idx = self._index(index)
            reply = self._answer(partial(idx.get_documents, batch, expose_facets=vectors or None))
            found += [doc for doc in reply.get("results", []) if isinstance(doc, dict) and doc.get("_found")]
        return found

    def _index_record(self, index: str) -> dict[str, Any] | None:
        """The collection record kept in ``index``, or None (no such index, or not one of ours)."""
        try:
            docs = self._documents(index, [RECORD_ID])
        except NotFound:
            return None
        if not docs or docs[0].get(KIND_FIELD) != "collection":
            return None
        return dict(json.loads(docs[0]["lookalike_record"]))

    def _record(self, tenant: str, name: str) -> dict[str, Any] | None:
        record = self._index_record(self.index_name(tenant, name))
        return record if record and (record.get("tenant"), record.get("name")) == (tenant, name) else None

    def _require(self, tenant: str, name: str) -> dict[str, Any]:
        record = self._record(tenant, name)
        if record is None:
            raise NotFound("Collection not found")
        if record.get("layout") != LAYOUT:
            raise BadRequest(f"collection {name!r} was stored by an older Lookalike in a field layout this one "
                             "cannot filter: delete it and ingest it again")
        return record

    def _write_record(self, record: dict[str, Any]) -> None:
        index = self.index_name(record["tenant"], record["name"])
        self._add(index, [{"_id": RECORD_ID, KIND_FIELD: "collection", "lookalike_record": json.dumps(record)}])

    def _count(self, tenant: str, name: str) -> int:
        idx = self._index(self.index_name(tenant, name))
        stats = self._answer(idx.get_stats)
        return max(0, int(stats.get("numberOfDocuments", 0)) - 1)  # less the collection record

    def _info(self, record: dict[str, Any], count: int) -> CollectionInfo:
        return CollectionInfo(name=record["name"], model_id=record["model_id"], dimension=int(record["dimension"]),
                              item_count=count, settings=record.get("settings") or {}, status=record["status"],
                              created_at=float(record["created_at"]))

    def create_collection(self, tenant: str, spec: CollectionSpec) -> CollectionInfo:
        if spec.text_dimension:
            raise BadRequest("the marqo backend keeps one vector space per collection: caption/prompt vectors "
                             "are not supported (set text_embedder: {name: none})")
        if self._record(tenant, spec.name) is not None:
            raise Conflict(f"Collection {spec.name!r} already exists")
        index = self.index_name(tenant, spec.name)
        settings = self._index_settings(spec.dimension)
        try:
            self._call(lambda: self.client.create_index(index, settings_dict=settings, wait_for_readiness=False))
        except Conflict:
            pass  # an index without its record: half-created earlier, or still being created
        self._wait_ready(index)
        record = {"tenant": tenant, "name": spec.name, "model_id": spec.model_id, "dimension": spec.dimension,
                  "settings": dict(spec.settings), "status": "READY", "created_at": time.time(), "layout": LAYOUT}
        self._write_record(record)
        return self._info(record, 0)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo | None:
        record = self._record(tenant, name)
        return self._info(record, self._count(tenant, name)) if record else None

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        prefix = f"{self.options.index_prefix}-"
        out = []
        for index, status in self._indexes().items():
            if not index.startswith(prefix) or status not in SERVING:
                continue
            record = self._index_record(index)
            if record and record.get("tenant") == tenant:
                out.append(self._info(record, self._count(tenant, record["name"])))
        return sorted(out, key=lambda c: c.name)

    def delete_collection(self, tenant: str, name: str) -> bool:
        if self._record(tenant, name) is None:
            return False
        index = self.index_name(tenant, name)
        self._call(lambda: self.client.delete_index(index, wait_for_readiness=False), missing_ok=True)
        with self._lock:
            self._indexes_cache.pop(index, None)
        return True

    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None:
        record = self._require(tenant, name)
        self._write_record({**record, "status": status})

    # ------------------------------------------------------------ items

    def _add(self, index: str, documents: list[dict[str, Any]]) -> None:
        for start in range(0, len(documents), MAX_BATCH):
            batch = documents[start:start + MAX_BATCH]
            idx = self._index(index)
            result = self._answer(partial(idx.add_documents, batch, tensor_fields=[VECTOR_FIELD],
                                          mappings={VECTOR_FIELD: {"type": "custom_vector"}}))
            failed = [row for row in result.get("items", []) if int(row.get("status", 200)) >= 300]
            if result.get("errors") or failed:
                reason = str(failed[0].get("message") or failed[0].get("error") or "")[:200] if failed else ""
                raise BackendUnavailable(f"search backend rejected {len(failed) or 'some'} documents: {reason}")

    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> list[str]:
        if not items:
            return []
        record = self._require(tenant, collection)
        max_len = self.options.filter_string_max_length
        index = self.index_name(tenant, collection)
        # Marqo has no conditional write: the stored versions are read first, so only a write that
        # lands between this read and ours can still replace a later one (README, "Backends").
        stored_at = {doc["_id"]: float(json.loads(doc[ITEM_FIELD]).get("updated_at") or 0)
                     for doc in self._documents(index, [i.id for i in items]) if doc.get(KIND_FIELD) == "item"}
        superseded = [i.id for i in items if stored_at.get(i.id, 0.0) > i.updated_at]
        documents = []
        for item in items:
            if item.id in superseded:
                continue
            vector = np.asarray(item.vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != record["dimension"]:
                raise BadRequest(f"vector dimension {vector.shape[0]} does not match the collection's "
                                 f"{record['dimension']}")
            if item.text_vectors:
                raise BadRequest("the marqo backend does not keep caption/prompt vectors")
            stored = {"metadata": item.metadata, "image_key": item.image_key, "updated_at": item.updated_at}
            texts = {TEXT_FIELD[f]: text for f in TEXT_FIELDS if (text := item_text(item.metadata, f))}
            documents.append({"_id": item.id, KIND_FIELD: "item", ITEM_FIELD: json.dumps(stored),
                              VECTOR_FIELD: {"vector": [float(x) for x in vector]},
                              **texts, **filter_fields(item.metadata, max_len)})
        if documents:
            self._add(index, documents)
        return superseded

    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        self._require(tenant, collection)
        wanted = [i for i in dict.fromkeys(ids) if i != RECORD_ID]
        if not wanted:
            return 0
        index = self.index_name(tenant, collection)
        # Marqo reports a missing id as deleted, so count only the ids that exist.
        existing = [str(doc["_id"]) for doc in self._documents(index, wanted) if doc.get(KIND_FIELD) == "item"]
        if existing:
            idx = self._index(index)
            self._call(lambda: idx.delete_documents(existing))
        return len(existing)

    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None:
        self._require(tenant, collection)
        if item_id == RECORD_ID:
            return None
        docs = self._documents(self.index_name(tenant, collection), [item_id], vectors=True)
        if not docs or docs[0].get(KIND_FIELD) != "item":
            return None
        doc = docs[0]
        vector = next((f["_embedding"] for f in doc.get("_tensor_facets", []) if VECTOR_FIELD in f), None)
        if vector is None:
            raise BackendUnavailable("search backend returned an item without its vector")
        stored = json.loads(doc[ITEM_FIELD])
        return Item(id=doc["_id"], vector=np.asarray(vector, dtype=np.float32), metadata=stored["metadata"],
                    image_key=stored.get("image_key"), updated_at=float(stored.get("updated_at") or 0))

    # ------------------------------------------------------------ search

    def _filter(self, flt: Filter | None, exclude: frozenset[str] = frozenset()) -> str:
        parts = [f"{KIND_FIELD}:item"]
        if flt is not None:
            parts.append(compile_filter(flt, self.options.filter_string_max_length))
        if exclude:
            parts.append(excluding(exclude))
        return " AND ".join(parts)

    def _hits(self, index: str, search: dict[str, Any], count: int) -> Iterator[dict[str, Any]]:
        """Up to ``count`` hits of one search (``Index.search`` keyword arguments), a page at a time."""
        idx = self._index(index)
        offset = 0
        while offset < count:
            limit = min(self.options.page_size, count - offset)
            page = {**search, "limit": limit, "offset": offset}
            if search.get("search_method") == "TENSOR":
                page["ef_search"] = max(self.options.ef_search, offset + limit + 1)
            hits = self._answer(partial(idx.search, **page)).get("hits", [])
            yield from hits
            if len(hits) < limit:
                return
            offset += limit

    def _tensor_search(self, vector: np.ndarray, filter_string: str, approximate: bool = True) -> dict[str, Any]:
        return {"search_method": "TENSOR", "context": {"tensor": [{"vector": [float(x) for x in vector],
                                                                   "weight": 1}]},
                "filter_string": filter_string, "attributes_to_retrieve": [ITEM_FIELD], "show_highlights": False,
                "approximate": approximate}

    def _ranked(self, index: str, search: dict[str, Any], want: int) -> tuple[list[dict[str, Any]], bool]:
        """The top ``want`` hits, widened until no tie crosses the cut (so ids break ties
        exactly as on every backend); also whether fewer exist than were asked for."""
        k = want
        while True:
            hits = list(self._hits(index, search, k + 1))
            if len(hits) <= k:
                return hits, True
            if hits[k]["_score"] != hits[k - 1]["_score"] or k >= self.options.scan_limit:
                return hits[:k], False
            k = min(2 * k, self.options.scan_limit)

    def _to_hit(self, raw: dict[str, Any], score: float) -> Hit:
        stored = json.loads(raw[ITEM_FIELD])
        return Hit(id=raw["_id"], score=score, metadata=stored["metadata"], image_key=stored.get("image_key"))

    def search(self, tenant: str, collection: str, query: VectorQuery) -> SearchPage:
        record = self._require(tenant, collection)
        vector = np.asarray(query.vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != record["dimension"]:
            raise BadRequest(f"query dimension {vector.shape[0]} does not match the collection's "
                             f"{record['dimension']}")
        index = self.index_name(tenant, collection)
        filter_string = self._filter(query.filter, query.exclude_ids)
        cutoff = None if query.min_score is None else query.min_score - 1e-6
        raw, exhausted = self._ranked(index, self._tensor_search(vector, filter_string), query.offset + query.limit)
        scored = [(h, _cosine(h["_score"])) for h in raw]
        passing = [(h, s) for h, s in scored if cutoff is None or s >= cutoff]
        passing.sort(key=lambda hs: (-hs[1], hs[0]["_id"]))
        hits = [self._to_hit(h, s) for h, s in passing[query.offset:query.offset + query.limit]]
        if exhausted or len(passing) < len(scored):
            total = len(passing)  # everything that passes was seen
        elif query.filter is None and not query.exclude_ids and cutoff is None:
            total = self._count(tenant, collection)
        else:
            scan = self._hits(index, self._tensor_search(vector, filter_string, approximate=False),
                              self.options.scan_limit)
            total = sum(1 for h in scan if cutoff is None or _cosine(h["_score"]) >= cutoff)
        return SearchPage(hits=hits, total=total)

    def text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage:
        self._require(tenant, collection)
        if query.vector is not None:
            raise BadRequest("this collection has no text embeddings (the marqo backend keeps none)")
        words = sorted(set(re.findall(r"\w+", query.text.lower())))
        if not words:
            raise BadRequest("query has no searchable words")
        search = {"q": " ".join(words), "search_method": "LEXICAL", "filter_string": self._filter(query.filter),
                  "searchable_attributes": [TEXT_FIELD[f] for f in query.fields],
                  "attributes_to_retrieve": [ITEM_FIELD], "show_highlights": False}
        # One scan: Marqo reports no total, and its ties come in no order (ids break them here).
        hits = [self._to_hit(raw, float(raw["_score"]))
                for raw in self._hits(self.index_name(tenant, collection), search, self.options.scan_limit)]
        hits.sort(key=lambda h: (-h.score, h.id))
        return SearchPage(hits=hits[query.offset:query.offset + query.limit], total=len(hits))

    def facets(self, tenant: str, collection: str, fields: Sequence[str], filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        record = self._require(tenant, collection)
        probe = np.zeros(int(record["dimension"]), dtype=np.float32)
        probe[0] = 1.0  # any vector: an exact scan visits every item that passes the filter
        search = self._tensor_search(probe, self._filter(filter), approximate=False)
        counts: dict[str, dict[str, int]] = {f: {} for f in fields}
        for raw in self._hits(self.index_name(tenant, collection), search, self.options.scan_limit):
            metadata = json.loads(raw[ITEM_FIELD])["metadata"]
            for field in fields:
                for key in facet_keys(metadata.get(field)):
                    counts[field][key] = counts[field].get(key, 0) + 1
        return {f: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:size] for f, c in counts.items()}

    def close(self) -> None:
        """py-marqo keeps one process-wide HTTP session; nothing here to close."""


def _cosine(marqo_score: float) -> float:
    """Marqo's prenormalized-angular ``_score`` is 1 / (2 - cos)."""
    return max(-1.0, min(1.0, 2.0 - 1.0 / float(marqo_score)))

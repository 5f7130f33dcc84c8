"""The Marqo search backend: a tenant's collections kept in Marqo (Cloud or self-hosted).

Lookalike embeds; Marqo stores and searches. Each collection is one *unstructured* Marqo
index created with ``model: no_model`` (vectors are brought, Marqo embeds nothing) and the
``prenormalized-angular`` space; an item is a document whose ``lookalike_vector`` field is a
``custom_vector``. Searches send the query vector as ``context.tensor`` and filters as
Marqo's DSL, compiled from the filter AST (``lookalike_marqo.query``).

How it maps onto what Marqo offers:

* Scores. Marqo's tensor ``_score`` is Vespa's closeness, 1 / (1 + (1 - cos)), and is
  turned back into cosine similarity, so ``min_score`` and the Visual Layer distances mean
  the same on every backend.
* The collection record (model, dimension, settings, status) is a document with no vector
  in the collection's own index, so deleting the index deletes everything at once.
* Counting. Marqo reports no total for a filtered search. Unfiltered totals come from the
  index stats; filtered ones from an exact (brute force) scan of at most ``scan_limit``
  hits, as do facets, which Marqo cannot aggregate. Beyond ``scan_limit`` counts are capped.
* Keyword search is Marqo's ``LEXICAL`` (BM25) search, kept to items whose caption or
  prompt holds a query word, since an unstructured index cannot search named fields only.
* One vector space per index: caption/prompt vectors (another model, another dimension)
  cannot be kept, so ``supports_text_vectors`` is False and text search is keyword search.

Marqo Cloud (``url`` on ``marqo.ai``) creates and deletes indexes through its control plane
(``/api/v2/indexes``) and serves each index at its own endpoint, found by listing the
indexes (as py-marqo does). Index creation there takes minutes: ``create_collection`` waits
up to ``create_timeout_seconds`` and otherwise asks the caller to retry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import numpy as np
import requests
from pydantic import BaseModel, ConfigDict, Field

from lookalike import backoff
from lookalike.contracts import (
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
from lookalike.errors import BackendUnavailable, BadRequest, Conflict, NotFound
from lookalike.filters import Filter, facet_keys
from lookalike.secrets import read_secret
from lookalike_marqo.query import compile_filter, excluding, filter_fields

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RECORD_ID = "~lookalike-collection"  # "~" cannot start an item id, so no item can overwrite it
VECTOR_FIELD = "lookalike_vector"
ITEM_FIELD = "lookalike_item"
KIND_FIELD = "lookalike_kind"
MAX_BATCH = 128  # Marqo's largest add-documents batch
SERVING = ("READY", "MODIFYING")  # Marqo Cloud index states that answer requests


class MarqoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "https://api.marqo.ai"
    cloud: bool | None = None  # None: Marqo Cloud when the url's host ends in marqo.ai
    api_key_env: str | None = "MARQO_API_KEY"
    api_key_secret: str | None = None  # Secrets Manager name / ARN
    api_key_parameter: str | None = None  # SSM SecureString parameter
    index_prefix: str = Field(default="lookalike", pattern=r"^[a-z][a-z0-9]{0,9}$")
    filter_string_max_length: int = Field(default=256, ge=20, le=4096)
    hnsw_m: int = Field(default=16, ge=4, le=128)
    ef_construction: int = Field(default=512, ge=16, le=4096)
    ef_search: int = Field(default=2000, ge=16, le=20000)
    scan_limit: int = Field(default=1000, ge=10, le=10000)  # most hits a count, facet or keyword scan reads
    page_size: int = Field(default=400, ge=10, le=1000)  # most hits one Marqo search returns
    connect_timeout: float = Field(default=3.0, gt=0, le=30)
    read_timeout: float = Field(default=20.0, gt=0, le=120)
    max_retries: int = Field(default=3, ge=0, le=8)
    backoff_seconds: float = Field(default=0.3, ge=0, le=10)
    create_timeout_seconds: float = Field(default=60.0, ge=0, le=900)
    poll_seconds: float = Field(default=5.0, gt=0, le=60)
    # Marqo Cloud only: the infrastructure of each new index.
    inference_type: str = "marqo.CPU.small"
    storage_class: str = "marqo.basic"
    shards: int = Field(default=1, ge=1, le=16)
    replicas: int = Field(default=0, ge=0, le=4)


class MarqoBackend(SearchBackend):
    Options = MarqoOptions
    supports_text_search: ClassVar[bool] = True
    supports_text_vectors: ClassVar[bool] = False

    def __init__(self, options: MarqoOptions | None = None, context: BackendContext | None = None) -> None:
        self.options = options or MarqoOptions()
        self.url = self.options.url.rstrip("/")
        host = urlsplit(self.url).hostname or ""
        self.cloud = self.options.cloud if self.options.cloud is not None else host.endswith("marqo.ai")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "Lookalike/0.1"
        o = self.options
        # Marqo Cloud always needs the key; a self-hosted Marqo only if one is configured.
        if self.cloud or o.api_key_secret or o.api_key_parameter or (o.api_key_env and os.environ.get(o.api_key_env)):
            self.session.headers["x-api-key"] = read_secret("the Marqo API key", o.api_key_env, o.api_key_secret,
                                                            o.api_key_parameter)
        self._endpoints: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ HTTP

    def _request(self, method: str, url: str, body: Any = None, params: dict[str, str] | None = None,
                 missing_ok: bool = False) -> Any:
        """One call with bounded, jittered backoff on 429/5xx and timeouts; Marqo's errors mapped."""
        error = "search backend unavailable"
        for attempt in range(self.options.max_retries + 1):
            try:
                resp = self.session.request(method, url, json=body, params=params,
                                            timeout=(self.options.connect_timeout, self.options.read_timeout))
            except (requests.Timeout, requests.ConnectionError):
                error = "search backend did not answer in time"
            else:
                if resp.status_code not in RETRY_STATUSES:
                    return self._answer(resp, missing_ok)
                error = f"search backend error {resp.status_code}"
            if attempt < self.options.max_retries:
                time.sleep(backoff.delay(self.options.backoff_seconds, attempt))
        raise BackendUnavailable(error)

    @staticmethod
    def _answer(resp: requests.Response, missing_ok: bool) -> Any:
        try:
            body = resp.json() if resp.content else {}
        except ValueError:
            raise BackendUnavailable("search backend answered malformed JSON") from None
        if resp.ok:
            return body
        code = body.get("code", "") if isinstance(body, dict) else ""
        message = str(body.get("message", ""))[:200] if isinstance(body, dict) else ""
        if resp.status_code in (401, 403):
            raise BackendUnavailable("search backend refused the credentials")
        if resp.status_code == 404:
            if missing_ok:
                return None
            raise NotFound("Item not found" if code == "document_not_found" else "Collection not found")
        if resp.status_code == 409:
            raise Conflict(message or "conflict")
        if resp.status_code in (400, 422):
            raise BadRequest(f"search backend rejected the request: {message or code or resp.status_code}")
        raise BackendUnavailable(f"search backend error {resp.status_code}")

    # ------------------------------------------------------------ indexes

    def index_name(self, tenant: str, collection: str) -> str:
        digest = hashlib.sha256(f"{tenant}\x00{collection}".encode()).hexdigest()[:20]
        return f"{self.options.index_prefix}-{digest}"

    def _control(self, index: str = "") -> str:
        base = f"{self.url}/api/v2/indexes" if self.cloud else f"{self.url}/indexes"
        return f"{base}/{index}" if index else base

    def _indexes(self) -> dict[str, tuple[str, str]]:
        """{index: (status, data-plane base url)} of every index under this key."""
        listing = self._request("GET", self._control())
        out: dict[str, tuple[str, str]] = {}
        for row in listing.get("results", []) if isinstance(listing, dict) else []:
            if self.cloud:
                endpoint = str(row.get("endpoint") or "")
                if endpoint and "://" not in endpoint:
                    endpoint = "https://" + endpoint
                out[str(row.get("index_name"))] = (str(row.get("index_status", "")), endpoint.rstrip("/"))
            else:
                out[str(row.get("indexName"))] = ("READY", self.url)
        return out

    def _data(self, index: str) -> str:
        """The base URL serving ``index``'s documents and searches, or NotFound."""
        if not self.cloud:
            return f"{self.url}/indexes/{index}"
        with self._lock:
            endpoint = self._endpoints.get(index)
        if endpoint is None:
            status, endpoint = self._indexes().get(index, ("", ""))
            if status not in SERVING or not endpoint:
                raise NotFound("Collection not found")
            with self._lock:
                self._endpoints[index] = endpoint
        return f"{endpoint}/indexes/{index}"

    def _index_settings(self, dimension: int) -> dict[str, Any]:
        o = self.options
        settings: dict[str, Any] = {
            "type": "unstructured", "model": "no_model",
            "modelProperties": {"type": "no_model", "dimensions": dimension},
            "normalizeEmbeddings": True, "treatUrlsAndPointersAsImages": False,
            "filterStringMaxLength": o.filter_string_max_length,
            "annParameters": {"spaceType": "prenormalized-angular",
                              "parameters": {"efConstruction": o.ef_construction, "m": o.hnsw_m}},
        }
        if self.cloud:
            settings.update({"inferenceType": o.inference_type, "storageClass": o.storage_class,
                             "numberOfShards": o.shards, "numberOfReplicas": o.replicas,
                             "numberOfInferences": 1})
        return settings

    def _wait_ready(self, index: str) -> None:
        if not self.cloud:
            return
        deadline = time.monotonic() + self.options.create_timeout_seconds
        while True:
            status, _ = self._indexes().get(index, ("", ""))
            if status in SERVING:
                return
            if time.monotonic() + self.options.poll_seconds > deadline:
                raise BackendUnavailable("Marqo is still creating this collection's index; retry in a few minutes")
            time.sleep(self.options.poll_seconds)

    # ------------------------------------------------------------ collections

    def _index_record(self, index: str) -> dict[str, Any] | None:
        """The collection record kept in ``index``, or None (no such index, or not one of ours)."""
        try:
            doc = self._request("GET", f"{self._data(index)}/documents/{quote(RECORD_ID, safe='')}", missing_ok=True)
        except NotFound:
            return None
        if not doc or doc.get(KIND_FIELD) != "collection":
            return None
        return dict(json.loads(doc["lookalike_record"]))

    def _record(self, tenant: str, name: str) -> dict[str, Any] | None:
        record = self._index_record(self.index_name(tenant, name))
        return record if record and (record.get("tenant"), record.get("name")) == (tenant, name) else None

    def _require(self, tenant: str, name: str) -> dict[str, Any]:
        record = self._record(tenant, name)
        if record is None:
            raise NotFound("Collection not found")
        return record

    def _write_record(self, record: dict[str, Any]) -> None:
        index = self.index_name(record["tenant"], record["name"])
        self._add(index, [{"_id": RECORD_ID, KIND_FIELD: "collection", "lookalike_record": json.dumps(record)}])

    def _count(self, tenant: str, name: str) -> int:
        stats = self._request("GET", f"{self._data(self.index_name(tenant, name))}/stats")
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
        try:
            self._request("POST", self._control(index), self._index_settings(spec.dimension))
        except Conflict:
            pass  # an index without its record: half-created earlier, or still being created
        self._wait_ready(index)
        record = {"tenant": tenant, "name": spec.name, "model_id": spec.model_id, "dimension": spec.dimension,
                  "settings": dict(spec.settings), "status": "READY", "created_at": time.time()}
        self._write_record(record)
        return self._info(record, 0)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo | None:
        record = self._record(tenant, name)
        return self._info(record, self._count(tenant, name)) if record else None

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        prefix = f"{self.options.index_prefix}-"
        out = []
        for index, (status, endpoint) in self._indexes().items():
            if not index.startswith(prefix) or status not in SERVING:
                continue
            if self.cloud:
                with self._lock:
                    self._endpoints[index] = endpoint
            record = self._index_record(index)
            if record and record.get("tenant") == tenant:
                out.append(self._info(record, self._count(tenant, record["name"])))
        return sorted(out, key=lambda c: c.name)

    def delete_collection(self, tenant: str, name: str) -> bool:
        if self._record(tenant, name) is None:
            return False
        index = self.index_name(tenant, name)
        self._request("DELETE", self._control(index), missing_ok=True)
        with self._lock:
            self._endpoints.pop(index, None)
        return True

    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None:
        record = self._require(tenant, name)
        self._write_record({**record, "status": status})

    # ------------------------------------------------------------ items

    def _add(self, index: str, documents: list[dict[str, Any]]) -> None:
        for start in range(0, len(documents), MAX_BATCH):
            batch = documents[start:start + MAX_BATCH]
            body = {"documents": batch, "tensorFields": [VECTOR_FIELD],
                    "mappings": {VECTOR_FIELD: {"type": "custom_vector"}}}
            result = self._request("POST", f"{self._data(index)}/documents", body)
            failed = [row for row in result.get("items", []) if int(row.get("status", 200)) >= 300]
            if result.get("errors") or failed:
                reason = str(failed[0].get("message") or failed[0].get("error") or "")[:200] if failed else ""
                raise BackendUnavailable(f"search backend rejected {len(failed) or 'some'} documents: {reason}")

    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> None:
        if not items:
            return
        record = self._require(tenant, collection)
        documents = []
        for item in items:
            vector = np.asarray(item.vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != record["dimension"]:
                raise BadRequest(f"vector dimension {vector.shape[0]} does not match the collection's "
                                 f"{record['dimension']}")
            if item.text_vectors:
                raise BadRequest("the marqo backend does not keep caption/prompt vectors")
            stored = {"metadata": item.metadata, "image_key": item.image_key, "updated_at": item.updated_at}
            documents.append({"_id": item.id, KIND_FIELD: "item", ITEM_FIELD: json.dumps(stored),
                              VECTOR_FIELD: {"vector": [float(x) for x in vector]},
                              **filter_fields(item.metadata)})
        self._add(self.index_name(tenant, collection), documents)

    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        self._require(tenant, collection)
        wanted = [i for i in dict.fromkeys(ids) if i != RECORD_ID]
        if not wanted:
            return 0
        index = self.index_name(tenant, collection)
        result = self._request("POST", f"{self._data(index)}/documents/delete-batch", wanted)
        return sum(1 for row in result.get("items", []) if row.get("result") == "deleted")

    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None:
        self._require(tenant, collection)
        if item_id == RECORD_ID:
            return None
        index = self.index_name(tenant, collection)
        doc = self._request("GET", f"{self._data(index)}/documents/{quote(item_id, safe='')}",
                            params={"expose_facets": "true"}, missing_ok=True)
        if not doc or doc.get(KIND_FIELD) != "item":
            return None
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
            parts.append(compile_filter(flt))
        if exclude:
            parts.append(excluding(exclude))
        return " AND ".join(parts)

    def _hits(self, index: str, body: dict[str, Any], count: int) -> Iterator[dict[str, Any]]:
        """Up to ``count`` hits of one search, fetched a page at a time."""
        url = f"{self._data(index)}/search"
        offset = 0
        while offset < count:
            limit = min(self.options.page_size, count - offset)
            page = {**body, "limit": limit, "offset": offset}
            if body.get("searchMethod") == "TENSOR":
                page["efSearch"] = max(self.options.ef_search, offset + limit + 1)
            hits = self._request("POST", url, page).get("hits", [])
            yield from hits
            if len(hits) < limit:
                return
            offset += limit

    def _tensor_body(self, vector: np.ndarray, filter_string: str, approximate: bool = True) -> dict[str, Any]:
        return {"searchMethod": "TENSOR", "context": {"tensor": [{"vector": [float(x) for x in vector],
                                                                  "weight": 1}]},
                "filter": filter_string, "attributesToRetrieve": [ITEM_FIELD], "showHighlights": False,
                "approximate": approximate}

    def _ranked(self, index: str, body: dict[str, Any], want: int) -> tuple[list[dict[str, Any]], bool]:
        """The top ``want`` hits, widened until no tie crosses the cut (so ids break ties
        exactly as on every backend); also whether fewer exist than were asked for."""
        k = want
        while True:
            hits = list(self._hits(index, body, k + 1))
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
        raw, exhausted = self._ranked(index, self._tensor_body(vector, filter_string), query.offset + query.limit)
        scored = [(h, _cosine(h["_score"])) for h in raw]
        passing = [(h, s) for h, s in scored if cutoff is None or s >= cutoff]
        passing.sort(key=lambda hs: (-hs[1], hs[0]["_id"]))
        hits = [self._to_hit(h, s) for h, s in passing[query.offset:query.offset + query.limit]]
        if exhausted or len(passing) < len(scored):
            total = len(passing)  # everything that passes was seen
        elif query.filter is None and not query.exclude_ids and cutoff is None:
            total = self._count(tenant, collection)
        else:
            scan = self._hits(index, self._tensor_body(vector, filter_string, approximate=False),
                              self.options.scan_limit)
            total = sum(1 for h in scan if cutoff is None or _cosine(h["_score"]) >= cutoff)
        return SearchPage(hits=hits, total=total)

    def text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage:
        self._require(tenant, collection)
        if query.vector is not None:
            raise BadRequest("this collection has no text embeddings (the marqo backend keeps none)")
        words = set(re.findall(r"\w+", query.text.lower()))
        if not words:
            raise BadRequest("query has no searchable words")
        body = {"q": " ".join(sorted(words)), "searchMethod": "LEXICAL", "filter": self._filter(query.filter),
                "attributesToRetrieve": [ITEM_FIELD], "showHighlights": False}
        kept = []
        for raw in self._hits(self.index_name(tenant, collection), body, self.options.scan_limit):
            hit = self._to_hit(raw, float(raw["_score"]))
            texts = [hit.metadata.get(f) for f in query.fields]
            if any(isinstance(t, str) and words & set(re.findall(r"\w+", t.lower())) for t in texts):
                kept.append(hit)
        kept.sort(key=lambda h: (-h.score, h.id))
        return SearchPage(hits=kept[query.offset:query.offset + query.limit], total=len(kept))

    def facets(self, tenant: str, collection: str, fields: Sequence[str], filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        record = self._require(tenant, collection)
        probe = np.zeros(int(record["dimension"]), dtype=np.float32)
        probe[0] = 1.0  # any vector: an exact scan visits every item that passes the filter
        body = self._tensor_body(probe, self._filter(filter), approximate=False)
        counts: dict[str, dict[str, int]] = {f: {} for f in fields}
        for raw in self._hits(self.index_name(tenant, collection), body, self.options.scan_limit):
            metadata = json.loads(raw[ITEM_FIELD])["metadata"]
            for field in fields:
                for key in facet_keys(metadata.get(field)):
                    counts[field][key] = counts[field].get(key, 0) + 1
        return {f: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:size] for f, c in counts.items()}

    def close(self) -> None:
        self.session.close()


def _cosine(marqo_score: float) -> float:
    """Marqo's prenormalized-angular ``_score`` is 1 / (2 - cos)."""
    return max(-1.0, min(1.0, 2.0 - 1.0 / float(marqo_score)))


"""The OpenSearch k-NN search backend.

One index per collection (``<prefix>-<hash of tenant/collection>``), plus a registry index of
collections. Vectors are ``knn_vector`` fields with ``space_type: cosinesimil`` on HNSW
(lucene by default, which filters *during* the graph search so a selective filter still
returns k results; faiss selectable). OpenSearch scores cosine as (1 + cos) / 2; hits are
converted back to cosine similarity. Text search is semantic (k-NN over caption/prompt
vectors, best field wins) or BM25 over the caption/prompt text; facets are terms
aggregations.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from lookalike import backoff
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
from lookalike.errors import BackendUnavailable, BadRequest, ConfigurationError, Conflict, NotFound
from lookalike.filters import Filter
from lookalike.secrets import read_secret
from lookalike_opensearch.query import compile_filter, typed_fields

T = TypeVar("T")
RETRY_STATUSES = (429, 502, 503, 504)


MAX_RESULT_WINDOW = 10_000  # index.max_result_window and k-NN's K_MAX


def _check_window(offset: int, limit: int) -> None:
    if offset + limit > MAX_RESULT_WINDOW:
        raise BadRequest(f"offset + limit must be at most {MAX_RESULT_WINDOW} on this backend")



def _version(item: Item) -> int:
    """An item's external version: when its write began, in microseconds."""
    return round(item.updated_at * 1_000_000)

class OpenSearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None  # default: LOOKALIKE_OPENSEARCH_ENDPOINT
    # Every node's URL, for a cluster without a load balancer: a request that cannot reach one
    # node is retried on another (the client marks the dead one and skips it for a while).
    hosts: list[str] = Field(default_factory=list, max_length=32)
    auth: Literal["none", "basic", "sigv4"] = "none"
    username: str | None = None
    password_env: str | None = None  # the environment variable holding the password (never the password)
    password_secret: str | None = None  # or a Secrets Manager secret name / ARN (read through Powertools)
    password_parameter: str | None = None  # or an SSM SecureString parameter name
    region: str | None = None  # sigv4
    service: Literal["es", "aoss"] = "es"  # sigv4: Amazon OpenSearch Service or Serverless
    engine: Literal["lucene", "faiss"] = "lucene"
    index_prefix: str = Field(default="lookalike", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    hnsw_m: int = Field(default=16, ge=4, le=128)
    ef_construction: int = Field(default=128, ge=16, le=1024)
    # Candidates the graph search keeps (k-NN's k; lucene's HNSW queue is as long as k): more
    # is slower and closer to exact. The page itself is cut from the best of them.
    ef_search: int = Field(default=400, ge=1, le=10_000)  # recall@10 0.97 at 100k (bench/opensearch.py)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_retries: int = Field(default=3, ge=0, le=8)
    backoff_seconds: float = Field(default=0.2, ge=0, le=5)
    refresh: Literal["true", "wait_for", "false"] = "wait_for"  # when writes become searchable
    verify_certs: bool = True


def make_client(options: OpenSearchOptions) -> Any:
    from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection

    if options.service == "aoss":
        # Serverless vector collections refuse a document _id in index and create requests,
        # _create/<id>, _update/<id> and refresh=true (AWS docs, "Supported operations and
        # plugins in Amazon OpenSearch Serverless"); this backend relies on all four.
        raise ConfigurationError("OpenSearch Serverless (service: aoss) is not supported: its vector "
                                 "collections refuse document ids, _update and refresh; use a managed "
                                 "domain (service: es)")
    url = options.url or os.environ.get("LOOKALIKE_OPENSEARCH_ENDPOINT")
    hosts = options.hosts or ([url] if url else [])
    if not hosts:
        raise ConfigurationError("the opensearch backend needs options.url (or hosts) or LOOKALIKE_OPENSEARCH_ENDPOINT")
    kwargs: dict[str, Any] = {"hosts": hosts, "timeout": options.timeout_seconds, "max_retries": 0,
                              "retry_on_timeout": False, "verify_certs": options.verify_certs,
                              "connection_class": RequestsHttpConnection}
    if options.auth == "basic":
        kwargs["http_auth"] = (options.username or "", read_secret(
            "the OpenSearch password", options.password_env, options.password_secret, options.password_parameter))
    elif options.auth == "sigv4":
        import boto3

        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise ConfigurationError("no AWS credentials for SigV4")
        region = options.region or boto3.Session().region_name or "us-east-1"
        kwargs["http_auth"] = AWSV4SignerAuth(credentials, region, options.service)
    return OpenSearch(**kwargs)


class OpenSearchBackend(SearchBackend):
    Options = OpenSearchOptions

    def __init__(self, options: OpenSearchOptions | None = None, context: BackendContext | None = None,
                 client: Any = None) -> None:
        self.options = options or OpenSearchOptions()
        self.client = client or make_client(self.options)
        self.registry = f"{self.options.index_prefix}-collections"
        self._registry_ready = False

    # ------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one request with bounded, jittered exponential backoff on 429/5xx and timeouts."""
        from opensearchpy import exceptions as os_errors

        for attempt in range(self.options.max_retries + 1):
            try:
                return fn()
            except os_errors.ConnectionTimeout as exc:
                error: Exception = exc
            except os_errors.ConnectionError as exc:
                error = exc
            except os_errors.TransportError as exc:
                status = exc.status_code if isinstance(exc.status_code, int) else 0
                if status not in RETRY_STATUSES:
                    raise
                error = exc
            except (os_errors.SerializationError, ValueError) as exc:  # a body that is not JSON
                raise BackendUnavailable("search backend answered malformed JSON") from exc
            if attempt < self.options.max_retries:
                time.sleep(backoff.delay(self.options.backoff_seconds, attempt))
        raise BackendUnavailable("search backend unavailable") from error

    def _request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        from opensearchpy import exceptions as os_errors

        try:
            return self._call(lambda: self.client.transport.perform_request(method, path, params=params or {},
                                                                            body=body))
        except os_errors.AuthenticationException as exc:
            raise BackendUnavailable("search backend refused the credentials") from exc
        except os_errors.AuthorizationException as exc:
            raise BackendUnavailable("search backend refused the request") from exc
        except os_errors.TransportError as exc:
            if exc.status_code == 404:
                raise NotFound("Collection not found") from exc
            if exc.status_code == 409:
                raise Conflict("conflict") from exc
            raise BackendUnavailable(f"search backend error {exc.status_code}") from exc

    def _bulk(self, lines: list[dict[str, Any]]) -> Any:
        """_bulk takes newline-delimited JSON, which the client's bulk() writes."""
        from opensearchpy import exceptions as os_errors

        try:
            return self._call(lambda: self.client.bulk(body=lines, params={"refresh": self.options.refresh}))
        except os_errors.TransportError as exc:
            raise BackendUnavailable(f"search backend error {exc.status_code}") from exc

    def _index(self, tenant: str, collection: str) -> str:
        digest = hashlib.sha256(f"{tenant}\x00{collection}".encode()).hexdigest()[:24]
        return f"{self.options.index_prefix}-{digest}"

    def _registry_id(self, tenant: str, name: str) -> str:
        return hashlib.sha256(f"{tenant}\x00{name}".encode()).hexdigest()

    def _ensure_registry(self) -> None:
        if self._registry_ready:
            return
        try:
            self._request("PUT", f"/{self.registry}", {"mappings": {"properties": {
                "tenant": {"type": "keyword"}, "name": {"type": "keyword"}, "settings": {"type": "object",
                                                                                          "enabled": False}}}})
        except BackendUnavailable as exc:
            if "400" not in str(exc):  # resource_already_exists_exception
                raise
        self._registry_ready = True

    def _vector_field(self, dimension: int) -> dict[str, Any]:
        return {"type": "knn_vector", "dimension": dimension, "method": {
            "name": "hnsw", "space_type": "cosinesimil", "engine": self.options.engine,
            "parameters": {"m": self.options.hnsw_m, "ef_construction": self.options.ef_construction}}}

    def mapping(self, spec: CollectionSpec) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "item_id": {"type": "keyword"}, "image_key": {"type": "keyword", "index": False},
            "updated_at": {"type": "double"}, "metadata": {"type": "object", "enabled": False},
            "vector": self._vector_field(spec.dimension),
            "caption": {"type": "text"}, "prompt": {"type": "text"},
            "s": {"type": "object"}, "n": {"type": "object"}, "b": {"type": "object"},
        }
        if spec.text_dimension:
            for field in TEXT_FIELDS:
                properties[f"{field}_vector"] = self._vector_field(spec.text_dimension)
        return {
            "settings": {"index": {"knn": True}},
            "mappings": {
                "dynamic_templates": [
                    {"texts": {"path_match": "s.*", "mapping": {"type": "keyword", "ignore_above": 512}}},
                    {"numbers": {"path_match": "n.*", "mapping": {"type": "double"}}},
                    {"booleans": {"path_match": "b.*", "mapping": {"type": "boolean"}}},
                ],
                "properties": properties,
            },
        }

    # ------------------------------------------------------------ collections

    def _version(self) -> tuple[int, ...]:
        number = str(self._request("GET", "/")["version"]["number"]).split("-")[0]
        return tuple(int(part) for part in number.split(".") if part.isdigit())

    def create_collection(self, tenant: str, spec: CollectionSpec) -> CollectionInfo:
        if self.options.engine == "faiss" and (version := self._version()) < (2, 19, 0):
            # faiss supports cosinesimil only from k-NN 2.19.0 (older clusters refuse the mapping).
            raise ConfigurationError("engine: faiss needs OpenSearch 2.19.0 or newer for cosine similarity; "
                                     f"this cluster runs {'.'.join(map(str, version))}")
        self._ensure_registry()
        record = {"tenant": tenant, "name": spec.name, "model_id": spec.model_id, "dimension": spec.dimension,
                  "settings": dict(spec.settings), "status": "READY", "created_at": time.time(),
                  "text_model_id": spec.text_model_id, "text_dimension": spec.text_dimension}
        try:
            self._request("PUT", f"/{self.registry}/_create/{self._registry_id(tenant, spec.name)}", record,
                          {"refresh": "true"})
        except Conflict:
            raise Conflict(f"Collection {spec.name!r} already exists") from None
        try:
            self._create_index(tenant, spec)
        except BackendUnavailable:
            self._request("DELETE", f"/{self.registry}/_doc/{self._registry_id(tenant, spec.name)}",
                          params={"refresh": "true"})
            raise
        return self._info(record, 0)

    def _create_index(self, tenant: str, spec: CollectionSpec) -> None:
        index = self._index(tenant, spec.name)
        try:
            self._request("PUT", f"/{index}", self.mapping(spec))
        except BackendUnavailable:
            # A PUT that timed out may still have created the index (then a retry answers
            # resource_already_exists), as may a concurrent one: an index of the right shape is
            # this collection's.
            if not self._index_fits(index, spec):
                raise

    def _counted(self, tenant: str, record: dict[str, Any]) -> CollectionInfo:
        """The collection of ``record``, counted. A record without its index is a creation that
        was killed between the two (or is under way): the index is made now, as it would have been."""
        try:
            return self._info(record, self._count(self._index(tenant, record["name"])))
        except NotFound:
            self._create_index(tenant, CollectionSpec(
                name=record["name"], model_id=record["model_id"], dimension=int(record["dimension"]),
                settings=record.get("settings") or {}, text_model_id=record.get("text_model_id"),
                text_dimension=record.get("text_dimension")))
            return self._info(record, 0)

    def _index_fits(self, index: str, spec: CollectionSpec) -> bool:
        try:
            mapping = self._request("GET", f"/{index}/_mapping")
        except (NotFound, BackendUnavailable):
            return False
        properties = next(iter(mapping.values()), {}).get("mappings", {}).get("properties", {})
        return properties.get("vector", {}).get("dimension") == spec.dimension

    def _record(self, tenant: str, name: str) -> dict[str, Any] | None:
        self._ensure_registry()
        try:
            doc = self._request("GET", f"/{self.registry}/_doc/{self._registry_id(tenant, name)}")
        except NotFound:
            return None
        return doc.get("_source") if doc.get("found") else None

    def _info(self, record: dict[str, Any], count: int) -> CollectionInfo:
        return CollectionInfo(name=record["name"], model_id=record["model_id"], dimension=int(record["dimension"]),
                              item_count=count, settings=record.get("settings") or {}, status=record["status"],
                              created_at=float(record["created_at"]), text_model_id=record.get("text_model_id"),
                              text_dimension=record.get("text_dimension"))

    def _count(self, index: str, query: dict[str, Any] | None = None) -> int:
        body = {"query": query} if query else None
        return int(self._request("POST", f"/{index}/_count", body)["count"])

    def get_collection(self, tenant: str, name: str) -> CollectionInfo | None:
        record = self._record(tenant, name)
        return self._counted(tenant, record) if record else None

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        self._ensure_registry()
        hits = self._request("POST", f"/{self.registry}/_search", {
            "size": 1000, "query": {"term": {"tenant": tenant}}, "sort": [{"name": "asc"}]})["hits"]["hits"]
        return [self._counted(tenant, h["_source"]) for h in hits]

    def delete_collection(self, tenant: str, name: str) -> bool:
        if self._record(tenant, name) is None:
            return False
        try:
            self._request("DELETE", f"/{self._index(tenant, name)}")
        except NotFound:
            pass
        self._request("DELETE", f"/{self.registry}/_doc/{self._registry_id(tenant, name)}", params={
            "refresh": "true"})
        return True

    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None:
        self._request("POST", f"/{self.registry}/_update/{self._registry_id(tenant, name)}",
                      {"doc": {"status": status}}, {"refresh": "true"})

    def _require(self, tenant: str, collection: str) -> dict[str, Any]:
        record = self._record(tenant, collection)
        if record is None:
            raise NotFound("Collection not found")
        return record

    # ------------------------------------------------------------ items

    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> list[str]:
        if not items:
            return []
        record = self._require(tenant, collection)
        lines: list[dict[str, Any]] = []
        index = self._index(tenant, collection)
        for item in items:
            vector = [float(x) for x in item.vector]
            if len(vector) != record["dimension"]:
                raise BadRequest(f"vector dimension {len(vector)} does not match the collection's "
                                 f"{record['dimension']}")
            doc: dict[str, Any] = {"item_id": item.id, "image_key": item.image_key, "updated_at": item.updated_at,
                                   "metadata": item.metadata, "vector": vector, **typed_fields(item.metadata)}
            for field in TEXT_FIELDS:
                if text := item_text(item.metadata, field):
                    doc[field] = text
            for field, tv in item.text_vectors.items():
                if field not in TEXT_FIELDS:
                    continue
                if record.get("text_dimension") is None or len(tv) != record["text_dimension"]:
                    raise BadRequest("text vector dimension does not match the collection's")
                doc[f"{field}_vector"] = [float(x) for x in tv]
            # The write's start in microseconds as an external version: OpenSearch itself refuses
            # (409) a document older than the stored one, so a late write never replaces a newer.
            lines += [{"index": {"_index": index, "_id": item.id, "version": _version(item),
                                 "version_type": "external_gte"}}, doc]
        answers = [i["index"] for i in self._bulk(lines).get("items", [])]
        superseded = [a["_id"] for a in answers if "error" in a and int(a.get("status", 0)) == 409]
        failed = [a for a in answers if "error" in a and int(a.get("status", 0)) != 409]
        if failed:
            # 429 and 5xx can succeed later; any other status (a mapping conflict with another
            # item's metadata, say) never will, so it must not be retried as if it could.
            if any(int(f.get("status", 500)) == 429 or int(f.get("status", 500)) >= 500 for f in failed):
                raise BackendUnavailable(f"search backend rejected {len(failed)} documents")
            first = failed[0]
            reason = str(first.get("error", {}).get("reason", ""))[:200]
            raise BadRequest(f"the search backend refused item {first.get('_id')!r}: {reason}")
        return superseded

    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        self._require(tenant, collection)
        if not ids:
            return 0
        index = self._index(tenant, collection)
        result = self._bulk([{"delete": {"_index": index, "_id": i}} for i in ids])
        return sum(1 for i in result["items"] if i["delete"].get("result") == "deleted")

    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None:

        self._require(tenant, collection)
        try:
            doc = self._request("GET", f"/{self._index(tenant, collection)}/_doc/{quote(item_id, safe='')}")
        except NotFound:
            return None
        if not doc.get("found"):
            return None
        return _item(doc["_source"])

    def scan_items(self, tenant: str, collection: str, after: str | None = None, limit: int = 500) -> list[Item]:
        # search_after on the item_id keyword: Lucene sorts its UTF-8 bytes, which is code point
        # order; no scroll context to expire between the pages of a long copy.
        self._require(tenant, collection)
        body: dict[str, Any] = {"size": max(1, min(limit, 10_000)), "query": {"match_all": {}},
                                "sort": [{"item_id": "asc"}], "track_total_hits": False}
        if after is not None:
            body["search_after"] = [after]
        hits = self._request("POST", f"/{self._index(tenant, collection)}/_search", body)["hits"]["hits"]
        return [_item(h["_source"]) for h in hits]

    # ------------------------------------------------------------ search

    def _knn(self, field: str, vector: Sequence[float], k: int | None, node: dict[str, Any] | None,
             min_score: float | None = None) -> dict[str, Any]:
        """A k-NN clause: the ``k`` nearest, or (``k`` None) a radial search for every item at
        or above ``min_score`` in OpenSearch's own (1 + cos) / 2 scale."""
        knn: dict[str, Any] = {"vector": [float(x) for x in vector]}
        if k is not None:
            knn["k"] = k
        else:
            knn["min_score"] = min_score
        if node is not None:
            knn["filter"] = node
        return {"knn": {field: knn}}

    def _filter_node(self, flt: Filter | None, exclude: frozenset[str] = frozenset()) -> dict[str, Any] | None:
        clauses: dict[str, Any] = {}
        if flt is not None:
            clauses["filter"] = [compile_filter(flt)]
        if exclude:
            clauses["must_not"] = [{"ids": {"values": sorted(exclude)}}]
        return {"bool": clauses} if clauses else None

    def _hits(self, index: str, query: dict[str, Any], size: int, offset: int) -> list[dict[str, Any]]:
        body = {"size": size, "from": offset, "query": query,
                "_source": {"excludes": ["vector", "caption_vector", "prompt_vector"]},
                "sort": [{"_score": "desc"}, {"item_id": "asc"}], "track_scores": True}
        return self._request("POST", f"/{index}/_search", body)["hits"]["hits"]

    def _as_page(self, index: str, raw: list[dict[str, Any]], count_query: dict[str, Any] | None,
                 to_score: Callable[[float], float], min_score: float | None) -> SearchPage:
        hits = [Hit(id=h["_source"]["item_id"], score=to_score(float(h["_score"])),
                    metadata=h["_source"].get("metadata") or {}, image_key=h["_source"].get("image_key"))
                for h in raw]
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score - 1e-6]
        return SearchPage(hits=hits, total=self._count(index, count_query))

    def _page(self, index: str, query: dict[str, Any], limit: int, offset: int) -> SearchPage:
        """One page of a BM25 query, sorted by score then id; its scores as the engine gives them."""
        return self._as_page(index, self._hits(index, query, limit, offset), query, float, None)

    def _knn_page(self, index: str, knn: Callable[[int], dict[str, Any]], count_query: dict[str, Any] | None,
                  limit: int, offset: int, min_score: float | None) -> SearchPage:
        """One page of a k-NN query (``knn(k)``), sorted by score then id. The engine keeps k
        candidates, and among equal scores it keeps whichever it met first, so one more than
        the page needs is asked for, and more while that one ties with the page's last (a tie
        cut at k would otherwise break by insertion order, not by id)."""
        need = offset + limit
        size = min(need + 1, MAX_RESULT_WINDOW)  # at the window's edge no tie past it can be seen
        while True:
            raw = self._hits(index, knn(max(size, min(self.options.ef_search, MAX_RESULT_WINDOW))), size, 0)
            if len(raw) <= need or size >= MAX_RESULT_WINDOW \
                    or float(raw[need - 1]["_score"]) > float(raw[-1]["_score"]):
                break
            size = min(MAX_RESULT_WINDOW, size * 2)
        return self._as_page(index, raw[offset:need], count_query, _cosine, min_score)

    def search(self, tenant: str, collection: str, query: VectorQuery) -> SearchPage:
        record = self._require(tenant, collection)
        if len(query.vector) != record["dimension"]:
            raise BadRequest(f"query dimension {len(query.vector)} does not match the collection's "
                             f"{record['dimension']}")
        _check_window(query.offset, query.limit)
        index = self._index(tenant, collection)
        node = self._filter_node(query.filter, query.exclude_ids)
        page = self._knn_page(index, lambda k: self._knn("vector", query.vector, k, node), node, query.limit,
                              query.offset, query.min_score)
        if query.min_score is None:
            return page
        # With a cutoff the total is what scores above it, which only a scored search can count.
        return SearchPage(hits=page.hits, total=self._cutoff_total(index, query.vector, node, query.min_score))

    def _cutoff_total(self, index: str, vector: Sequence[float], node: dict[str, Any] | None, min_score: float,
                      fields: Sequence[str] = ("vector",)) -> int:
        """How many items score at least ``min_score``: a radial k-NN search (``min_score``
        instead of ``k``, k-NN 2.14+) counts them all, with no cap at k or the result window."""
        radial = [self._knn(field, vector, None, node, min_score=(1.0 + min_score) / 2.0) for field in fields]
        query = radial[0] if len(radial) == 1 else {"bool": {"should": radial, "minimum_should_match": 1}}
        body = {"size": 0, "track_total_hits": True, "query": query}
        return int(self._request("POST", f"/{index}/_search", body)["hits"]["total"]["value"])

    def text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage:
        record = self._require(tenant, collection)
        _check_window(query.offset, query.limit)
        index = self._index(tenant, collection)
        node = self._filter_node(query.filter)
        if query.vector is not None:
            if record.get("text_dimension") is None or len(query.vector) != record["text_dimension"]:
                raise BadRequest("this collection has no text embeddings of that dimension")
            def knn_query(k: int) -> dict[str, Any]:
                knns = [self._knn(f"{f}_vector", query.vector, k, node) for f in query.fields]
                return knns[0] if len(knns) == 1 else {"dis_max": {"queries": knns}}

            having = {"bool": {"should": [{"exists": {"field": f"{f}_vector"}} for f in query.fields],
                               "minimum_should_match": 1, **({"filter": [node]} if node else {})}}
            page = self._knn_page(index, knn_query, having, query.limit, query.offset, query.min_score)
            if query.min_score is None:
                return page
            fields = [f"{f}_vector" for f in query.fields]
            return SearchPage(hits=page.hits, total=self._cutoff_total(index, query.vector, node, query.min_score,
                                                                       fields))
        words = query.text.strip()
        if not any(c.isalnum() for c in words):
            raise BadRequest("query has no searchable words")
        match = {"multi_match": {"query": words, "fields": list(query.fields), "operator": "or"}}
        body_query = {"bool": {"must": [match], **({"filter": [node]} if node else {})}}
        return self._page(index, body_query, query.limit, query.offset)

    def facets(self, tenant: str, collection: str, fields: Sequence[str], filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        self._require(tenant, collection)
        index = self._index(tenant, collection)
        order = [{"_count": "desc"}, {"_key": "asc"}]
        aggs = {}
        for n, field in enumerate(fields):
            aggs[f"s{n}"] = {"terms": {"field": f"s.{field}", "size": size, "order": order}}
            aggs[f"n{n}"] = {"terms": {"field": f"n.{field}", "size": size, "order": order}}
        body: dict[str, Any] = {"size": 0, "aggs": aggs}
        node = self._filter_node(filter)
        if node:
            body["query"] = node
        result = self._request("POST", f"/{index}/_search", body).get("aggregations", {})
        out: dict[str, list[tuple[str, int]]] = {}
        for n, field in enumerate(fields):
            counts: dict[str, int] = {}
            for bucket in result.get(f"s{n}", {}).get("buckets", []):
                counts[str(bucket["key"])] = counts.get(str(bucket["key"]), 0) + int(bucket["doc_count"])
            for bucket in result.get(f"n{n}", {}).get("buckets", []):
                key = float(bucket["key"])
                if key.is_integer():  # integers facet like keywords; fractions are measurements
                    counts[str(int(key))] = counts.get(str(int(key)), 0) + int(bucket["doc_count"])
            out[field] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
        return out

    def close(self) -> None:
        self.client.close()


def _cosine(opensearch_score: float) -> float:
    """OpenSearch's cosinesimil score is (1 + cos) / 2."""
    return 2.0 * opensearch_score - 1.0


def _item(src: dict[str, Any]) -> Item:
    """An item from its document's ``_source``."""
    import numpy as np

    texts = {f: np.asarray(src[f"{f}_vector"], dtype=np.float32) for f in TEXT_FIELDS if f"{f}_vector" in src}
    return Item(id=src["item_id"], vector=np.asarray(src["vector"], dtype=np.float32),
                metadata=src.get("metadata") or {}, image_key=src.get("image_key"),
                updated_at=float(src.get("updated_at") or 0), text_vectors=texts)

"""Marqo 2 (self-hosted) and Marqo Cloud on loopback, for the marqo backend's tests.

Marqo cannot run here (it needs Vespa and Docker), so this stands in for it. Each behaviour
comes from Marqo's own sources, cited as [n]:

[1] py-marqo 3.18.2 (PyPI ``marqo``): ``_httprequests.py`` (the ``x-api-key`` header; error
    bodies read as ``{message, code, type}``; a body that is not JSON becomes
    ``response_not_in_json_format``), ``index.py`` (the paths and body keys of search, add,
    get-documents with the ids as a GET body, delete-batch, stats, and ``GET /`` for the
    version check), ``marqo_cloud_instance_mappings.py`` (``GET /api/v2/indexes`` rows carry
    ``indexName``, ``indexStatus`` and ``marqoEndpoint``; READY and MODIFYING indexes serve),
    ``cloud_helpers.py`` (``GET /api/v2/indexes/{name}/status`` answers ``indexStatus``).
[2] Marqo server, ``src/marqo/tensor_search/api.py``: the routes, the error body
    ``{message, code, type, link}``, ``GET /`` -> ``{"message": "Welcome to Marqo", "version"}``,
    stats ``{numberOfDocuments, numberOfVectors, backend}``, TooManyFieldsError -> 400
    ``bad_request``, OperationConflictError -> 409; ``src/marqo/api/exceptions.py`` (codes).
[3] ``src/marqo/core/semi_structured_vespa_index/semi_structured_add_document_handler.py``:
    every new string field of an unstructured index (2.13+) becomes a lexical field and every
    new string list a string-array field, at most 100 of each, with that error message.
[4] Marqo API reference: Create Index (``filterStringMaxLength``; "index creation and deletion
    can not be called concurrently ... 409 OperationConflictError"; Cloud's control plane at
    ``https://api.marqo.ai/api/v2/indexes/{name}``), Modify Index (``inferenceType`` is
    ``marqo.CPU.small`` (deprecated), ``marqo.CPU.large`` or ``marqo.GPU``), Delete Documents
    (the ``documentDeletion`` answer; Vespa answers 200 for a missing id, so a missing document
    is reported ``deleted`` too), Get Documents (``results`` with ``_found``), Search
    (``searchableAttributes``, ``context.tensor``, ``efSearch``, limit/offset, the filter DSL),
    Add Documents (batches of at most 128, per-document errors, ``custom_vector`` mappings,
    documents of at most 100,000 bytes).
[5] Vespa's ``prenormalized-angular`` closeness, 1 / (1 + (1 - cos)), is tensor ``_score``.
[6] Marqo server, ``src/marqo/core/search/search_filter.py``: ``MarqoFilterStringParser.parse``
    reads the filter string with an explicit stack, and sets no limit on nesting or length.

What it keeps simple: LEXICAL scores are term frequency over the searched fields, not BM25;
ties come back in insertion order (a real engine gives no tie order). With ``cloud=True`` the
control plane answers on ``url`` and the indexes on a second loopback server, the
``marqoEndpoint``; a new index is ``CREATING`` for ``creating_polls`` status or list reads.
An ``api_key`` makes every call need ``x-api-key``. It records every request and can fail the
next ones (status, malformed JSON, delay) on demand.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any

from lookalike.api.surfaces.marqo import filter_dsl as marqo_filter
from lookalike.errors import BadRequest
from lookalike.filters import And, Filter, Not, Or, Range, Term
from tests.loopback import LoopbackServer

MAX_LIMIT = 1000
MAX_FIELDS = 100  # [3] MARQO_MAX_LEXICAL_FIELD_COUNT_UNSTRUCTURED, ..._STRING_ARRAY_...
MAX_DOC_BYTES = 100_000  # [4] MARQO_MAX_DOC_BYTES
VERSION = "2.24.3"
INFERENCE_TYPES = ("marqo.CPU.small", "marqo.CPU.large", "marqo.GPU")  # [4] Modify Index
RESERVED = ("_tensor_facets", "_highlights", "_score", "_found")


def _error(status: int, code: str, message: str) -> tuple[int, Any]:
    kind = "invalid_request" if status < 500 else "internal"
    return status, {"message": message, "code": code, "type": kind, "link": ""}  # [2]


def _equal(stored: Any, value: str | bool) -> bool:
    """Marqo's equality term: bool, short string, string-list member, or number."""
    if isinstance(value, bool):
        return isinstance(stored, bool) and stored is value
    if isinstance(stored, bool):
        return False
    if isinstance(stored, str):
        return stored == value
    if isinstance(stored, list):
        return value in stored
    if isinstance(stored, (int, float)):
        try:
            return stored == int(value)
        except ValueError:
            try:
                return stored == float(value)
            except ValueError:
                return False
    return False


def matches(node: Filter, doc: dict[str, Any], max_len: int) -> bool:
    if isinstance(node, Term):
        if node.field == "_id":
            return doc["_id"] == node.value
        stored = doc.get(node.field)
        if isinstance(stored, str) and len(stored) > max_len:
            return False  # [4] a string longer than filterStringMaxLength is not filterable
        return _equal(stored, node.value)  # type: ignore[arg-type]
    if isinstance(node, Range):
        stored = doc.get(node.field)
        if isinstance(stored, bool) or not isinstance(stored, (int, float)):
            return False
        return (node.lower is None or stored >= node.lower) and (node.upper is None or stored <= node.upper)
    if isinstance(node, And):
        return all(matches(n, doc, max_len) for n in node.items)
    if isinstance(node, Or):
        return any(matches(n, doc, max_len) for n in node.items)
    if isinstance(node, Not):
        return not matches(node.item, doc, max_len)
    raise TypeError(node)


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm else v


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class _DataPlane(LoopbackServer):
    """A Cloud index endpoint (``marqoEndpoint``): the data routes of its owner."""

    def __init__(self, owner: FakeMarqo) -> None:
        super().__init__()
        self.owner = owner

    def failure_body(self, status: int) -> Any:
        return self.owner.failure_body(status)

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        return self.owner.serve(method, path, params, headers, raw, data_plane=True)


class FakeMarqo(LoopbackServer):
    def __init__(self, cloud: bool = False, api_key: str | None = None, creating_polls: int = 1) -> None:
        super().__init__()
        self.cloud = cloud
        self.api_key = api_key
        self.creating_polls = creating_polls
        self.indexes: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.data = _DataPlane(self) if cloud else self

    def stop(self) -> None:
        if self.data is not self:
            self.data.stop()
        super().stop()

    def failure_body(self, status: int) -> Any:
        if status == 409:
            return _error(409, "operation_conflict_error", "Another index operation is in progress. "
                          "Please try again later")[1]  # [2] OperationConflictError
        return {"message": "injected failure", "code": "injected", "type": "internal", "link": ""}

    def all_requests(self) -> list[dict[str, Any]]:
        return self.requests + (self.data.requests if self.data is not self else [])

    def searches(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.all_requests() if r["path"].endswith("/search")]

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        return self.serve(method, path, params, headers, raw, data_plane=not self.cloud)

    # ------------------------------------------------------------ routing

    def serve(self, method: str, path: str, params: dict[str, str], headers: dict[str, str], raw: bytes,
              data_plane: bool) -> tuple[int, Any]:
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            return _error(401, "unauthorized", "Invalid API key")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _error(400, "bad_request", "invalid JSON")
        parts = [p for p in path.split("/") if p]
        with self.lock:
            if self.cloud and not data_plane:
                if parts[:3] == ["api", "v2", "indexes"]:
                    return self._control(method, parts[3:], body)
                return _error(404, "not_found", f"the control plane has no route {method} {path}")
            if not parts and method == "GET":
                return 200, {"message": "Welcome to Marqo", "version": VERSION}  # [2]
            if parts[:1] == ["indexes"]:
                if len(parts) <= 2 and not self.cloud:
                    return self._control(method, parts[1:], body)
                if len(parts) >= 3:
                    return self._data(method, parts[1], parts[2:], params, body)
        return _error(404, "not_found", f"no route {method} {path}")

    def _status(self, index: dict[str, Any]) -> str:
        index["polls"] += 1
        return "CREATING" if index["polls"] <= self.creating_polls else "READY"

    def _control(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if not rest and method == "GET":
            rows = []
            for name, index in sorted(self.indexes.items()):
                if self.cloud:  # [1] ListIndexesResponse
                    rows.append({"indexName": name, "indexStatus": self._status(index),
                                 "marqoEndpoint": self.data.url, "marqoVersion": VERSION,
                                 "numberOfShards": index["settings"].get("numberOfShards", 1)})
                else:  # [2] GET /indexes
                    rows.append({"indexName": name})
            return 200, {"results": rows}
        if self.cloud and len(rest) == 2 and rest[1] == "status" and method == "GET":
            index = self.indexes.get(rest[0])
            if index is None:
                return _error(404, "index_not_found", f"Index {rest[0]} not found")
            return 200, {"indexStatus": self._status(index)}  # [1] IndexStatusResponse
        if len(rest) != 1:
            return _error(404, "not_found", "unknown route")
        name = rest[0]
        if method == "POST":
            return self._create(name, body or {})
        if method == "DELETE":
            if self.indexes.pop(name, None) is None:
                return _error(404, "index_not_found", f"Index {name} not found")
            return 200, {"acknowledged": True}
        return _error(405, "method_not_allowed", "method not allowed")

    def _create(self, name: str, settings: dict[str, Any]) -> tuple[int, Any]:
        if name in self.indexes:
            return _error(409, "index_already_exists", f"Index {name} already exists")
        if self.cloud and any(i["polls"] <= self.creating_polls for i in self.indexes.values()):
            return 409, self.failure_body(409)  # [4] one creation or deletion at a time
        if settings.get("type") != "unstructured" or settings.get("model") != "no_model":
            return _error(400, "invalid_argument", "this fake serves unstructured no_model indexes only")
        props = settings.get("modelProperties") or {}
        if props.get("type") != "no_model" or not isinstance(props.get("dimensions"), int):
            return _error(400, "invalid_argument", "no_model needs modelProperties.dimensions")
        if (settings.get("annParameters") or {}).get("spaceType") != "prenormalized-angular":
            return _error(400, "invalid_argument", "this fake scores prenormalized-angular only")
        if "inferenceType" in settings and settings["inferenceType"] not in INFERENCE_TYPES:
            return _error(400, "invalid_argument", f"inferenceType must be one of {INFERENCE_TYPES}")
        self.indexes[name] = {"settings": settings, "dimension": props["dimensions"], "docs": {}, "polls": 0,
                              "max_len": int(settings.get("filterStringMaxLength", 50)),
                              "lexical": set(), "arrays": set()}
        return 200, {"acknowledged": True, "index": name}

    def _ready(self, name: str) -> dict[str, Any] | None:
        index = self.indexes.get(name)
        if index is None or (self.cloud and index["polls"] <= self.creating_polls):
            return None
        return index

    def _data(self, method: str, name: str, rest: list[str], params: dict[str, str],
              body: Any) -> tuple[int, Any]:
        index = self._ready(name)
        if index is None:
            return _error(404, "index_not_found", f"Index {name} not found")
        if rest == ["stats"] and method == "GET":
            docs = index["docs"].values()
            return 200, {"numberOfDocuments": len(index["docs"]),
                         "numberOfVectors": sum(1 for d in docs if "vector" in d),
                         "backend": {"memoryUsedPercentage": 1.0, "storageUsedPercentage": 1.0}}
        if rest == ["documents"] and method == "POST":
            return self._add(index, body)
        if rest == ["documents"] and method == "GET":
            if not isinstance(body, list) or not all(isinstance(i, str) for i in body):
                return _error(400, "invalid_argument", "document_ids must be a list of strings")
            return 200, {"results": [self._get(index, i, params) for i in body]}
        if rest == ["documents", "delete-batch"] and method == "POST":
            if not isinstance(body, list):
                return _error(400, "invalid_argument", "expected a list of ids")
            for doc_id in body:
                index["docs"].pop(doc_id, None)
            return 200, {"index_name": name, "status": "succeeded", "type": "documentDeletion",
                         "details": {"receivedDocumentIds": len(body), "deletedDocuments": len(body)},
                         "items": [{"_id": i, "status": 200, "result": "deleted"} for i in body]}
        if len(rest) == 2 and rest[0] == "documents" and method == "GET":
            doc = self._get(index, rest[1], params)
            if not doc["_found"]:
                return _error(404, "document_not_found", f"Document {rest[1]} not found")
            return 200, {k: v for k, v in doc.items() if k != "_found"}
        if rest == ["search"] and method == "POST":
            return self._search(index, body or {})
        return _error(404, "not_found", "unknown route")

    # ------------------------------------------------------------ documents

    @staticmethod
    def _get(index: dict[str, Any], doc_id: str, params: dict[str, str]) -> dict[str, Any]:
        doc = index["docs"].get(doc_id)
        if doc is None:
            return {"_id": doc_id, "_found": False}
        out = {**doc["fields"], "_id": doc_id, "_found": True}
        if params.get("expose_facets") in ("true", "True") and "vector" in doc:
            out["_tensor_facets"] = [{doc["vector_field"]: "", "_embedding": doc["vector"]}]
        return out

    def _add(self, index: dict[str, Any], body: Any) -> tuple[int, Any]:
        documents = (body or {}).get("documents")
        if not isinstance(documents, list):
            return _error(400, "invalid_argument", "documents must be a list")
        if len(documents) > 128:
            return _error(400, "invalid_argument", "Number of docs in add documents request (129) exceeds limit")
        mappings = body.get("mappings") or {}
        tensor_fields = body.get("tensorFields") or []
        # [3] new fields grow the schema, up to the limits, before anything is written
        lexical, arrays = set(index["lexical"]), set(index["arrays"])
        for doc in documents:
            for key, value in (doc.items() if isinstance(doc, dict) else ()):
                if key == "_id" or mappings.get(key, {}).get("type") == "custom_vector":
                    continue
                for kind, names in (("lexical", lexical), ("string array", arrays)):
                    wanted = isinstance(value, str) if kind == "lexical" else isinstance(value, list)
                    if wanted and key not in names:
                        if len(names) >= MAX_FIELDS:
                            return _error(400, "bad_request", (
                                f"Index has {len(names)} {kind} fields. Your request to add {key} as a {kind} "
                                f"field is rejected since it exceeds the limit of {MAX_FIELDS}."))
                        names.add(key)
        index["lexical"], index["arrays"] = lexical, arrays
        items = []
        for doc in documents:
            problem = self._validate(index, doc, mappings, tensor_fields)
            if problem:
                items.append({"_id": doc.get("_id"), "status": 400, "message": problem, "code": "invalid_argument"})
                continue
            stored: dict[str, Any] = {"fields": {}}
            for key, value in doc.items():
                if mappings.get(key, {}).get("type") == "custom_vector" and key in tensor_fields:
                    stored["vector"] = _unit([float(x) for x in value["vector"]])
                    stored["vector_field"] = key
                elif key != "_id":
                    stored["fields"][key] = value
            stored["seq"] = index.setdefault("seq", 0)
            index["seq"] += 1
            index["docs"][doc["_id"]] = stored
            items.append({"_id": doc["_id"], "status": 200})
        return 200, {"errors": any(i["status"] != 200 for i in items), "items": items, "processingTimeMs": 1}

    @staticmethod
    def _validate(index: dict[str, Any], doc: Any, mappings: dict[str, Any], tensor_fields: list[str]) -> str:
        if not isinstance(doc, dict) or not isinstance(doc.get("_id"), str) or not doc["_id"]:
            return "every document needs a string _id"
        if len(json.dumps(doc)) > MAX_DOC_BYTES:
            return f"Document exceeds {MAX_DOC_BYTES} bytes"
        for key, value in doc.items():
            if key == "_id":
                continue
            if key.startswith("__") or "::" in key or key in RESERVED:
                return f"invalid field name {key}"
            if mappings.get(key, {}).get("type") == "custom_vector":
                vector = value.get("vector") if isinstance(value, dict) else None
                if not isinstance(vector, list) or len(vector) != index["dimension"]:
                    return f"custom vector of {key} must have {index['dimension']} dimensions"
            elif isinstance(value, list):
                if not all(isinstance(v, str) for v in value):
                    return "Unstructured Marqo index only supports string lists"
            elif not isinstance(value, (str, int, float, bool)):
                return f"Field content of type {type(value).__name__} is not of valid content type"
        return ""

    # ------------------------------------------------------------ search

    def _search(self, index: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        limit, offset = int(body.get("limit", 10)), int(body.get("offset", 0))
        if not 1 <= limit <= MAX_LIMIT or offset < 0 or limit + offset > 10000:
            return _error(400, "invalid_argument", "limit must be 1-1000 and limit + offset at most 10000")
        method = body.get("searchMethod", "TENSOR")
        if method == "TENSOR" and "efSearch" in body and body["efSearch"] <= limit:
            return _error(400, "invalid_argument", "efSearch must be greater than limit")
        searched = body.get("searchableAttributes")
        candidates = index["docs"].items()
        if body.get("filter"):
            try:
                # Marqo's own parser keeps a stack, not a recursion: no limit of nesting or length [6]
                node = marqo_filter.parse(body["filter"], bounded=False)
            except BadRequest as exc:
                return _error(400, "invalid_argument", f"Error parsing filter string: {exc}")
            candidates = [(i, d) for i, d in candidates
                          if matches(node, {"_id": i, **d["fields"]}, index["max_len"])]
        scored: list[tuple[float, int, str, dict[str, Any]]] = []
        if method == "TENSOR":
            tensor = (body.get("context") or {}).get("tensor") or []
            if not tensor or body.get("q"):
                return _error(400, "invalid_argument", "this fake searches with context.tensor only")
            query = [0.0] * index["dimension"]
            for part in tensor:
                if len(part["vector"]) != index["dimension"]:
                    return _error(400, "invalid_argument", "context vector has the wrong dimension")
                query = [q + part.get("weight", 1) * float(x) for q, x in zip(query, part["vector"], strict=True)]
            query = _unit(query)
            for doc_id, doc in candidates:
                if "vector" in doc and (searched is None or doc["vector_field"] in searched):
                    cos = sum(a * b for a, b in zip(query, doc["vector"], strict=True))
                    scored.append((1.0 / (2.0 - cos), doc["seq"], doc_id, doc))  # [5]
        elif method == "LEXICAL":
            words = set(_words(str(body.get("q") or "")))
            for doc_id, doc in candidates:
                text = [w for k, v in doc["fields"].items() if searched is None or k in searched
                        for s in (v if isinstance(v, list) else [v]) if isinstance(s, str) for w in _words(s)]
                score = sum(text.count(w) for w in words) / (1 + len(text)) ** 0.5
                if score > 0:
                    scored.append((score, doc["seq"], doc_id, doc))
        else:
            return _error(400, "invalid_argument", "searchMethod must be TENSOR or LEXICAL")
        scored.sort(key=lambda row: (-row[0], row[1]))  # ties in insertion order
        wanted = body.get("attributesToRetrieve")
        hits = []
        for score, _, doc_id, doc in scored[offset:offset + limit]:
            fields = doc["fields"] if wanted is None else {k: v for k, v in doc["fields"].items() if k in wanted}
            hits.append({**fields, "_id": doc_id, "_score": score, "_highlights": []})
        return 200, {"hits": hits, "limit": limit, "offset": offset, "processingTimeMs": 1}

"""A small OpenSearch on loopback: the REST calls and query DSL Lookalike's backend sends.

Implements index create/delete, _create/_doc/_update, _bulk, _count and _search with knn
(cosinesimil, with filter), dis_max, bool, term, range, exists, ids, multi_match (a simple
term-frequency score standing in for BM25), min_score, sort, from/size and terms
aggregations, so the backend runs the same contract suite as the embedded index. It records
every request and can fail the next ones (status, malformed JSON, delay) on demand.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from typing import Any

from tests.loopback import LoopbackServer


def _values(doc: dict[str, Any], path: str) -> list[Any]:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return []
        node = node[part]
    return node if isinstance(node, list) else [node]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


class Store:
    def __init__(self) -> None:
        self.indices: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()

    # Each query returns {doc_id: score} of the documents it matches.
    def evaluate(self, docs: dict[str, dict[str, Any]], query: dict[str, Any] | None) -> dict[str, float]:
        if not query or "match_all" in query:
            return dict.fromkeys(docs, 1.0)
        (kind, spec), = query.items()
        if kind == "knn":
            (field, params), = spec.items()
            allowed = self.evaluate(docs, params.get("filter")) if params.get("filter") else dict.fromkeys(docs, 1.0)
            scored = {i: (1 + _cos(docs[i][field], params["vector"])) / 2 for i in allowed if field in docs[i]}
            best = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[: params["k"]]
            return dict(best)
        if kind == "dis_max":
            out: dict[str, float] = {}
            for sub in spec["queries"]:
                for i, s in self.evaluate(docs, sub).items():
                    out[i] = max(out.get(i, 0.0), s)
            return out
        if kind == "bool":
            result = dict.fromkeys(docs, 0.0)
            for clause in spec.get("must", []):
                matched = self.evaluate(docs, clause)
                result = {i: result[i] + matched[i] for i in result if i in matched}
            for clause in spec.get("filter", []):
                matched = self.evaluate(docs, clause)
                result = {i: s for i, s in result.items() if i in matched}
            should = spec.get("should", [])
            if should:
                hits: dict[str, int] = {}
                for clause in should:
                    for i, s in self.evaluate(docs, clause).items():
                        hits[i] = hits.get(i, 0) + 1
                        if i in result:
                            result[i] += s
                need = spec.get("minimum_should_match", 0 if spec.get("must") or spec.get("filter") else 1)
                result = {i: s for i, s in result.items() if hits.get(i, 0) >= need}
            for clause in spec.get("must_not", []):
                excluded = self.evaluate(docs, clause)
                result = {i: s for i, s in result.items() if i not in excluded}
            return {i: (s or 1.0) for i, s in result.items()}
        if kind == "term":
            (field, value), = spec.items()
            return {i: 1.0 for i, d in docs.items() if any(self._equal(v, value) for v in _values(d, field))}
        if kind == "range":
            (field, bounds), = spec.items()
            return {i: 1.0 for i, d in docs.items() if any(
                ("gte" not in bounds or v >= bounds["gte"]) and ("lte" not in bounds or v <= bounds["lte"])
                for v in _values(d, field) if isinstance(v, (int, float)) and not isinstance(v, bool))}
        if kind == "exists":
            return {i: 1.0 for i, d in docs.items() if _values(d, spec["field"])}
        if kind == "ids":
            return {i: 1.0 for i in docs if i in spec["values"]}
        if kind == "multi_match":
            terms = re.findall(r"\w+", spec["query"].lower())
            out = {}
            for i, d in docs.items():
                words = [w for f in spec["fields"] for v in _values(d, f) for w in re.findall(r"\w+", str(v).lower())]
                score = float(sum(words.count(t) for t in terms))
                if score:
                    out[i] = score
            return out
        raise ValueError(f"unsupported query {kind}")

    @staticmethod
    def _equal(stored: Any, value: Any) -> bool:
        if isinstance(value, bool) or isinstance(stored, bool):
            return stored is value
        return stored == value

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        docs = self.indices[index]["docs"]
        scored = self.evaluate(docs, body.get("query"))
        if "min_score" in body:
            scored = {i: s for i, s in scored.items() if s >= body["min_score"]}
        ordered = sorted(scored.items(), key=lambda kv: (-kv[1], docs[kv[0]].get("item_id", kv[0])))
        start, size = body.get("from", 0), body.get("size", 10)
        excludes = set(body.get("_source", {}).get("excludes", []))
        hits = [{"_index": index, "_id": i, "_score": s,
                 "_source": {k: v for k, v in docs[i].items() if k not in excludes}}
                for i, s in ordered[start:start + size]]
        result: dict[str, Any] = {"took": 1, "hits": {"total": {"value": len(ordered), "relation": "eq"},
                                                      "hits": hits}}
        if "aggs" in body:
            result["aggregations"] = {}
            for name, agg in body["aggs"].items():
                counts: dict[Any, int] = {}
                for i in scored:
                    for v in set(_values(docs[i], agg["terms"]["field"])):
                        counts[v] = counts.get(v, 0) + 1
                buckets = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: agg["terms"].get("size", 10)]
                result["aggregations"][name] = {"buckets": [{"key": k, "doc_count": n} for k, n in buckets]}
        return result


class FakeOpenSearch(LoopbackServer):
    def __init__(self, basic_auth: tuple[str, str] | None = None) -> None:
        self.store = Store()
        self.basic_auth = basic_auth
        super().__init__()

    def failure_body(self, status: int) -> Any:
        return {"error": {"type": "injected", "reason": "injected"}, "status": status}

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        if self.basic_auth:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if headers.get("Authorization") != expected:
                return 401, {"error": {"type": "security_exception"}, "status": 401}
        try:
            return self._route(method, path.strip("/").split("/"), raw, params)
        except KeyError:
            return 404, {"error": {"type": "index_not_found_exception"}, "status": 404}

    def _route(self, method: str, parts: list[str], raw: bytes, params: dict[str, str]) -> tuple[int, Any]:
        store = self.store
        with store.lock:
            if parts == [""]:  # the root API's shape (GET /), as the real node answers it
                return 200, {"name": "fake", "version": {"distribution": "opensearch", "number": "2.19.1"}}
            if parts == ["_bulk"]:
                return 200, self._bulk(raw)
            body = json.loads(raw) if raw else {}
            index = parts[0]
            if len(parts) == 1:
                if method == "PUT":
                    if index in store.indices:
                        return 400, {"error": {"type": "resource_already_exists_exception"}, "status": 400}
                    store.indices[index] = {"mapping": body, "docs": {}}
                    return 200, {"acknowledged": True}
                if method == "DELETE":
                    del store.indices[index]
                    return 200, {"acknowledged": True}
            docs = store.indices[index]["docs"]
            action = parts[1]
            if action == "_create":
                if parts[2] in docs:
                    return 409, {"error": {"type": "version_conflict_engine_exception"}, "status": 409}
                docs[parts[2]] = body
                return 201, {"result": "created"}
            if action == "_doc":
                if method == "GET":
                    found = parts[2] in docs
                    return (200 if found else 404), {"found": found, **({"_source": docs[parts[2]]} if found else {})}
                if method == "DELETE":
                    existed = docs.pop(parts[2], None) is not None
                    return (200 if existed else 404), {"result": "deleted" if existed else "not_found"}
            if action == "_update":
                docs[parts[2]].update(body["doc"])
                return 200, {"result": "updated"}
            if action == "_count":
                return 200, {"count": len(store.evaluate(docs, body.get("query")))}
            if action == "_search":
                return 200, store.search(index, body)
        return 400, {"error": {"type": "unsupported"}, "status": 400}

    def _bulk(self, raw: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        items, pos = [], 0
        while pos < len(lines):
            (op, meta), = lines[pos].items()
            docs = self.store.indices[meta["_index"]]["docs"]
            if op == "index":
                docs[meta["_id"]] = lines[pos + 1]
                items.append({"index": {"_id": meta["_id"], "status": 201, "result": "created"}})
                pos += 2
            else:
                existed = docs.pop(meta["_id"], None) is not None
                items.append({"delete": {"_id": meta["_id"], "result": "deleted" if existed else "not_found"}})
                pos += 1
        return {"took": 1, "errors": False, "items": items}


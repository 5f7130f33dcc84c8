"""The OpenSearch backend's wire contract, on the real engine behind a fault proxy: the exact
requests it sends (mapping, bulk lines, query DSL, auth headers), and what it does when the
node answers 429/5xx, stalls, sends a malformed body or drops the connection."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from lookalike.contracts import CollectionSpec, Item, TextQuery, VectorQuery
from lookalike.errors import BackendUnavailable, ConfigurationError
from lookalike.filters import Range, Term
from lookalike_opensearch.backend import OpenSearchBackend, OpenSearchOptions
from tests.contract.test_search_backend_contract import REAL_OPENSEARCH
from tests.fault_proxy import FaultProxy

pytestmark = REAL_OPENSEARCH


@pytest.fixture()
def fake() -> Iterator[FaultProxy]:
    """The real node (OPENSEARCH_URL) behind a fault proxy; this test's indices removed after."""
    server = FaultProxy(os.environ["OPENSEARCH_URL"])
    server.prefix = f"w{uuid.uuid4().hex[:8]}"  # type: ignore[attr-defined]
    yield server
    server.stop()
    requests.delete(f"{os.environ['OPENSEARCH_URL']}/{server.prefix}-*", timeout=30)  # type: ignore[attr-defined]


def backend_for(fake: FaultProxy, **options: object) -> OpenSearchBackend:
    return OpenSearchBackend(OpenSearchOptions(url=fake.url, refresh="true", backoff_seconds=0,
                                               index_prefix=fake.prefix, **options))  # type: ignore[attr-defined]


def requests_to(fake: FaultProxy, path_part: str) -> list[dict]:
    return [r for r in fake.requests if path_part in r["path"]]


def test_mapping_and_query_dsl(fake: FaultProxy) -> None:
    b = backend_for(fake, hnsw_m=24)
    b.create_collection("acme", CollectionSpec(name="shoes", model_id="m", dimension=3, text_model_id="t",
                                               text_dimension=2))
    index = b._index("acme", "shoes")
    create = next(r for r in fake.requests if r["method"] == "PUT" and r["path"] == f"/{index}")
    mapping = json.loads(create["body"])
    assert mapping["settings"] == {"index": {"knn": True}}
    vector = mapping["mappings"]["properties"]["vector"]
    assert vector == {"type": "knn_vector", "dimension": 3, "method": {
        "name": "hnsw", "space_type": "cosinesimil", "engine": "lucene",
        "parameters": {"m": 24, "ef_construction": 128}}}
    assert mapping["mappings"]["properties"]["caption_vector"]["dimension"] == 2
    assert mapping["mappings"]["properties"]["caption"] == {"type": "text"}

    written = Item("a", np.array([1, 0, 0], dtype=np.float32), {"color": "red", "price": 5})
    b.upsert("acme", "shoes", [written])
    bulk = requests_to(fake, "/_bulk")[-1]
    headers = {k.lower(): v for k, v in bulk["headers"].items()}
    assert bulk["params"]["refresh"] == "true" and headers["content-type"].startswith("application/")
    action, doc = (json.loads(line) for line in bulk["body"].splitlines()[:2])
    # versioned by when the write began, so OpenSearch refuses an older write landing late (issue 26)
    assert action == {"index": {"_index": index, "_id": "a", "version": round(written.updated_at * 1_000_000),
                                "version_type": "external_gte"}}
    assert doc["s"] == {"color": ["red"]} and doc["n"] == {"price": [5.0]} and doc["vector"] == [1.0, 0.0, 0.0]

    b.search("acme", "shoes", VectorQuery(vector=np.array([1, 0, 0], dtype=np.float32), limit=5, offset=5,
                                          filter=Term("color", "red"), exclude_ids=frozenset({"x"})))
    query = json.loads(requests_to(fake, "/_search")[-1]["body"])
    # k-NN pages are cut here: one more than the page needs, so a tie at the cut is seen.
    assert query["size"] == 11 and query["from"] == 0
    assert query["sort"] == [{"_score": "desc"}, {"item_id": "asc"}]
    knn = query["query"]["knn"]["vector"]
    assert knn["k"] == 400 and knn["vector"] == [1.0, 0.0, 0.0]  # ef_search candidates, the best 11 returned
    assert knn["filter"] == {"bool": {"filter": [{"term": {"s.color": "red"}}],
                                      "must_not": [{"ids": {"values": ["x"]}}]}}

    b.text_search("acme", "shoes", TextQuery(text="red", vector=np.array([1, 0], dtype=np.float32), limit=3))
    query = json.loads(requests_to(fake, "/_search")[-1]["body"])
    assert [list(q["knn"]) for q in query["query"]["dis_max"]["queries"]] == [["caption_vector"], ["prompt_vector"]]
    b.text_search("acme", "shoes", TextQuery(text="red shoes", fields=("caption",), filter=Range("price", 1, 9)))
    query = json.loads(requests_to(fake, "/_search")[-1]["body"])
    assert query["query"] == {"bool": {
        "must": [{"multi_match": {"query": "red shoes", "fields": ["caption"], "operator": "or"}}],
        "filter": [{"bool": {"filter": [{"range": {"n.price": {"gte": 1, "lte": 9}}}]}}]}}
    b.facets("acme", "shoes", ["color"])
    aggs = json.loads(requests_to(fake, "/_search")[-1]["body"])["aggs"]
    assert aggs["s0"]["terms"] == {"field": "s.color", "size": 100, "order": [{"_count": "desc"}, {"_key": "asc"}]}


def test_retries_429_and_5xx_with_backoff_then_gives_up(fake: FaultProxy) -> None:
    b = backend_for(fake, max_retries=2)
    fake.fail_next("status", 429)
    fake.fail_next("status", 503)
    assert b.list_collections("acme") == []  # two failures, then success on the third try
    fake.fail_next("status", 502, times=3)
    with pytest.raises(BackendUnavailable):
        b.list_collections("acme")
    fake.fail_next("status", 500)  # not retried
    before = len(fake.requests)
    with pytest.raises(BackendUnavailable):
        b.list_collections("acme")
    assert len(fake.requests) == before + 1


def test_timeouts_malformed_json_and_auth(fake: FaultProxy) -> None:
    b = backend_for(fake, max_retries=0, timeout_seconds=0.3)
    b.list_collections("warm-up")
    fake.fail_next("delay", 1.0)
    with pytest.raises(BackendUnavailable):
        b.list_collections("acme")
    fake.fail_next("malformed")
    with pytest.raises(BackendUnavailable):
        b.list_collections("acme")
    assert b.get_collection("acme", "missing") is None  # a 404 document is just absent


def test_basic_auth_and_secrets(fake: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The password is read from its secret and sent as Basic auth; a 401 names the credentials.
    (The test node runs without the security plugin: the 401 is the proxy's, as a secured
    cluster answers a wrong password.)"""
    import base64

    monkeypatch.setenv("OS_PASSWORD", "s3cret-password")
    ok = backend_for(fake, auth="basic", username="admin", password_env="OS_PASSWORD")
    assert ok.list_collections("acme") == []
    expected = "Basic " + base64.b64encode(b"admin:s3cret-password").decode()
    assert {r["headers"].get("Authorization") for r in fake.requests} == {expected}
    fake.fail_next("status", 401)
    bad = backend_for(fake, auth="basic", username="admin", password_env="OS_PASSWORD", max_retries=0)
    with pytest.raises(BackendUnavailable, match="credentials"):
        bad.list_collections("acme")
    with pytest.raises(ConfigurationError):
        backend_for(fake, auth="basic", username="admin")


def test_a_dropped_connection_is_retried(fake: FaultProxy) -> None:
    b = backend_for(fake, max_retries=1)
    b.list_collections("warm-up")
    fake.fail_next("drop")
    assert b.list_collections("acme") == []  # the retry reached the node
    fake.fail_next("drop", times=2)
    with pytest.raises(BackendUnavailable):
        b.list_collections("acme")


def test_sigv4_signs_requests(fake: FaultProxy) -> None:
    b = backend_for(fake, auth="sigv4", region="eu-west-1", service="es")
    b.list_collections("acme")
    headers = fake.requests[-1]["headers"]
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=testing/") and "/eu-west-1/es/aws4_request" in auth
    assert "Signature=" in auth and "x-amz-date" in {k.lower() for k in headers}

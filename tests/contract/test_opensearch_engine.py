"""The OpenSearch backend on the real engine (the node `make test` starts): what a review of the
plugin against OpenSearch's documentation and source found, each on OpenSearch itself."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from lookalike.contracts import CollectionSpec, Item, TextQuery, VectorQuery
from lookalike.errors import BadRequest, ConfigurationError
from lookalike_opensearch.backend import MAX_RESULT_WINDOW, OpenSearchBackend, OpenSearchOptions
from tests.conftest import report
from tests.contract.test_search_backend_contract import REAL_OPENSEARCH

pytestmark = REAL_OPENSEARCH


def vec(*xs: float) -> np.ndarray:
    v = np.zeros(4, dtype=np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


@pytest.fixture()
def backend() -> Iterator[OpenSearchBackend]:
    b = OpenSearchBackend(OpenSearchOptions(url=os.environ["OPENSEARCH_URL"], refresh="true", max_retries=1,
                                            backoff_seconds=0, index_prefix=f"t{uuid.uuid4().hex[:8]}"))
    b.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=4))
    yield b
    b.delete_collection("t", "c")
    b.close()


def test_the_node_is_the_real_engine(backend: OpenSearchBackend, request: pytest.FixtureRequest) -> None:
    info = backend._request("GET", "/")
    plugins = backend._request("GET", "/_cat/plugins", params={"format": "json"})
    report(request, f"OpenSearch {info['version']['number']} ({info['version']['distribution']}), plugins "
                    f"{sorted({p['component'] + ' ' + p['version'] for p in plugins})}")
    assert info["version"]["distribution"] == "opensearch"
    assert "opensearch-knn" in {p["component"] for p in plugins}


def test_item_ids_with_url_characters_round_trip(backend: OpenSearchBackend) -> None:
    ids = ["a:b@c=d+e", "x.y-z_1", "plus+plus", "at@at"]
    backend.upsert("t", "c", [Item(i, vec(1, n)) for n, i in enumerate(ids)])
    for item_id in ids:
        item = backend.get_item("t", "c", item_id)
        assert item is not None and item.id == item_id
    assert backend.get_item("t", "c", "a:b@c=d e") is None  # "+" is not a space


def test_pages_past_the_result_window_are_refused_not_502(backend: OpenSearchBackend) -> None:
    backend.upsert("t", "c", [Item("a", vec(1))])
    with pytest.raises(BadRequest, match=str(MAX_RESULT_WINDOW)):
        backend.search("t", "c", VectorQuery(vector=vec(1), limit=100, offset=MAX_RESULT_WINDOW - 50))
    with pytest.raises(BadRequest, match=str(MAX_RESULT_WINDOW)):
        backend.text_search("t", "c", TextQuery(text="x", limit=100, offset=MAX_RESULT_WINDOW))
    page = backend.search("t", "c", VectorQuery(vector=vec(1), limit=100, offset=MAX_RESULT_WINDOW - 100))
    assert page.hits == []


def test_an_item_error_that_can_never_succeed_is_permanent(backend: OpenSearchBackend) -> None:
    """`a` as a number in one item and as an object in another is a mapping conflict: 400, not a
    retryable 502 that an ingest would retry for ever."""
    backend.upsert("t", "c", [Item("first", vec(1), {"a": 1})])
    with pytest.raises(BadRequest, match="refused item 'second'"):
        backend.upsert("t", "c", [Item("second", vec(0, 1), {"a.b": 2})])
    assert backend.get_item("t", "c", "first") is not None


def test_create_is_idempotent_after_a_put_that_timed_out_but_succeeded(backend: OpenSearchBackend) -> None:
    spec = CollectionSpec(name="late", model_id="m", dimension=4)
    # As if an earlier PUT of the index had timed out on our side after the engine created it.
    backend._request("PUT", f"/{backend._index('t', 'late')}", backend.mapping(spec))
    info = backend.create_collection("t", spec)
    assert info.name == "late" and backend.get_collection("t", "late") is not None
    backend.upsert("t", "late", [Item("a", vec(1))])
    assert [h.id for h in backend.search("t", "late", VectorQuery(vector=vec(1), limit=1)).hits] == ["a"]
    backend.delete_collection("t", "late")


def test_faiss_is_refused_on_a_cluster_without_faiss_cosine(backend: OpenSearchBackend,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    faiss = OpenSearchBackend(OpenSearchOptions(url=os.environ["OPENSEARCH_URL"], engine="faiss",
                                                index_prefix=backend.options.index_prefix))
    monkeypatch.setattr(faiss, "_version", lambda: (2, 17, 1))  # what Serverless and older domains run
    with pytest.raises(ConfigurationError, match=r"2\.19\.0"):
        faiss.create_collection("t", CollectionSpec(name="f", model_id="m", dimension=4))
    assert faiss._record("t", "f") is None


def test_serverless_is_refused_at_configuration() -> None:
    with pytest.raises(ConfigurationError, match="Serverless"):
        OpenSearchBackend(OpenSearchOptions(url="https://x.aoss.amazonaws.com", auth="sigv4", service="aoss"))

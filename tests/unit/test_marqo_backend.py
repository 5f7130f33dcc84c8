"""The marqo backend on the wire: the exact requests it sends and how it meets Marqo's failures."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from lookalike.api.surfaces import marqo_filter
from lookalike.contracts import CollectionSpec, Item, TextQuery, VectorQuery
from lookalike.errors import BackendUnavailable, BadRequest, ConfigurationError, NotFound
from lookalike.filters import And, Filter, Not, Or, Range, Term, matches
from lookalike_marqo.backend import MarqoBackend, MarqoOptions
from lookalike_marqo.query import compile_filter, filter_fields, marqo_field
from tests.fake_marqo import FakeMarqo
from tests.fake_marqo import matches as marqo_matches

KEY = "mq-secret-key"
DIM = 4


@pytest.fixture()
def marqo() -> Iterator[FakeMarqo]:
    server = FakeMarqo(api_key=KEY)
    yield server
    server.stop()


@pytest.fixture()
def backend(marqo: FakeMarqo, monkeypatch: pytest.MonkeyPatch) -> Iterator[MarqoBackend]:
    monkeypatch.setenv("MARQO_API_KEY", KEY)
    b = MarqoBackend(MarqoOptions(url=marqo.url, max_retries=2, backoff_seconds=0, read_timeout=0.5))
    yield b
    b.close()


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def spec() -> CollectionSpec:
    return CollectionSpec(name="c", model_id="m", dimension=DIM)


def last(marqo: FakeMarqo, suffix: str) -> dict:
    return [r for r in marqo.requests if r["path"].endswith(suffix)][-1]


def test_index_documents_and_search_on_the_wire(backend: MarqoBackend, marqo: FakeMarqo) -> None:
    backend.create_collection("t", spec())
    index = backend.index_name("t", "c")
    create = json.loads(last(marqo, f"/indexes/{index}")["body"])
    assert create["model"] == "no_model" and create["type"] == "unstructured"
    assert create["modelProperties"] == {"type": "no_model", "dimensions": DIM}
    assert create["annParameters"]["spaceType"] == "prenormalized-angular"
    assert all(r["headers"].get("x-api-key") == KEY for r in marqo.requests)

    backend.upsert("t", "c", [Item("a", unit(1, 0.2), {"color": "red", "tags": ["x", "y"], "n": 3,
                                                       "odd key": "v"})])
    add = json.loads(last(marqo, f"/indexes/{index}/documents")["body"])
    assert add["tensorFields"] == ["lookalike_vector"]
    assert add["mappings"] == {"lookalike_vector": {"type": "custom_vector"}}
    doc = add["documents"][0]
    assert doc["_id"] == "a" and doc["m_color"] == "red" and doc["m_tags"] == ["x", "y"] and doc["m_n"] == 3
    assert doc[marqo_field("odd key")] == "v" and marqo_field("odd key").startswith("x_")
    assert len(doc["lookalike_vector"]["vector"]) == DIM

    page = backend.search("t", "c", VectorQuery(vector=unit(1), limit=5, filter=Term("color", "red")))
    body = marqo.searches()[-1]
    assert body["searchMethod"] == "TENSOR" and "q" not in body
    assert body["context"]["tensor"][0]["vector"] == pytest.approx(unit(1).tolist())
    assert body["filter"] == "lookalike_kind:item AND m_color:red"
    assert body["attributesToRetrieve"] == ["lookalike_item"] and body["efSearch"] > body["limit"]
    # Marqo's closeness 1 / (2 - cos) comes back as cosine similarity.
    assert page.hits[0].score == pytest.approx(float(unit(1) @ unit(1, 0.2)), abs=1e-5)
    assert page.hits[0].metadata["odd key"] == "v"

    got = backend.get_item("t", "c", "a")
    assert got is not None and np.allclose(got.vector, unit(1, 0.2), atol=1e-6)
    assert last(marqo, "/documents/a")["params"] == {"expose_facets": "true"}


def test_keyword_search_is_lexical_and_kept_to_the_named_fields(backend: MarqoBackend, marqo: FakeMarqo) -> None:
    backend.create_collection("t", spec())
    backend.upsert("t", "c", [Item("cap", unit(1), {"caption": "a red hat"}),
                              Item("meta", unit(1), {"color": "red", "caption": "a blue hat"})])
    page = backend.text_search("t", "c", TextQuery(text="Red!", limit=10))
    assert [h.id for h in page.hits] == ["cap"] and page.total == 1  # "meta" matched only by its color
    body = marqo.searches()[-1]
    assert body["searchMethod"] == "LEXICAL" and body["q"] == "red"
    with pytest.raises(BadRequest):
        backend.text_search("t", "c", TextQuery(text="x", vector=np.ones(3, dtype=np.float32)))


@pytest.mark.parametrize("flt", [
    Term("color", "red"), Term("color", "dark red"), Term("price", 50), Term("price", "50"), Term("price", 2.5),
    Term("sale", True), Term("sale", False), Term("tags", "b"), Term("n", -3), Term("weird", 'a(b)[c]:"d\\e'),
    Range("price", 10, None), Range("price", None, 2.5), Range("price", None, None), Range("n", -5, -1),
    And((Term("color", "red"), Not(Term("tags", "a")))), Or((Term("sale", False), Range("price", 40, 60))),
    Not(Or((Term("color", "blue"), Term("missing", "x")))),
])
def test_filter_dsl_round_trips_through_marqos_grammar(flt: Filter) -> None:
    """Compiled filters parse back (Marqo's DSL) and select what the reference semantics select."""
    items = [
        {"color": "red", "price": 50, "tags": ["a", "b"], "sale": True, "n": -3},
        {"color": "dark red", "price": 2.5, "tags": ["b"], "sale": False, "weird": 'a(b)[c]:"d\\e'},
        {"color": "blue", "price": "50", "n": 7},
        {"price": 60, "sale": False},
    ]
    parsed = marqo_filter.parse(compile_filter(flt))
    docs = [{"_id": str(n), **filter_fields(m)} for n, m in enumerate(items)]
    got = [n for n, d in enumerate(docs) if marqo_matches(parsed, d, 256)]
    want = [n for n, m in enumerate(items) if matches(flt, m)]
    assert got == want


def test_retries_then_gives_up(backend: MarqoBackend, marqo: FakeMarqo) -> None:
    backend.create_collection("t", spec())
    marqo.fail_next("status", 429)
    marqo.fail_next("status", 503)
    assert backend.get_collection("t", "c") is not None  # two retries were enough
    marqo.fail_next("status", 502, times=3)
    with pytest.raises(BackendUnavailable, match="502"):
        backend.get_collection("t", "c")
    marqo.fail_next("status", 500, times=3)
    with pytest.raises(BackendUnavailable):
        backend.search("t", "c", VectorQuery(vector=unit(1)))


@pytest.mark.parametrize(("kind", "value", "error"), [
    ("malformed", None, "malformed JSON"),
    ("delay", 1.0, "did not answer in time"),
])
def test_malformed_and_slow_answers(backend: MarqoBackend, marqo: FakeMarqo, kind: str, value: float | None,
                                    error: str) -> None:
    backend.create_collection("t", spec())
    marqo.fail_next(kind, value, times=3)
    with pytest.raises(BackendUnavailable, match=error):
        backend.search("t", "c", VectorQuery(vector=unit(1)))


def test_refused_key_missing_index_and_rejected_documents(marqo: FakeMarqo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARQO_API_KEY", "wrong")
    wrong = MarqoBackend(MarqoOptions(url=marqo.url, max_retries=0))
    with pytest.raises(BackendUnavailable, match="refused the credentials"):
        wrong.list_collections("t")
    monkeypatch.setenv("MARQO_API_KEY", KEY)
    b = MarqoBackend(MarqoOptions(url=marqo.url, max_retries=0))
    with pytest.raises(NotFound):
        b.search("t", "c", VectorQuery(vector=unit(1)))
    b.create_collection("t", spec())
    b.upsert("t", "c", [Item("keep", unit(1))])
    index = b.index_name("t", "c")
    marqo.indexes[index]["dimension"] = DIM + 1  # the index now rejects every document
    with pytest.raises(BackendUnavailable, match="rejected 1 documents"):
        b.upsert("t", "c", [Item("new", unit(1))])
    marqo.indexes[index]["dimension"] = DIM
    assert b.get_item("t", "c", "keep") is not None and b.get_item("t", "c", "new") is None
    marqo.indexes.pop(index)  # deleted behind Lookalike's back
    assert b.get_collection("t", "c") is None


def test_marqo_cloud_control_plane_and_slow_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = FakeMarqo(cloud=True, api_key=KEY, creating_polls=3)
    monkeypatch.setenv("MARQO_API_KEY", KEY)
    try:
        b = MarqoBackend(MarqoOptions(url=cloud.url, cloud=True, create_timeout_seconds=0.05, poll_seconds=0.04,
                                      max_retries=0))
        with pytest.raises(BackendUnavailable, match="still creating"):
            b.create_collection("t", spec())
        create = next(r for r in cloud.requests if r["method"] == "POST")
        assert create["path"] == f"/api/v2/indexes/{b.index_name('t', 'c')}"
        settings = json.loads(create["body"])
        assert settings["inferenceType"] == "marqo.CPU.small" and settings["numberOfShards"] == 1
        info = b.create_collection("t", spec())  # the retry finds the index READY and finishes
        assert info.status == "READY"
        b.upsert("t", "c", [Item("a", unit(1))])
        assert [h.id for h in b.search("t", "c", VectorQuery(vector=unit(1))).hits] == ["a"]
        assert [c.name for c in b.list_collections("t")] == ["c"]
        assert b.delete_collection("t", "c") and b.get_collection("t", "c") is None
    finally:
        cloud.stop()


def test_cloud_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARQO_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="Marqo API key"):
        MarqoBackend(MarqoOptions())  # api.marqo.ai
    MarqoBackend(MarqoOptions(url="http://127.0.0.1:9"))  # a self-hosted Marqo may run without one


def test_key_from_ssm_securestring(marqo: FakeMarqo, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On AWS the key comes from an SSM SecureString (over SSM's HTTP API here), not the config."""
    import boto3

    monkeypatch.delenv("MARQO_API_KEY", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", moto_server)
    boto3.client("ssm").put_parameter(Name="/lookalike/marqo-key", Value=KEY, Type="SecureString")
    b = MarqoBackend(MarqoOptions(url=marqo.url, api_key_env=None, api_key_parameter="/lookalike/marqo-key"))
    assert b.list_collections("t") == []
    assert KEY not in repr(b.options)

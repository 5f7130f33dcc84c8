"""The marqo backend on the wire: the exact requests it sends and how it meets Marqo's failures."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from lookalike.api.surfaces.marqo import filter_dsl as marqo_filter
from lookalike.contracts import CollectionSpec, Item, TextQuery, VectorQuery
from lookalike.errors import BackendUnavailable, BadRequest, ConfigurationError, NotFound
from lookalike.filters import And, Filter, Not, Or, Range, Term, matches
from lookalike_marqo.backend import MarqoBackend, MarqoOptions
from lookalike_marqo.query import compile_filter, filter_fields, key_name
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
    assert any(r["path"] == "/" for r in marqo.requests)  # py-marqo checked Marqo's version

    backend.upsert("t", "c", [Item("a", unit(1, 0.2), {"color": "red", "tags": ["x", "y"], "n": 3, "sale": True,
                                                       "odd key": "v", "caption": "a red hat"})])
    add = json.loads(last(marqo, f"/indexes/{index}/documents")["body"])
    assert add["tensorFields"] == ["lookalike_vector"]
    assert add["mappings"] == {"lookalike_vector": {"type": "custom_vector"}}
    doc = add["documents"][0]
    odd = key_name("odd key")
    assert doc["lookalike_terms"] == ["color=red", "tags=x", "tags=y", f"{odd}=v", "caption=a red hat"]
    assert doc["n_n"] == 3 and doc["b_sale"] is True and doc["lookalike_caption"] == "a red hat"
    assert odd.startswith("x_") and len(doc["lookalike_vector"]["vector"]) == DIM

    page = backend.search("t", "c", VectorQuery(vector=unit(1), limit=5, filter=Term("color", "red")))
    body = marqo.searches()[-1]
    assert body["searchMethod"] == "TENSOR" and "q" not in body
    assert body["context"]["tensor"][0]["vector"] == pytest.approx(unit(1).tolist())
    assert body["filter"] == "lookalike_kind:item AND lookalike_terms:color\\=red"
    assert body["attributesToRetrieve"] == ["lookalike_item"] and body["efSearch"] > body["limit"]
    # Marqo's closeness 1 / (2 - cos) comes back as cosine similarity.
    assert page.hits[0].score == pytest.approx(float(unit(1) @ unit(1, 0.2)), abs=1e-5)
    assert page.hits[0].metadata["odd key"] == "v"

    got = backend.get_item("t", "c", "a")
    assert got is not None and np.allclose(got.vector, unit(1, 0.2), atol=1e-6)
    fetch = last(marqo, f"/indexes/{index}/documents")
    assert fetch["method"] == "GET" and json.loads(fetch["body"]) == ["a"]  # ids in the body, not the path
    assert fetch["params"] == {"expose_facets": "True"}


def test_keyword_search_is_lexical_and_kept_to_the_named_fields(backend: MarqoBackend, marqo: FakeMarqo) -> None:
    backend.create_collection("t", spec())
    backend.upsert("t", "c", [Item("cap", unit(1), {"caption": "a red hat"}),
                              Item("meta", unit(1), {"color": "red", "caption": "a blue hat"}),
                              Item("gen", unit(1), {"prompt": "red sky"})])
    page = backend.text_search("t", "c", TextQuery(text="Red!", limit=10, fields=("caption",)))
    assert [h.id for h in page.hits] == ["cap"] and page.total == 1  # "meta" has red only in its color
    body = marqo.searches()[-1]
    assert body["searchMethod"] == "LEXICAL" and body["q"] == "red"
    assert body["searchableAttributes"] == ["lookalike_caption"]
    both = backend.text_search("t", "c", TextQuery(text="red", limit=10))
    assert sorted(h.id for h in both.hits) == ["cap", "gen"]
    with pytest.raises(BadRequest):
        backend.text_search("t", "c", TextQuery(text="x", vector=np.ones(3, dtype=np.float32)))


def test_a_catalog_of_hundreds_of_keys_keeps_ingesting(backend: MarqoBackend, marqo: FakeMarqo) -> None:
    """Marqo 2.13+ takes at most 100 string and 100 string-list fields per index; the layout
    stays within a handful whatever the keys."""
    backend.create_collection("t", spec())
    items = [Item(f"i{n}", unit(1, n / 300), {f"attr_{n}": f"value {n}", f"size_{n}": n, "brand": f"b{n % 7}"})
             for n in range(300)]
    backend.upsert("t", "c", items)
    index = marqo.indexes[backend.index_name("t", "c")]
    assert len(index["lexical"]) <= 6 and index["arrays"] == {"lookalike_terms"}
    page = backend.search("t", "c", VectorQuery(vector=unit(1), limit=10, filter=Term("attr_250", "value 250")))
    assert [h.id for h in page.hits] == ["i250"]
    page = backend.search("t", "c", VectorQuery(vector=unit(1), limit=10, filter=Range("size_299", 299, None)))
    assert [h.id for h in page.hits] == ["i299"]
    # The fake holds the limit itself: one field per key is refused before anything is written.
    fields = {f"m_{n}": "x" for n in range(101)}
    status, reply = marqo.route("POST", f"/indexes/{backend.index_name('t', 'c')}/documents", {},
                                {"x-api-key": KEY}, json.dumps({"documents": [{"_id": "z", **fields}]}).encode())
    assert status == 400 and "exceeds the limit of 100" in reply["message"] and "z" not in index["docs"]


def test_missing_deletes_and_operation_conflicts(backend: MarqoBackend, marqo: FakeMarqo) -> None:
    backend.create_collection("t", spec())
    backend.upsert("t", "c", [Item("a", unit(1)), Item("b", unit(1, 1))])
    assert backend.delete("t", "c", ["nope"]) == 0  # Marqo itself reports "nope" deleted
    assert backend.delete("t", "c", ["a", "nope", "a"]) == 1
    assert backend.get_item("t", "c", "a") is None and backend.get_item("t", "c", "b") is not None
    # A concurrent schema change answers 409 OperationConflictError: retried, not reported.
    marqo.fail_next("status", 409, times=2)
    backend.upsert("t", "c", [Item("d", unit(0, 1))])
    assert backend.get_item("t", "c", "d") is not None
    marqo.fail_next("status", 409, times=backend.options.conflict_retries + 1)
    with pytest.raises(BackendUnavailable, match="concurrent schema change"):
        backend.upsert("t", "c", [Item("e", unit(0, 1))])
    marqo.failures.clear()
    # A collection stored in the layout before this one is refused with what to do.
    record_doc = marqo.indexes[backend.index_name("t", "c")]["docs"]["~lookalike-collection"]["fields"]
    old = json.loads(record_doc["lookalike_record"])
    old.pop("layout")
    record_doc["lookalike_record"] = json.dumps(old)
    with pytest.raises(BadRequest, match="ingest it again"):
        backend.search("t", "c", VectorQuery(vector=unit(1)))


@pytest.mark.parametrize("flt", [
    Term("color", "red"), Term("color", "dark red"), Term("price", 50), Term("price", "50"), Term("price", 2.5),
    Term("sale", True), Term("sale", False), Term("tags", "b"), Term("n", -3), Term("weird", 'a(b)[c]:"d\\e'),
    Term("mixed", 5), Term("mixed", "5.0"), Term("mixed", "five"), Term("long", "L" * 300), Term("long", "L" * 299),
    Term("odd key", "v"), Term("sale", "true"),
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
        {"price": 60, "sale": False, "mixed": [5, "five"], "long": "L" * 300, "odd key": "v"},
    ]
    parsed = marqo_filter.parse(compile_filter(flt, 256))
    docs = [{"_id": str(n), **filter_fields(m, 256)} for n, m in enumerate(items)]
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
    """Create (waiting for READY), list, search and delete on an index that is found through
    ``/api/v2/indexes`` and served at its own ``marqoEndpoint``."""
    cloud = FakeMarqo(cloud=True, api_key=KEY, creating_polls=3)
    monkeypatch.setenv("MARQO_API_KEY", KEY)
    try:
        b = MarqoBackend(MarqoOptions(url=cloud.url, cloud=True, create_timeout_seconds=0.05, poll_seconds=0.04,
                                      max_retries=0, backoff_seconds=0))
        with pytest.raises(BackendUnavailable, match="still creating"):
            b.create_collection("t", spec())
        index = b.index_name("t", "c")
        create = next(r for r in cloud.requests if r["method"] == "POST")
        assert create["path"] == f"/api/v2/indexes/{index}"
        settings = json.loads(create["body"])
        assert "inferenceType" not in settings and settings["numberOfShards"] == 1
        assert settings["storageClass"] == "marqo.basic"
        assert any(r["path"] == f"/api/v2/indexes/{index}/status" for r in cloud.requests)
        info = b.create_collection("t", spec())  # the retry finds the index READY and finishes
        assert info.status == "READY"
        b.upsert("t", "c", [Item("a", unit(1))])
        assert [h.id for h in b.search("t", "c", VectorQuery(vector=unit(1))).hits] == ["a"]
        assert [c.name for c in b.list_collections("t")] == ["c"]
        # Documents and searches went to the index's endpoint, never to the control plane.
        assert not [r for r in cloud.requests if "/documents" in r["path"] or r["path"].endswith("/search")]
        assert any(r["path"] == f"/indexes/{index}/search" for r in cloud.data.requests)
        assert all(r["headers"].get("x-api-key") == KEY for r in cloud.all_requests())
        assert b.delete_collection("t", "c") and b.get_collection("t", "c") is None
        assert any(r["method"] == "DELETE" and r["path"] == f"/api/v2/indexes/{index}" for r in cloud.requests)

        large = MarqoBackend(MarqoOptions(url=cloud.url, cloud=True, inference_type="marqo.CPU.large",
                                          poll_seconds=0.01, max_retries=0))
        large.create_collection("t", CollectionSpec(name="d", model_id="m", dimension=DIM))
        create = [r for r in cloud.requests if r["method"] == "POST"][-1]
        assert json.loads(create["body"])["inferenceType"] == "marqo.CPU.large"
    finally:
        cloud.stop()
    with pytest.raises(ValueError, match=r"marqo\.CPU\.large"):
        MarqoOptions(inference_type="marqo.CPU.small")  # deprecated on Marqo Cloud


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

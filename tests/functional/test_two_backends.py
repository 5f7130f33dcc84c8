"""Tenants on different search backends, served by the same deployed handlers."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.api.request import service
from tests.conftest import load_event, write_deployment
from tests.contract.test_search_backend_contract import REAL_OPENSEARCH
from tests.fake_marqo import FakeMarqo
from tests.fault_proxy import FaultProxy
from tests.functional.test_events import invoke


@pytest.fixture()
def opensearch() -> Iterator[FaultProxy]:
    """The real node, through a proxy that records what reaches it."""
    server = FaultProxy(os.environ["OPENSEARCH_URL"])
    yield server
    server.stop()


@pytest.fixture()
def marqo() -> Iterator[FakeMarqo]:
    server = FakeMarqo(api_key="initech-marqo-key")
    yield server
    server.stop()


def as_tenant(event: dict, key: str) -> dict:
    event["headers"]["Authorization"] = f"Bearer {key}"
    event["multiValueHeaders"]["Authorization"] = [f"Bearer {key}"]
    return event


@REAL_OPENSEARCH
def test_same_handlers_three_backends(deployment: Path, opensearch: FaultProxy, marqo: FakeMarqo,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITECH_MARQO_KEY", "initech-marqo-key")

    def key(raw: bytes) -> list[dict[str, str]]:
        return [{"sha256": hashlib.sha256(raw).hexdigest()}]

    write_deployment(deployment, {"tenants": {
        "demo": {"api_keys": key(b"demo-key")},
        "globex": {"api_keys": key(b"globex-key"),
                   "search": {"name": "opensearch", "options": {"url": opensearch.url, "refresh": "true",
                                                               "index_prefix": f"f{uuid.uuid4().hex[:8]}"}}},
        "initech": {"api_keys": key(b"initech-key"),
                    "search": {"name": "marqo", "options": {"url": marqo.url, "api_key_env": "INITECH_MARQO_KEY"}}},
    }})
    for api_key in ("demo-key", "globex-key", "initech-key"):
        assert invoke("taxonomy", as_tenant(load_event("taxonomy_create_collection"), api_key))[0] == 201
        status, item = invoke("upload", as_tenant(load_event("upload_put_item"), api_key))
        assert status == 200 and item["id"] == "shoe-1"
        status, body = invoke("reverse_search", as_tenant(load_event("reverse_search"), api_key))
        assert status == 200 and [h["id"] for h in body["hits"]] == ["shoe-1"]
        status, body = invoke("generate", as_tenant(load_event("generate_text_search"), api_key))
        assert status == 200 and body["hits"][0]["id"] == "shoe-1", (api_key, body)
    app = service()
    assert type(app.tenant("demo").search_backend.inner).__name__ == "LocalIndex"
    assert type(app.tenant("globex").search_backend.inner).__name__ == "OpenSearchBackend"
    assert type(app.tenant("initech").search_backend.inner).__name__ == "MarqoBackend"
    # Each tenant's documents went to its own backend only.
    bulk_bodies = [r["body"] for r in opensearch.requests if r["path"] == "/_bulk"]
    assert len(bulk_bodies) == 1 and '"shoe-1"' in bulk_bodies[0]
    added = [r["body"] for r in marqo.requests if r["path"].endswith("/documents") and r["method"] == "POST"]
    assert sum('"shoe-1"' in b for b in added) == 1
    # Marqo keeps one vector space per index: initech's collection holds no caption vectors.
    assert app.tenant("initech").collection("clothing").text_model_id is None

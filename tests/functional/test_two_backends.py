"""Two tenants on different search backends, served by the same deployed handlers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.api.request import service
from tests.conftest import load_event, write_deployment
from tests.fake_opensearch import FakeOpenSearch
from tests.functional.test_events import invoke


@pytest.fixture()
def opensearch() -> Iterator[FakeOpenSearch]:
    server = FakeOpenSearch()
    yield server
    server.stop()


def as_tenant(event: dict, key: str) -> dict:
    event["headers"]["Authorization"] = f"Bearer {key}"
    event["multiValueHeaders"]["Authorization"] = [f"Bearer {key}"]
    return event


def test_same_handlers_two_backends(deployment: Path, opensearch: FakeOpenSearch) -> None:
    write_deployment(deployment, {"tenants": {
        "demo": {"api_keys": [{"sha256": __import__("hashlib").sha256(b"demo-key").hexdigest()}]},
        "globex": {"api_keys": [{"sha256": __import__("hashlib").sha256(b"globex-key").hexdigest()}],
                   "search": {"name": "opensearch", "options": {"url": opensearch.url, "refresh": "true"}}},
    }})
    for key in ("demo-key", "globex-key"):
        assert invoke("taxonomy", as_tenant(load_event("taxonomy_create_collection"), key))[0] == 201
        status, item = invoke("upload", as_tenant(load_event("upload_put_item"), key))
        assert status == 200 and item["id"] == "shoe-1"
        status, body = invoke("reverse_search", as_tenant(load_event("reverse_search"), key))
        assert status == 200 and [h["id"] for h in body["hits"]] == ["shoe-1"]
        status, body = invoke("generate", as_tenant(load_event("generate_text_search"), key))
        assert status == 200 and body["hits"][0]["id"] == "shoe-1"
    app = service()
    assert type(app.tenant("demo").search_backend).__name__ == "LocalIndex"
    assert type(app.tenant("globex").search_backend).__name__ == "OpenSearchBackend"
    # globex's documents went to OpenSearch, demo's did not.
    bulk_bodies = [r["body"] for r in opensearch.requests if r["path"] == "/_bulk"]
    assert len(bulk_bodies) == 1 and '"shoe-1"' in bulk_bodies[0]

"""A backend that is down or broken: a 502 / 500 in the documented error shape, never a trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookalike.api.request import service
from lookalike.errors import BackendUnavailable
from lookalike.lambda_context import LocalContext
from tests.conftest import load_event
from tests.functional.test_events import function, invoke


def imgen_search_event() -> dict:
    event = load_event("generate_text_search")
    event.update(path="/api/search", resource="/api/search", body=json.dumps({"query": "leather shoes"}),
                 isBase64Encoded=False)
    return event


@pytest.mark.parametrize(("failure", "status", "error"), [
    (BackendUnavailable(), 502, "Upstream dependency failed"),  # Imgen's "safe to retry" row
    (RuntimeError("disk on fire"), 500, "Internal server error"),
])
def test_backend_failures_use_the_error_shape(deployment: Path, monkeypatch: pytest.MonkeyPatch,
                                              failure: Exception, status: int, error: str) -> None:
    invoke("taxonomy", load_event("taxonomy_create_collection"))
    tenant = service().tenant("demo")
    tenant.config.tenants["demo"].default_collection = "clothing"

    def broken(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(tenant.search_backend.inner, "text_search", broken)  # the engine, shared
    result = function("generate").lambda_handler(imgen_search_event(), LocalContext())
    assert result["statusCode"] == status
    assert json.loads(result["body"]) == {"error": error}
    assert "disk on fire" not in result["body"] and "Traceback" not in result["body"]
    monkeypatch.setattr(tenant.search_backend.inner, "search", broken)
    status_code, body = invoke("reverse_search", load_event("reverse_search"))
    assert (status_code, body) == (status, {"error": error})

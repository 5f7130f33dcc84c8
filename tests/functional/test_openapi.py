"""The OpenAPI 3.1 document: valid, complete against template.yaml, served at /openapi.json."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from lookalike.api.openapi import document
from lookalike.gateway import Gateway
from lookalike.lambda_context import LocalContext
from tests.conftest import ROOT, load_event
from tests.functional.test_events import function, invoke


def test_document_is_valid_and_covers_every_route() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    gw = Gateway(ROOT / "template.yaml")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for route in gw.routes:
        if route.path in ("/openapi.json", "/ui", "/ui/{asset}"):  # the document itself, the search page
            continue
        assert (route.method, route.path) in documented, f"{route.method} {route.path} is not documented"
    search = doc["paths"]["/v1/collections/{collection}/search"]["post"]
    assert set(search["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert search["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SearchRequest"}
    assert "SearchRequest" in doc["components"]["schemas"]
    assert search["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "422" not in search["responses"]  # validation errors are 400 with the error shape


def test_served_by_the_taxonomy_function_without_disturbing_it(deployment: Path) -> None:
    document()  # builds an app over every router, then puts the routers back
    event = load_event("taxonomy_list_collections")
    event.update(path="/openapi.json", resource="/openapi.json", headers={}, multiValueHeaders={})
    result = function("taxonomy").lambda_handler(event, LocalContext())
    assert result["statusCode"] == 200 and json.loads(result["body"])["info"]["title"] == "Lookalike"
    status, body = invoke("taxonomy", load_event("taxonomy_list_collections"))
    assert status == 200 and body == {"collections": []}

"""Input rules with one home each, and the defects of issue 27 where two homes disagreed: a
tenant's page bound above 100, filter fields no metadata key can have, a text model configured
as a tenant's image model, and the search form's documented fields."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from lookalike.api import request as api_request
from lookalike.api.openapi import SEARCH_FORM
from lookalike.errors import BadRequest, ConfigurationError
from lookalike.filters import from_json
from lookalike.gateway import Gateway
from lookalike.process import Lookalike
from lookalike.schemas import SearchOptions
from tests.conftest import ROOT, catalog_images, write_deployment

DEMO = [("Authorization", "Bearer demo-key"), ("Content-Type", "application/json")]


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    gateway = Gateway(ROOT / "template.yaml")
    route, params, _ = gateway.match(method, path)
    assert route is not None, path
    event = gateway.event(route, params, method, path, DEMO, json.dumps(body).encode() if body else b"", "127.0.0.1")
    result = gateway.invoke(route, event)
    return result["statusCode"], json.loads(result["body"] or "null")


def seeded(count: int) -> None:
    assert call("POST", "/v1/collections", {"name": "c"})[0] == 201
    for n, photo in enumerate(catalog_images()[:count]):
        status, _ = call("PUT", f"/v1/collections/c/items/i{n}",
                         {"image_base64": base64.b64encode(photo.read_bytes()).decode()})
        assert status in (200, 201)


def test_a_tenants_page_bound_above_100_takes_effect(deployment: Path) -> None:
    """limits.max_limit was refused at 101 by the static request schema whatever it said."""
    write_deployment(deployment, {"defaults": {"embedder": {"name": "efficientnet-lite0"},
                                               "limits": {"max_limit": 500}}})
    api_request.set_service(None)
    seeded(2)
    status, page = call("POST", "/v1/collections/c/search", {"item_id": "i0", "limit": 300})
    assert status == 200 and page["limit"] == 300, page
    status, body = call("POST", "/v1/collections/c/search", {"item_id": "i0", "limit": 501})
    assert (status, body) == (400, {"error": "limit: Input should be less than or equal to 500"})


def test_the_default_page_bound_answers_as_before(deployment: Path) -> None:
    seeded(1)
    status, body = call("POST", "/v1/collections/c/search", {"item_id": "i0", "limit": 101})
    assert (status, body) == (400, {"error": "limit: Input should be less than or equal to 100"})
    status, body = call("POST", "/v1/collections/c/search/text", {"query": "shirt", "limit": 101})
    assert status == 400 and body["error"].startswith("limit: Input should be less than or equal to 100")


@pytest.mark.parametrize("field", ["café", "ﬁeld", "x\u00a0y", "цвет"])
def test_a_filter_on_a_field_no_metadata_key_can_have_is_refused(field: str) -> None:
    """Metadata keys are ASCII; a filter on `café` passed validation and could never match."""
    with pytest.raises(BadRequest, match="invalid filter field name"):
        from_json({field: "x"})


def test_a_filter_field_that_is_not_ascii_is_a_400_on_the_api(deployment: Path) -> None:
    seeded(1)
    status, body = call("POST", "/v1/collections/c/search", {"item_id": "i0", "filter": {"café": "x"}})
    assert status == 400 and "invalid filter field name" in body["error"]


def test_a_text_model_as_the_image_embedder_is_a_configuration_error(deployment: Path) -> None:
    """It answered 500 at the first embed instead."""
    write_deployment(deployment, {"defaults": {"embedder": {"name": "all-minilm-l6-v2"}}})
    with pytest.raises(ConfigurationError, match="cannot embed images"):
        Lookalike().tenant("demo")


def test_the_search_form_documents_every_field_the_search_takes() -> None:
    """The multipart form's schema is built from SearchOptions: it lacked `rerank`."""
    assert set(SEARCH_FORM["properties"]) == {"image", *SearchOptions.model_fields}
    assert SEARCH_FORM["properties"]["rerank"]["type"] == "boolean"
    assert SEARCH_FORM["properties"]["filter"]["type"] == "string"  # JSON, as text


@pytest.mark.parametrize("name", ["p.jpg", "p.JPEG", "p.avif", "p.heic", "p.HEIF", "p.tiff"])
def test_ingestion_takes_every_image_type_the_intake_decodes(name: str) -> None:
    """Ingestion's suffixes were a copy that lacked AVIF and HEIC: a phone's photo dropped in the
    catalog bucket was skipped although every upload route decodes it."""
    from lookalike.images import SUPPORTED_TYPES
    from lookalike.ingest import parse_catalog_key
    from lookalike.rules import IMAGE_SUFFIXES

    key = parse_catalog_key(f"demo/c/{name}")
    assert key is not None and key.item_id == "p"
    assert parse_catalog_key("demo/c/notes.txt") is None
    assert {s.lstrip(".") for s in IMAGE_SUFFIXES} >= {t.split("/")[1] for t in SUPPORTED_TYPES} - {"jpeg"}


@pytest.mark.parametrize("stem", ["-photo", ".hidden", "plain", "été 2024", "a" * 300, "@home"])
def test_an_item_id_from_a_file_name_is_always_a_valid_item_id(stem: str) -> None:
    """Ingestion made ids with its own copy of the rule: `-photo.jpg` became `-photo`, which the
    item id check refuses, so the file failed to ingest."""
    from lookalike.ingest import item_id_for
    from lookalike.rules import check_item_id

    item_id = item_id_for(Path(f"{stem}.jpg"))
    assert check_item_id(item_id) == item_id
    if stem == "plain":
        assert item_id == "plain"


@pytest.mark.parametrize("field", ["-x", ".x", "café", "a" * 65])
def test_a_keyword_field_no_metadata_key_can_have_is_a_configuration_error(field: str) -> None:
    """``keyword_fields`` takes the one field-name rule of ``rules.py``: a facet on a field no
    metadata key can have would list nothing, forever (issue 27)."""
    from pydantic import ValidationError

    from lookalike.config import CollectionSettings
    from lookalike.rules import validate_metadata

    with pytest.raises(ValidationError):
        CollectionSettings(keyword_fields=[field])
    with pytest.raises(BadRequest):
        validate_metadata({field: "x"})
    assert CollectionSettings(keyword_fields=["brand", "a.b", "_x"]).keyword_fields == ["brand", "a.b", "_x"]

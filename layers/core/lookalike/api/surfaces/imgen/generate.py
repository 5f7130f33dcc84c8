"""Imgen's search and generate (the generate function): ``POST /api/search`` by meaning over
captions and prompts, ``POST /api/generate`` the best match of a prompt."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike import media
from lookalike.api.request import json_object, tenant_from_bearer, validate
from lookalike.api.surfaces.imgen import SEARCH_FIELDS, GenerateBody, SearchBody, SearchResponse, image_object
from lookalike.errors import NotFound
from lookalike.schemas import GENERATE_MIN_SCORE

router = Router()


@router.post("/api/search")
def search() -> SearchResponse:
    tenant = tenant_from_bearer(router.current_event)
    body = validate(SearchBody, json_object(router.current_event))
    collection = tenant.config.tenants[tenant.id].default_collection
    page = tenant.text_search(collection, body.query, fields=SEARCH_FIELDS[body.search_in], limit=body.limit,
                              filter=body.node())
    base = media.base_url(router.current_event)
    results = [image_object(tenant, collection, h, base, True) for h in page.hits]
    return SearchResponse(results=results, count=len(results))


@router.post("/api/generate")
def generate() -> dict[str, Any]:
    tenant = tenant_from_bearer(router.current_event)
    body = validate(GenerateBody, json_object(router.current_event))
    collection = tenant.config.tenants[tenant.id].default_collection
    page = tenant.text_search(collection, body.prompt, fields=SEARCH_FIELDS[body.search_in], limit=1,
                              filter=body.node(), min_score=GENERATE_MIN_SCORE)
    if not page.hits:
        raise NotFound("No match found")
    obj = image_object(tenant, collection, page.hits[0], media.base_url(router.current_event), False)
    return {"image": obj.model_dump(exclude={"score"})}

"""The generate function's /v1 routes: text search over captions and prompts, and the single
best match."""

from __future__ import annotations

import time

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike import filters, media
from lookalike.api.request import (
    json_object,
    tenant_from_bearer,
    validate,
)
from lookalike.api.v1.common import hit_out, page_out
from lookalike.errors import NotFound
from lookalike.schemas import (
    GenerateRequest,
    GenerateResponse,
    SearchResponse,
    TextSearchRequest,
)

router = Router()


@router.post("/v1/collections/<collection>/search/text")
def search_by_text(collection: str) -> SearchResponse:
    started = time.perf_counter()
    tenant = tenant_from_bearer(router.current_event)
    body = validate(TextSearchRequest, json_object(router.current_event))
    page = tenant.text_search(collection, body.query, fields=body.fields, limit=body.limit, offset=body.offset,
                              filter=filters.from_json(body.filter), min_score=body.min_score, mode=body.mode)
    return page_out(tenant, collection, page, body, router.current_event, started)


@router.post("/v1/collections/<collection>/generate")
def generate(collection: str) -> GenerateResponse:
    tenant = tenant_from_bearer(router.current_event)
    body = validate(GenerateRequest, json_object(router.current_event))
    page = tenant.text_search(collection, body.prompt, fields=body.fields, limit=1,
                              filter=filters.from_json(body.filter), min_score=body.min_score)
    if not page.hits:
        raise NotFound("No match found")
    return GenerateResponse(item=hit_out(tenant, collection, page.hits[0], media.base_url(router.current_event)))



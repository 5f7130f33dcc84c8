"""The reverse_search function's /v1 route: search a collection by image."""

from __future__ import annotations

import time

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike import filters
from lookalike.api.request import (
    tenant_from_bearer,
    validate,
)
from lookalike.api.v1.common import image_ref, image_request, page_out
from lookalike.schemas import (
    SearchOptions,
    SearchRequest,
    SearchResponse,
)

router = Router()


@router.post("/v1/collections/<collection>/search")
def search_by_image(collection: str) -> SearchResponse:
    started = time.perf_counter()
    tenant = tenant_from_bearer(router.current_event)
    data, upload = image_request(router.current_event)
    body: SearchOptions = validate(SearchOptions if upload is not None else SearchRequest, data)
    page = tenant.search(collection, image_ref(body, upload), limit=body.limit, offset=body.offset,
                         filter=filters.from_json(body.filter), min_score=body.min_score, rerank=body.rerank)
    answer = page_out(tenant, collection, page, body, router.current_event, started)
    if body.rerank:
        answer.reranked = tenant.can_rerank()
    return answer



"""Marqo reverse image search (seeds/001): ``POST /api/v1/indexes/{index_name}/reverse-image-search``.

The index is a collection of the tenant whose key comes in ``x-api-key`` (or
``Authorization: Bearer``); ``x-marqo-index-id`` must be present, and must equal the
collection's ``marqo_index_id`` when one is configured. ``q`` is an image URL whose path ends
in an image extension, or a ``data:image/...;base64,`` URL. ``limit`` defaults to 10 and is
clamped to 1-10; ``filter`` is Marqo's DSL; ``attributesToRetrieve`` picks fields.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike.api.request import bearer_token, header, json_object, service
from lookalike.api.surfaces.marqo_filter import parse
from lookalike.errors import BadRequest, NotFound, Unauthorized
from lookalike.service import ImageRef

router = Router()
URL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".avif")
Q_ERROR = "q must be an image URL or base64 data URI"
NOT_ENABLED = "reverse image search is not enabled for this index"
MAX_ATTRIBUTES = 256


def _query_image(q: Any) -> ImageRef:
    if not isinstance(q, str) or not q.strip():
        raise BadRequest(Q_ERROR)
    q = q.strip()
    if q.lower().startswith("data:"):
        if not q[5:].lower().startswith("image/") or ";base64," not in q[:100].lower():
            raise BadRequest(Q_ERROR)
        return ImageRef(data_url=q)
    try:
        parts = urlsplit(q)
    except ValueError:
        raise BadRequest(Q_ERROR) from None
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.lower().endswith(URL_SUFFIXES):
        raise BadRequest(Q_ERROR)
    return ImageRef(url=q)


def _limit(value: Any) -> int:
    if value is None:
        return 10
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest("limit must be an integer")
    return max(1, min(10, int(value)))


@router.post("/api/v1/indexes/<index_name>/reverse-image-search")
def reverse_image_search(index_name: str) -> dict[str, Any]:
    started = time.perf_counter()
    event = router.current_event
    tenant = service().authenticate(header(event, "x-api-key") or bearer_token(event))
    index_id = header(event, "x-marqo-index-id")
    if not index_id:
        raise Unauthorized()
    try:
        info = tenant.collection(index_name)
    except NotFound:
        raise NotFound("index not found") from None
    expected = info.settings.get("marqo_index_id")
    if expected and index_id != expected:
        raise Unauthorized()
    if not info.settings.get("reverse_search_enabled", True):
        raise NotFound(NOT_ENABLED)
    body = json_object(event, empty={})
    ref = _query_image(body.get("q"))
    flt = body.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise BadRequest("filter must be a string")
    attributes = body.get("attributesToRetrieve")
    if attributes is not None:
        if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
            raise BadRequest("attributesToRetrieve must be an array of strings")
        if len(attributes) > MAX_ATTRIBUTES:
            raise BadRequest(f"attributesToRetrieve takes at most {MAX_ATTRIBUTES} names")
        attributes = set(attributes)
    limit = _limit(body.get("limit"))
    page = tenant.search(index_name, ref, limit=limit, filter=parse(flt) if flt and flt.strip() else None)
    hits = []
    for h in page.hits:
        fields = h.metadata if attributes is None else {k: v for k, v in h.metadata.items() if k in attributes}
        hits.append({**fields, "_id": h.id, "_score": round(h.score, 6)})
    return {"hits": hits, "limit": limit, "processingTimeMs": int((time.perf_counter() - started) * 1000)}

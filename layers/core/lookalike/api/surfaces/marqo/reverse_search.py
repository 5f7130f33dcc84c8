"""Marqo reverse image search (seeds/001): ``POST /api/v1/indexes/{index_name}/reverse-image-search``.

The index is a collection. The document's own samples send only ``x-marqo-index-id`` and
``Content-Type``, so the collection's index id is a search-only credential for that one
collection: generated (``<tenant>.<32 hex>``, unguessable) when the collection is created,
unless ``marqo_index_id`` is configured, and shown by ``lookalike collections``. A tenant key in
``x-api-key`` (or ``Authorization: Bearer``) works too, with the index id alongside it. A
missing or wrong id is 401 ``Unauthorized``, and an id-only caller cannot tell a missing index
from a wrong id. ``q`` is an image URL whose path ends in an image extension, or a
``data:image/...;base64,`` URL of any image type (AVIF and HEIC included). ``limit`` defaults
to 10 and is clamped to 1-10; ``filter`` is Marqo's DSL; ``attributesToRetrieve`` picks fields.
"""

from __future__ import annotations

import hmac
import time
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike import images
from lookalike.api.request import bearer_token, flag_rerank, header, json_object, service
from lookalike.api.surfaces.marqo.filter_dsl import parse
from lookalike.contracts import CollectionInfo
from lookalike.errors import BadRequest, NotFound, Unauthorized
from lookalike.service import ImageRef, TenantService

router = Router()
URL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".avif")  # the document's list, not IMAGE_SUFFIXES
Q_ERROR = "q must be an image URL or base64 data URI"
NOT_ENABLED = "reverse image search is not enabled for this index"
MAX_ATTRIBUTES = 256


def _query_image(q: Any) -> ImageRef:
    if not isinstance(q, str) or not q.strip():
        raise BadRequest(Q_ERROR)
    q = q.strip()
    if q.lower().startswith("data:"):
        parts = images.split_data_url(q)
        if parts is None or not parts[0].startswith("image/") or not images.is_base64(parts[1]):
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


def _tenant_of_index_id(given: str, index_name: str) -> TenantService:
    """The tenant whose collection ``index_name`` has the index id ``given``, or 401."""
    config = service().config()
    owners = [t for t, c in config.tenants.items() if (c.collections.get(index_name) and
                                                       c.collections[index_name].marqo_index_id == given)]
    generated_for = given.rpartition(".")[0]
    if not owners and generated_for in config.tenants:
        owners = [generated_for]
    if len(owners) != 1:
        raise Unauthorized()
    return service().tenant(owners[0])


def _authorized(event: Any, index_name: str) -> tuple[TenantService, CollectionInfo]:
    given = header(event, "x-marqo-index-id")
    if not given:
        raise Unauthorized()
    key = header(event, "x-api-key") or bearer_token(event)
    tenant = service().authenticate(key) if key else _tenant_of_index_id(given, index_name)
    # Nothing is written before the caller is authenticated: without a key, a declared collection
    # is created only for the index id the operator declared for it (that id is the credential).
    declared = tenant.config.tenants[tenant.id].collections.get(index_name)
    declared_id = declared.marqo_index_id if declared else None
    vouched = bool(key) or (declared_id is not None and hmac.compare_digest(given.encode(), declared_id.encode()))
    try:
        info = tenant.collection(index_name, create_declared=vouched)
    except NotFound:
        if not key:
            raise Unauthorized() from None
        raise NotFound("index not found") from None
    expected = tenant.marqo_index_id(info)
    if key and (expected is None or not info.settings.get("reverse_search_enabled", True)):
        return tenant, info  # the key vouches (a collection from before index ids, or a 404 to come)
    if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized()
    return tenant, info


@router.post("/api/v1/indexes/<index_name>/reverse-image-search")
def reverse_image_search(index_name: str) -> dict[str, Any]:
    started = time.perf_counter()
    tenant, info = _authorized(router.current_event, index_name)
    event = router.current_event
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
    # The document's "a bit slower ... better results for in-the-wild images": re-ranked.
    page = tenant.search(index_name, ref, limit=limit, filter=parse(flt) if flt and flt.strip() else None,
                         rerank=True)
    hits = []
    for h in page.hits:
        fields = h.metadata if attributes is None else {k: v for k, v in h.metadata.items() if k in attributes}
        hits.append({**fields, "_id": h.id, "_score": round(h.score, 6)})
    return flag_rerank({"hits": hits, "limit": limit,
                        "processingTimeMs": int((time.perf_counter() - started) * 1000)}, asked=True, tenant=tenant)

"""The taxonomy function's /v1 routes: collections, facets, ingest status, item reads and
near-duplicates, item images and signed media links."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from lookalike import media, rules
from lookalike.api.request import (
    json_object,
    service,
    tenant_from_bearer,
    validate,
)
from lookalike.api.v1.common import hit_out
from lookalike.config import LAMBDA_MAX_ANSWER_BYTES
from lookalike.errors import NotFound, PayloadTooLarge
from lookalike.schemas import (
    CollectionList,
    CollectionOut,
    CreateCollection,
    Deleted,
    DuplicatesResponse,
    FacetsResponse,
    FacetValue,
    IngestFailure,
    IngestStatus,
    ItemOut,
)
from lookalike.service import TenantService

router = Router()


@router.get("/v1/collections")
def list_collections() -> CollectionList:
    tenant = tenant_from_bearer(router.current_event)
    return CollectionList(collections=[CollectionOut.of(c) for c in tenant.list_collections()])


@router.post("/v1/collections")
def create_collection() -> Response[CollectionOut]:
    tenant = tenant_from_bearer(router.current_event)
    body = validate(CreateCollection, json_object(router.current_event))
    info = tenant.create_collection(body.name, body.settings)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON,
                    body=CollectionOut.of(info).model_dump(mode="json"))


@router.get("/v1/collections/<collection>")
def get_collection(collection: str) -> CollectionOut:
    tenant = tenant_from_bearer(router.current_event)
    return CollectionOut.of(tenant.collection(collection))


@router.delete("/v1/collections/<collection>")
def delete_collection(collection: str) -> Deleted:
    tenant = tenant_from_bearer(router.current_event)
    tenant.delete_collection(collection)
    return Deleted(id=collection, deleted=True)


@router.get("/v1/collections/<collection>/facets")
def facets(
    collection: str,
    fields: Annotated[str | None, Query(max_length=1024)] = None,
    size: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FacetsResponse:
    tenant = tenant_from_bearer(router.current_event)
    names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    if names:
        for name in names:
            rules.check_field(name)
    result = tenant.facets(collection, names, size=size)
    return FacetsResponse(facets={k: [FacetValue(value=v, count=n) for v, n in vals] for k, vals in result.items()})


@router.get("/v1/collections/<collection>/ingest")
def ingest_status(collection: str) -> IngestStatus:
    """Whether the collection is being indexed, and the latest images ingestion refused."""
    tenant = tenant_from_bearer(router.current_event)
    info = tenant.collection(collection)
    return IngestStatus(status=info.status, item_count=info.item_count,
                        recent_failures=[IngestFailure(**f) for f in tenant.ingest_failures(collection)])


@router.get("/v1/collections/<collection>/items/<item_id>")
def get_item(collection: str, item_id: str) -> ItemOut:
    tenant = tenant_from_bearer(router.current_event)
    return ItemOut.of(tenant.get_item(collection, item_id), collection)


@router.get("/v1/collections/<collection>/items/<item_id>/duplicates")
def get_item_duplicates(collection: str, item_id: str) -> DuplicatesResponse:
    tenant = tenant_from_bearer(router.current_event)
    base = media.base_url(router.current_event)
    return DuplicatesResponse(id=item_id, duplicates=[hit_out(tenant, collection, h, base)
                                                      for h in tenant.duplicates(collection, item_id)])


# Binary body: skip response validation (it would serialise the bytes as text).
@router.get("/v1/collections/<collection>/items/<item_id>/image", enable_validation=False)
def get_item_image(collection: str, item_id: str) -> Response[bytes]:
    tenant = tenant_from_bearer(router.current_event)
    data, ctype = tenant.item_image(collection, item_id)
    return _image_answer(tenant, collection, item_id, None, data, ctype)


def _image_answer(tenant: TenantService, collection: str, item_id: str, version: str | None,
                  data: bytes, ctype: str) -> Response[bytes]:
    """The image, or on Lambda, where an answer over 6 MB (after base64) never arrives, a
    redirect to a short-lived link straight from the stack's bucket."""
    if tenant.on_lambda and len(data) > LAMBDA_MAX_ANSWER_BYTES:
        link = tenant.photo_link(collection, item_id, version)
        if link is None:
            raise PayloadTooLarge(f"the image is larger than Lambda can answer ({LAMBDA_MAX_ANSWER_BYTES} bytes) "
                                  "and its blob store has no links: configure blobs: s3")
        return Response(status_code=302, content_type=ctype, body=b"",
                        headers={"Location": link, "Cache-Control": "no-store"})
    return Response(status_code=200, content_type=ctype, body=data,
                    headers={"Cache-Control": "private, max-age=3600"})


# ---------------------------------------------------------------- signed media (taxonomy)


# No key: the signed token is the credential, so <img src> works. Binary body: no validation.
@router.get("/media/<token>", enable_validation=False)
def media_file(token: str) -> Response[bytes]:
    app = service()
    ref = media.verify(app.settings.home, token)
    try:
        tenant = app.tenant(ref.tenant)
        reader = tenant.thumbnail if ref.size == "thumb" else tenant.item_image
        data, ctype = reader(ref.collection, ref.item_id, ref.version)
        return _image_answer(tenant, ref.collection, ref.item_id, ref.version, data, ctype)
    except NotFound:
        raise NotFound("Not found") from None

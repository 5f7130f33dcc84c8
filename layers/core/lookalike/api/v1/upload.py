"""The upload function's /v1 routes: item writes and deletes, query-image anchors."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike.api.request import (
    tenant_from_bearer,
    validate,
)
from lookalike.api.v1.common import image_ref, image_request
from lookalike.errors import BadRequest, NotFound
from lookalike.schemas import (
    AnchorOptions,
    AnchorOut,
    AnchorUploadOut,
    Deleted,
    ItemOut,
    PresignedUpload,
    PutItem,
    StageAnchor,
)

router = Router()


@router.put("/v1/collections/<collection>/items/<item_id>")
def put_item(collection: str, item_id: str) -> ItemOut:
    tenant = tenant_from_bearer(router.current_event)
    data, upload = image_request(router.current_event)
    if upload is not None:
        metadata = data.pop("metadata", {})
        if data:
            raise BadRequest(f"unknown form field {sorted(data)[0]!r}")
        item = tenant.put_item(collection, item_id, upload, metadata)
    else:
        body = validate(PutItem, data)
        item = tenant.put_item(collection, item_id, image_ref(body, None), body.metadata)
    return ItemOut.of(item, collection)


@router.delete("/v1/collections/<collection>/items/<item_id>")
def delete_item(collection: str, item_id: str) -> Deleted:
    tenant = tenant_from_bearer(router.current_event)
    if not tenant.delete_item(collection, item_id):
        raise NotFound("Item not found")
    return Deleted(id=item_id, deleted=True)


@router.post("/v1/anchors")
def stage_anchor() -> Response[AnchorOut]:
    tenant = tenant_from_bearer(router.current_event)
    data, upload = image_request(router.current_event)
    if upload is not None:
        box, ref = validate(AnchorOptions, data).bounding_box, upload
    else:
        body = validate(StageAnchor, data)
        box, ref = body.bounding_box, image_ref(body, None)
    anchor = tenant.stage_anchor(ref, box.region() if box else None)
    body = AnchorOut(anchor_id=anchor.id, model_id=anchor.model_id, expires_at=anchor.expires_at)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=body.model_dump(mode="json"))


@router.post("/v1/anchors/uploads")
def anchor_upload() -> Response[AnchorUploadOut]:
    """A presigned upload of a query image past the API's payload limits (the stack: S3)."""
    tenant = tenant_from_bearer(router.current_event)
    up = tenant.anchor_upload()
    body = AnchorUploadOut(anchor_id=up.anchor_id, upload=PresignedUpload(url=up.url, fields=up.fields),
                           max_bytes=up.max_bytes, expires_at=up.expires_at)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=body.model_dump(mode="json"))



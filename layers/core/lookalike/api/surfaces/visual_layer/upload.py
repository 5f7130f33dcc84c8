"""Visual Layer's query image upload (the upload function): stages the (optionally cropped)
image as an anchor that ``GET /api/v1/explore/{dataset_id}`` then ranks the dataset against."""

from __future__ import annotations

import uuid

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import ValidationError

from lookalike.api.request import content_type, json_value, multipart_form
from lookalike.api.surfaces.visual_layer import UploadParams, dataset, images_only, params_of, tenant_of
from lookalike.errors import BadRequest
from lookalike.schemas import BoundingBox
from lookalike.service import ImageRef

router = Router()


@router.post("/api/v1/dataset/<dataset_id>/search-image-similarity")
def search_image_similarity(dataset_id: str) -> dict[str, str]:
    event = router.current_event
    tenant = tenant_of(event)
    if content_type(event) != "multipart/form-data":
        raise BadRequest("the query image must be sent as multipart/form-data field 'file'")
    form = multipart_form(event)
    params: UploadParams = params_of(UploadParams, event, form.fields)
    images_only(params.entity_type)
    dataset(tenant, dataset_id)
    upload = form.files.get("file")
    if upload is None:
        raise BadRequest("Missing file")
    region = None
    if params.bounding_box:
        try:
            box = BoundingBox.model_validate(json_value(params.bounding_box, "bounding_box"))
        except (BadRequest, ValueError, ValidationError):
            raise BadRequest("bounding_box must be JSON {x, y, width, height} with fractions 0-1") from None
        region = box.region()
    anchor = tenant.stage_anchor(ImageRef(data=upload.data), region)
    return {"anchor_media_id": str(uuid.UUID(anchor.id)), "anchor_type": "UPLOAD"}

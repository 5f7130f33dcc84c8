"""Visual Layer visual search (seeds/003): upload a query image, then explore its clusters.

``POST /api/v1/dataset/{dataset_id}/search-image-similarity`` stages the (optionally
cropped) query image as an anchor; ``GET /api/v1/explore/{dataset_id}`` ranks the dataset
(a collection) against it and groups near-identical results into clusters, 100 a page, with
cosine *distance* scores (lower is closer). Auth: ``Authorization: Bearer <JWT>`` verified
against the tenant's key (signature, expiry, issuer). Only whole-image search is available:
``entity_type=OBJECTS`` is refused with 400. ``rerank=true`` (Lookalike's addition) re-ranks
the best hits by local features, as ``/v1`` search does.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lookalike import media
from lookalike.api.request import (
    bearer_token,
    content_type,
    flag_rerank,
    json_value,
    multipart_form,
    service,
    validate,
)
from lookalike.clustering import CUTOFFS
from lookalike.contracts import CollectionInfo, Hit
from lookalike.errors import BadRequest, Conflict, NotFound
from lookalike.jwt_auth import tenant_for_token
from lookalike.schemas import BoundingBox
from lookalike.service import ImageRef, TenantService

upload_router = Router()  # upload function
explore_router = Router()  # reverse_search function

PAGE_SIZE = 100
MAX_RESULTS = 1000  # ranked results that are clustered for paging
PREVIEWS = 10
ENTITY_TYPES = ("IMAGES", "OBJECTS")


class UploadParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    entity_type: Literal["IMAGES", "OBJECTS"]
    threshold: int = Field(default=0, ge=0, le=len(CUTOFFS) - 1)
    bounding_box: str | None = Field(default=None, max_length=512)


class ExploreParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    anchor_media_id: str = Field(min_length=1, max_length=64)
    anchor_type: Literal["UPLOAD", "MEDIA"]
    entity_type: Literal["IMAGES", "OBJECTS"]
    threshold: int = Field(default=0, ge=0, le=len(CUTOFFS) - 1)
    page_number: int = Field(default=0, ge=0, le=MAX_RESULTS // PAGE_SIZE)
    # Lookalike's addition: verify the best hits by local features (slower, finds crops and
    # turned copies); verified copies of the anchor form one cluster.
    rerank: bool = False


def _tenant(event: Any) -> TenantService:
    app = service()
    return app.tenant(tenant_for_token(app.config(), bearer_token(event)))


def _dataset(tenant: TenantService, dataset_id: str) -> CollectionInfo:
    try:
        info = tenant.collection(dataset_id)
    except NotFound:
        raise NotFound("Dataset not found") from None
    if info.status != "READY":
        raise Conflict("Dataset status is not READY")
    return info


def _images_only(entity_type: str) -> None:
    if entity_type == "OBJECTS":
        raise BadRequest("entity_type OBJECTS is not available: this deployment searches whole images")


def _params(model: type[BaseModel], event: Any, extra: dict[str, Any] | None = None) -> Any:
    query = dict(event.query_string_parameters or {})
    return validate(model, {**query, **(extra or {})})


@upload_router.post("/api/v1/dataset/<dataset_id>/search-image-similarity")
def search_image_similarity(dataset_id: str) -> dict[str, str]:
    event = upload_router.current_event
    tenant = _tenant(event)
    if content_type(event) != "multipart/form-data":
        raise BadRequest("the query image must be sent as multipart/form-data field 'file'")
    form = multipart_form(event)
    params: UploadParams = _params(UploadParams, event, form.fields)
    _images_only(params.entity_type)
    _dataset(tenant, dataset_id)
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


def _preview(tenant: TenantService, dataset: str, hit: Hit, base: str) -> dict[str, Any]:
    meta = hit.metadata
    name = meta.get("file_name") or str(meta.get("path") or hit.id).rsplit("/", 1)[-1]
    return {
        "type": "IMAGE", "media_id": hit.id,
        "media_uri": tenant.media_url(base, dataset, hit, "full"),
        "media_thumb_uri": tenant.media_url(base, dataset, hit, "thumb"),
        "caption": meta.get("caption") if isinstance(meta.get("caption"), str) else None,
        "file_name": name, "bounding_box": None,
        "relevance_score": round(1.0 - hit.score, 4), "relevance_score_type": "cosine_distance",
        "width": meta.get("width"), "height": meta.get("height"),
    }


@explore_router.get("/api/v1/explore/<dataset_id>")
def explore(dataset_id: str) -> dict[str, Any]:
    event = explore_router.current_event
    tenant = _tenant(event)
    params: ExploreParams = _params(ExploreParams, event)
    _images_only(params.entity_type)
    info = _dataset(tenant, dataset_id)
    if params.anchor_type == "UPLOAD":
        try:
            ref = ImageRef(anchor_id=uuid.UUID(params.anchor_media_id).hex)
        except ValueError:
            raise NotFound("Anchor not found") from None
    else:
        ref = ImageRef(item_id=params.anchor_media_id)
    page, _ = tenant.search_with_vector(dataset_id, ref, limit=min(MAX_RESULTS, max(1, info.item_count)),
                                        max_limit=MAX_RESULTS, rerank=params.rerank)
    groups = tenant.cluster_hits(dataset_id, page.hits, params.threshold)
    start = params.page_number * PAGE_SIZE
    base = media.base_url(event)
    clusters = []
    for group in groups[start:start + PAGE_SIZE]:
        clusters.append({
            "cluster_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant.id}/{dataset_id}/{params.threshold}/"
                                                             f"{group.leader.id}")),
            "type": params.entity_type, "n_images": len(group.members), "n_objects": 0, "n_videos": 0,
            "similarity_threshold": str(params.threshold),
            "relevance_score": round(1.0 - group.leader.score, 4), "relevance_score_type": "cosine_distance",
            "previews": [_preview(tenant, dataset_id, h, base) for h in group.members[:PREVIEWS]],
            "labels": None, "user_tags": None, "captions": None,
        })
    return flag_rerank({"clusters": clusters, "metadata": {
        "used_duckdb": False, "page_number": params.page_number, "page_size": PAGE_SIZE,
        "total_clusters": len(groups)}}, asked=params.rerank, tenant=tenant)

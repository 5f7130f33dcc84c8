"""Visual Layer visual search (seeds/003): upload a query image, then explore its clusters.

Two functions serve it: ``upload`` (the query image) and ``reverse_search`` (explore); this
module holds what they share.


``POST /api/v1/dataset/{dataset_id}/search-image-similarity`` stages the (optionally
cropped) query image as an anchor; ``GET /api/v1/explore/{dataset_id}`` ranks the dataset
(a collection) against it and groups near-identical results into clusters, 100 a page, with
cosine *distance* scores (lower is closer). Auth: ``Authorization: Bearer <JWT>`` verified
against the tenant's key (signature, expiry, issuer). Only whole-image search is available:
``entity_type=OBJECTS`` is refused with 400. ``rerank=true`` (Lookalike's addition) re-ranks
the best hits by local features, as ``/v1`` search does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lookalike.api.request import bearer_token, service, validate
from lookalike.clustering import CUTOFFS
from lookalike.contracts import CollectionInfo
from lookalike.errors import BadRequest, Conflict, NotFound
from lookalike.jwt_auth import tenant_for_token
from lookalike.service import TenantService

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


def tenant_of(event: Any) -> TenantService:
    app = service()
    return app.tenant(tenant_for_token(app.config(), bearer_token(event)))


def dataset(tenant: TenantService, dataset_id: str) -> CollectionInfo:
    try:
        info = tenant.collection(dataset_id)
    except NotFound:
        raise NotFound("Dataset not found") from None
    if info.status != "READY":
        raise Conflict("Dataset status is not READY")
    return info


def images_only(entity_type: str) -> None:
    if entity_type == "OBJECTS":
        raise BadRequest("entity_type OBJECTS is not available: this deployment searches whole images")


def params_of(model: type[BaseModel], event: Any, extra: dict[str, Any] | None = None) -> Any:
    query = dict(event.query_string_parameters or {})
    return validate(model, {**query, **(extra or {})})

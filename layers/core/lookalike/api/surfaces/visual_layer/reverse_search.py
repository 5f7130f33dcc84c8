"""Visual Layer's explore (the reverse_search function): ranks a dataset against an uploaded
anchor or one of its own images and groups near-identical results into clusters."""

from __future__ import annotations

import uuid
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike import media
from lookalike.api.request import flag_rerank
from lookalike.api.surfaces.visual_layer import (
    MAX_RESULTS,
    PAGE_SIZE,
    PREVIEWS,
    ExploreParams,
    dataset,
    images_only,
    params_of,
    tenant_of,
)
from lookalike.contracts import Hit
from lookalike.errors import NotFound
from lookalike.service import ImageRef, TenantService

router = Router()


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


@router.get("/api/v1/explore/<dataset_id>")
def explore(dataset_id: str) -> dict[str, Any]:
    event = router.current_event
    tenant = tenant_of(event)
    params: ExploreParams = params_of(ExploreParams, event)
    images_only(params.entity_type)
    info = dataset(tenant, dataset_id)
    if params.anchor_type == "UPLOAD":
        try:
            ref = ImageRef(anchor_id=uuid.UUID(params.anchor_media_id).hex)
        except ValueError:
            raise NotFound("Anchor not found") from None
    else:
        ref = ImageRef(item_id=params.anchor_media_id)
    page, _ = tenant.search_with_vector(info, ref, limit=min(MAX_RESULTS, max(1, info.item_count)),
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

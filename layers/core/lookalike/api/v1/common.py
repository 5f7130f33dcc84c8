"""What the native /v1 API's routers share: reading an image request (JSON or multipart), the
image it names, and the hits and pages it answers.

Authentication: ``Authorization: Bearer <key>`` (or ``x-api-key``). Scores are cosine
similarity, higher is closer. There is one router module per Lambda function, named for it
(``functions/<name>/app.py`` includes ``lookalike.api.v1.<name>``).
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from lookalike import media
from lookalike.api.app import metrics
from lookalike.api.request import (
    content_type,
    json_object,
    json_value,
    multipart_form,
)
from lookalike.contracts import Hit, SearchPage
from lookalike.errors import BadRequest
from lookalike.schemas import (
    HitOut,
    SearchOptions,
    SearchResponse,
    TextSearchRequest,
    image_path,
)
from lookalike.service import ImageRef, TenantService

FORM_JSON_FIELDS = ("filter", "metadata", "bounding_box")
FORM_INT_FIELDS = ("limit", "offset", "dimension", "threshold")
FORM_FLOAT_FIELDS = ("min_score",)
FORM_BOOL_FIELDS = ("rerank",)


def image_request(event: Any) -> tuple[dict[str, Any], ImageRef | None]:
    """The request as a dict plus the uploaded file, for routes taking JSON or multipart."""
    if content_type(event) == "multipart/form-data":
        form = multipart_form(event)
        upload = form.files.get("image") or form.files.get("file")
        data: dict[str, Any] = {}
        for name, value in form.fields.items():
            try:
                if name in FORM_JSON_FIELDS:
                    data[name] = json_value(value, name)
                elif name in FORM_INT_FIELDS:
                    data[name] = int(value)
                elif name in FORM_FLOAT_FIELDS:
                    data[name] = float(value)
                elif name in FORM_BOOL_FIELDS:
                    if value.lower() not in ("true", "false"):
                        raise ValueError(value)
                    data[name] = value.lower() == "true"
                else:
                    data[name] = value
            except ValueError:
                raise BadRequest(f"{name}: invalid value") from None
        if upload is None:
            raise BadRequest("multipart request needs an 'image' file part")
        return data, ImageRef(data=upload.data, content_type=upload.content_type)
    return json_object(event), None


def image_ref(body: Any, upload: ImageRef | None) -> ImageRef:
    if upload is not None:
        if any(getattr(body, f, None) is not None for f in ("image_url", "data_url", "image_base64",
                                                            "anchor_id", "item_id")):
            raise BadRequest("give exactly one image: an uploaded file or one image field")
        return upload
    return ImageRef(url=body.image_url, data_url=body.data_url, base64=body.image_base64,
                    anchor_id=getattr(body, "anchor_id", None), item_id=getattr(body, "item_id", None))


def hit_out(tenant: TenantService, collection: str, hit: Hit, base: str) -> HitOut:
    return HitOut(id=hit.id, score=round(hit.score, 6), metadata=dict(hit.metadata),
                  image_url=image_path(collection, hit.id),
                  thumbnail_url=tenant.media_url(base, collection, hit, "thumb"),
                  full_image_url=tenant.media_url(base, collection, hit, "full"),
                  inliers=hit.inliers, exact_match=None if hit.inliers is None else hit.exact_match)


def page_out(tenant: TenantService, collection: str, page: SearchPage, options: SearchOptions | TextSearchRequest,
          event: Any, started: float) -> SearchResponse:
    base = media.base_url(event)
    hits = [hit_out(tenant, collection, h, base) for h in page.hits]
    threshold = getattr(options, "threshold", None)
    if threshold is not None and page.hits:
        # Groups are formed within the page, so every page stands alone.
        by_id = {h.id: h for h in hits}
        for group in tenant.cluster_hits(collection, page.hits, threshold):
            for member in group.members:
                by_id[member.id].cluster, by_id[member.id].cluster_size = group.leader.id, len(group.members)
    took = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="SearchLatency", unit=MetricUnit.Milliseconds, value=took)
    end = options.offset + len(page.hits)
    return SearchResponse(hits=hits, total=page.total, limit=options.limit, offset=options.offset,
                          next_offset=end if end < page.total and page.hits else None, took_ms=round(took, 2))



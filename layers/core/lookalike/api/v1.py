"""The native /v1 API: collections, items, anchors, search by image or text, embed, facets.

Authentication: ``Authorization: Bearer <key>`` (or ``x-api-key``). Scores are cosine
similarity, higher is closer. Routers are grouped by the Lambda function that serves them.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.metrics import MetricUnit

from lookalike import filters, media
from lookalike.api.app import metrics
from lookalike.api.request import (
    content_type,
    json_object,
    json_value,
    multipart_form,
    service,
    tenant_from_bearer,
    validate,
)
from lookalike.config import LAMBDA_MAX_ANSWER_BYTES
from lookalike.contracts import Hit, SearchPage
from lookalike.errors import BadRequest, NotFound, PayloadTooLarge
from lookalike.schemas import (
    AnchorOptions,
    AnchorOut,
    AnchorUploadOut,
    CollectionList,
    CollectionOut,
    CreateCollection,
    Deleted,
    DuplicatesResponse,
    EmbedOptions,
    EmbedRequest,
    EmbedResponse,
    FacetsResponse,
    FacetValue,
    GenerateRequest,
    GenerateResponse,
    HitOut,
    IngestFailure,
    IngestStatus,
    ItemOut,
    PresignedUpload,
    PutItem,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    StageAnchor,
    TextSearchRequest,
    image_path,
)
from lookalike.service import ImageRef, TenantService

catalog = Router()  # taxonomy function: collections, facets, item reads
items = Router()  # upload function: item writes and query-image anchors
search = Router()  # reverse_search function: search by image
text = Router()  # generate function: text search and single best match
embedding = Router()  # embed function

FORM_JSON_FIELDS = ("filter", "metadata", "bounding_box")
FORM_INT_FIELDS = ("limit", "offset", "dimension", "threshold")
FORM_FLOAT_FIELDS = ("min_score",)
FORM_BOOL_FIELDS = ("rerank",)


def _image_request(event: Any) -> tuple[dict[str, Any], ImageRef | None]:
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


def _ref(body: Any, upload: ImageRef | None) -> ImageRef:
    if upload is not None:
        if any(getattr(body, f, None) is not None for f in ("image_url", "data_url", "image_base64",
                                                            "anchor_id", "item_id")):
            raise BadRequest("give exactly one image: an uploaded file or one image field")
        return upload
    return ImageRef(url=body.image_url, data_url=body.data_url, base64=body.image_base64,
                    anchor_id=getattr(body, "anchor_id", None), item_id=getattr(body, "item_id", None))


def _hit(tenant: TenantService, collection: str, hit: Hit, base: str) -> HitOut:
    return HitOut(id=hit.id, score=round(hit.score, 6), metadata=dict(hit.metadata),
                  image_url=image_path(collection, hit.id),
                  thumbnail_url=tenant.media_url(base, collection, hit, "thumb"),
                  full_image_url=tenant.media_url(base, collection, hit, "full"),
                  inliers=hit.inliers, exact_match=None if hit.inliers is None else hit.exact_match)


def _page(tenant: TenantService, collection: str, page: SearchPage, options: SearchOptions | TextSearchRequest,
          event: Any, started: float) -> SearchResponse:
    base = media.base_url(event)
    hits = [_hit(tenant, collection, h, base) for h in page.hits]
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


# ---------------------------------------------------------------- catalog (taxonomy)


@catalog.get("/v1/collections")
def list_collections() -> CollectionList:
    tenant = tenant_from_bearer(catalog.current_event)
    return CollectionList(collections=[CollectionOut.of(c) for c in tenant.list_collections()])


@catalog.post("/v1/collections")
def create_collection() -> Response[CollectionOut]:
    tenant = tenant_from_bearer(catalog.current_event)
    body = validate(CreateCollection, json_object(catalog.current_event))
    info = tenant.create_collection(body.name, body.settings)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON,
                    body=CollectionOut.of(info).model_dump(mode="json"))


@catalog.get("/v1/collections/<collection>")
def get_collection(collection: str) -> CollectionOut:
    tenant = tenant_from_bearer(catalog.current_event)
    return CollectionOut.of(tenant.collection(collection))


@catalog.delete("/v1/collections/<collection>")
def delete_collection(collection: str) -> Deleted:
    tenant = tenant_from_bearer(catalog.current_event)
    tenant.delete_collection(collection)
    return Deleted(id=collection, deleted=True)


@catalog.get("/v1/collections/<collection>/facets")
def facets(
    collection: str,
    fields: Annotated[str | None, Query(max_length=1024)] = None,
    size: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FacetsResponse:
    tenant = tenant_from_bearer(catalog.current_event)
    names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    if names:
        for name in names:
            filters._check_field(name)
    result = tenant.facets(collection, names, size=size)
    return FacetsResponse(facets={k: [FacetValue(value=v, count=n) for v, n in vals] for k, vals in result.items()})


@catalog.get("/v1/collections/<collection>/ingest")
def ingest_status(collection: str) -> IngestStatus:
    """Whether the collection is being indexed, and the latest images ingestion refused."""
    tenant = tenant_from_bearer(catalog.current_event)
    info = tenant.collection(collection)
    return IngestStatus(status=info.status, item_count=info.item_count,
                        recent_failures=[IngestFailure(**f) for f in tenant.ingest_failures(collection)])


@catalog.get("/v1/collections/<collection>/items/<item_id>")
def get_item(collection: str, item_id: str) -> ItemOut:
    tenant = tenant_from_bearer(catalog.current_event)
    return ItemOut.of(tenant.get_item(collection, item_id), collection)


@catalog.get("/v1/collections/<collection>/items/<item_id>/duplicates")
def get_item_duplicates(collection: str, item_id: str) -> DuplicatesResponse:
    tenant = tenant_from_bearer(catalog.current_event)
    base = media.base_url(catalog.current_event)
    return DuplicatesResponse(id=item_id, duplicates=[_hit(tenant, collection, h, base)
                                                      for h in tenant.duplicates(collection, item_id)])


# Binary body: skip response validation (it would serialise the bytes as text).
@catalog.get("/v1/collections/<collection>/items/<item_id>/image", enable_validation=False)
def get_item_image(collection: str, item_id: str) -> Response[bytes]:
    tenant = tenant_from_bearer(catalog.current_event)
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


# ---------------------------------------------------------------- items (upload)


@items.put("/v1/collections/<collection>/items/<item_id>")
def put_item(collection: str, item_id: str) -> ItemOut:
    tenant = tenant_from_bearer(items.current_event)
    data, upload = _image_request(items.current_event)
    if upload is not None:
        metadata = data.pop("metadata", {})
        if data:
            raise BadRequest(f"unknown form field {sorted(data)[0]!r}")
        item = tenant.put_item(collection, item_id, upload, metadata)
    else:
        body = validate(PutItem, data)
        item = tenant.put_item(collection, item_id, _ref(body, None), body.metadata)
    return ItemOut.of(item, collection)


@items.delete("/v1/collections/<collection>/items/<item_id>")
def delete_item(collection: str, item_id: str) -> Deleted:
    tenant = tenant_from_bearer(items.current_event)
    if not tenant.delete_item(collection, item_id):
        raise NotFound("Item not found")
    return Deleted(id=item_id, deleted=True)


@items.post("/v1/anchors")
def stage_anchor() -> Response[AnchorOut]:
    tenant = tenant_from_bearer(items.current_event)
    data, upload = _image_request(items.current_event)
    if upload is not None:
        box, ref = validate(AnchorOptions, data).bounding_box, upload
    else:
        body = validate(StageAnchor, data)
        box, ref = body.bounding_box, _ref(body, None)
    anchor = tenant.stage_anchor(ref, box.region() if box else None)
    body = AnchorOut(anchor_id=anchor.id, model_id=anchor.model_id, expires_at=anchor.expires_at)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=body.model_dump(mode="json"))


@items.post("/v1/anchors/uploads")
def anchor_upload() -> Response[AnchorUploadOut]:
    """A presigned upload of a query image past the API's payload limits (the stack: S3)."""
    tenant = tenant_from_bearer(items.current_event)
    up = tenant.anchor_upload()
    body = AnchorUploadOut(anchor_id=up.anchor_id, upload=PresignedUpload(url=up.url, fields=up.fields),
                           max_bytes=up.max_bytes, expires_at=up.expires_at)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=body.model_dump(mode="json"))


# ---------------------------------------------------------------- search (reverse_search)


@search.post("/v1/collections/<collection>/search")
def search_by_image(collection: str) -> SearchResponse:
    started = time.perf_counter()
    tenant = tenant_from_bearer(search.current_event)
    data, upload = _image_request(search.current_event)
    body: SearchOptions = validate(SearchOptions if upload is not None else SearchRequest, data)
    page = tenant.search(collection, _ref(body, upload), limit=body.limit, offset=body.offset,
                         filter=filters.from_json(body.filter), min_score=body.min_score, rerank=body.rerank)
    answer = _page(tenant, collection, page, body, search.current_event, started)
    if body.rerank:
        answer.reranked = tenant.can_rerank()
    return answer


# ---------------------------------------------------------------- text (generate)


@text.post("/v1/collections/<collection>/search/text")
def search_by_text(collection: str) -> SearchResponse:
    started = time.perf_counter()
    tenant = tenant_from_bearer(text.current_event)
    body = validate(TextSearchRequest, json_object(text.current_event))
    page = tenant.text_search(collection, body.query, fields=body.fields, limit=body.limit, offset=body.offset,
                              filter=filters.from_json(body.filter), min_score=body.min_score, mode=body.mode)
    return _page(tenant, collection, page, body, text.current_event, started)


@text.post("/v1/collections/<collection>/generate")
def generate(collection: str) -> GenerateResponse:
    tenant = tenant_from_bearer(text.current_event)
    body = validate(GenerateRequest, json_object(text.current_event))
    page = tenant.text_search(collection, body.prompt, fields=body.fields, limit=1,
                              filter=filters.from_json(body.filter), min_score=body.min_score)
    if not page.hits:
        raise NotFound("No match found")
    return GenerateResponse(item=_hit(tenant, collection, page.hits[0], media.base_url(text.current_event)))


# ---------------------------------------------------------------- embed


@embedding.post("/v1/embed")
def embed() -> EmbedResponse:
    tenant = tenant_from_bearer(embedding.current_event)
    data, upload = _image_request(embedding.current_event)
    if upload is not None:
        options = validate(EmbedOptions, data)
        ref = upload
    else:
        body = validate(EmbedRequest, data)
        options, ref = EmbedOptions(dimension=body.dimension), _ref(body, None)
    vector = tenant.embed(ref)
    if options.dimension:
        vector = tenant.embedder.project(vector[None], options.dimension)[0]
    return EmbedResponse(model_id=tenant.embedder.model_id, dimension=int(vector.shape[0]),
                         embedding=[float(x) for x in vector])


# ---------------------------------------------------------------- signed media (taxonomy)


# No key: the signed token is the credential, so <img src> works. Binary body: no validation.
@catalog.get("/media/<token>", enable_validation=False)
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

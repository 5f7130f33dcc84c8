"""Pydantic models of the native /v1 API's requests and responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lookalike.clustering import CUTOFFS
from lookalike.config import CollectionSettings
from lookalike.contracts import CollectionInfo, Hit, Item
from lookalike.fetch import MAX_URL_CHARS
from lookalike.rules import NAME_PATTERN, PAGE_LIMIT_CEILING


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInput(Strict):
    """One image, by exactly one of these fields."""

    image_url: str | None = Field(default=None, max_length=MAX_URL_CHARS)
    data_url: str | None = Field(default=None, max_length=8 * 1024 * 1024)
    image_base64: str | None = Field(default=None, max_length=8 * 1024 * 1024)

    def given(self) -> int:
        return sum(v is not None for v in (self.image_url, self.data_url, self.image_base64))


class CreateCollection(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    settings: CollectionSettings = CollectionSettings()


class CollectionOut(BaseModel):
    name: str
    model_id: str
    dimension: int
    item_count: int
    status: Literal["READY", "INDEXING"]
    settings: dict[str, Any]
    created_at: float
    text_model_id: str | None = None
    text_dimension: int | None = None

    @classmethod
    def of(cls, info: CollectionInfo) -> CollectionOut:
        return cls(name=info.name, model_id=info.model_id, dimension=info.dimension, item_count=info.item_count,
                   status=info.status, settings=dict(info.settings), created_at=info.created_at,
                   text_model_id=info.text_model_id, text_dimension=info.text_dimension)


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class OneImage(ImageInput):
    """An image given by exactly one field (``/v1/embed``, ``/v1/anchors``)."""

    @model_validator(mode="after")
    def _one_image(self) -> OneImage:
        if self.given() != 1:
            raise ValueError("give exactly one of image_url, data_url or image_base64")
        return self


class BoundingBox(Strict):
    """A region of an image, as fractions of its width and height (the Visual Layer form)."""

    x: float = Field(ge=0, le=1)
    y: float = Field(ge=0, le=1)
    width: float = Field(gt=0, le=1)
    height: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _inside(self) -> BoundingBox:
        if self.x + self.width > 1.0001 or self.y + self.height > 1.0001:
            raise ValueError("bounding_box must lie inside the image")
        return self

    def region(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.width, self.height


class StageAnchor(OneImage):
    bounding_box: BoundingBox | None = Field(default=None, description="search by this region of the image only")


class AnchorOptions(Strict):
    """The multipart form of staging an anchor takes only these besides the file."""

    bounding_box: BoundingBox | None = None


class EmbedOptions(Strict):
    dimension: Literal[512, 1024] | None = Field(default=None, description="project to 512 or 1024 dimensions")


class EmbedRequest(EmbedOptions, OneImage):
    """An image by one field, plus the embed options."""


class PutItem(OneImage):
    metadata: dict[str, Any] = Field(default_factory=dict)


class ItemOut(BaseModel):
    id: str
    metadata: dict[str, Any]
    image_url: str | None = None

    @classmethod
    def of(cls, item: Item | Hit, collection: str) -> ItemOut:
        return cls(id=item.id, metadata=dict(item.metadata), image_url=image_path(collection, item.id))


def image_path(collection: str, item_id: str) -> str:
    return f"/v1/collections/{collection}/items/{item_id}/image"


class Deleted(BaseModel):
    id: str
    deleted: bool


class SearchOptions(Strict):
    """Paging, filtering and cutoff: the multipart form of a search takes only these."""

    limit: int = Field(default=10, ge=1, le=PAGE_LIMIT_CEILING, description=(
        "at most the tenant's limits.max_limit (100 unless configured)"))
    offset: int = Field(default=0, ge=0, le=10_000)
    filter: dict[str, Any] | None = None
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    rerank: bool = Field(default=False, description=(
        "verify the best 50 hits by local features and put copies of the query photo first (slower)"))
    threshold: int | None = Field(default=None, ge=0, le=len(CUTOFFS) - 1, description=(
        "group near-identical hits on the page (the Visual Layer threshold: 0 only copies, 4 close variants)"))


class SearchRequest(SearchOptions, ImageInput):
    anchor_id: str | None = Field(default=None, max_length=64)
    item_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _one_image(self) -> SearchRequest:
        if self.given() + (self.anchor_id is not None) + (self.item_id is not None) != 1:
            raise ValueError("give exactly one of image_url, data_url, image_base64, anchor_id or item_id")
        return self


class HitOut(BaseModel):
    id: str
    score: float = Field(description="cosine similarity, higher is closer")
    metadata: dict[str, Any]
    image_url: str = Field(description="the image, with the API key")
    thumbnail_url: str = Field(description="a signed, expiring link to a thumbnail, for <img src>")
    full_image_url: str = Field(description="a signed, expiring link to the image, for <img src>")
    cluster: str | None = Field(default=None, description="with threshold: the id of the hit leading its group")
    cluster_size: int | None = Field(default=None, description="with threshold: hits in its group on this page")
    inliers: int | None = Field(default=None, description=(
        "with rerank: keypoints of the query photo that agree on one geometry with this hit's"))
    exact_match: bool | None = Field(default=None, description=(
        "with rerank: the hit is verified as the query photo's original (cropped, turned, re-encoded), ranked first"))


class DuplicatesResponse(BaseModel):
    id: str
    duplicates: list[HitOut] = Field(description=(
        "verified near-duplicates of the item in its collection (the same photo again, cropped, turned or "
        "re-encoded), most inliers first"))


class SearchResponse(BaseModel):
    hits: list[HitOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None
    took_ms: float
    # Where rerank was asked for: whether the hits were verified by local features (false on a
    # deployment without OpenCV, the Lambda stack: cosine order, no inliers or exact_match).
    reranked: bool | None = None


class TextSearchRequest(Strict):
    query: str = Field(min_length=1, max_length=500)
    mode: Literal["semantic", "keyword", "hybrid"] = Field(
        default="semantic", description="meaning, BM25 keywords, or both fused by reciprocal rank")
    fields: list[Literal["caption", "prompt"]] = Field(default=["caption", "prompt"], min_length=1)
    limit: int = Field(default=10, ge=1, le=PAGE_LIMIT_CEILING, description=(
        "at most the tenant's limits.max_limit (100 unless configured)"))
    offset: int = Field(default=0, ge=0, le=10_000)
    filter: dict[str, Any] | None = None
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)


GENERATE_MIN_SCORE = 0.3  # cosine in the text model; unrelated sentences score ~0-0.2


class GenerateRequest(Strict):
    prompt: str = Field(min_length=1, max_length=500)
    fields: list[Literal["caption", "prompt"]] = Field(default=["caption", "prompt"], min_length=1)
    filter: dict[str, Any] | None = None
    min_score: float = Field(default=GENERATE_MIN_SCORE, ge=-1.0, le=1.0,
                             description="below this the best match is 'No match found' (semantic search only)")


class GenerateResponse(BaseModel):
    item: HitOut


class PresignedUpload(BaseModel):
    url: str
    fields: dict[str, str]


class AnchorUploadOut(BaseModel):
    """POST the image to ``upload.url`` as multipart/form-data: every field of ``upload.fields``,
    a ``Content-Type`` field (image/...), then the ``file``; then search by ``anchor_id``."""

    anchor_id: str
    upload: PresignedUpload
    max_bytes: int
    expires_at: float


class AnchorOut(BaseModel):
    anchor_id: str
    model_id: str
    expires_at: float


class EmbedResponse(BaseModel):
    model_id: str
    dimension: int
    embedding: list[float]


class IngestFailure(BaseModel):
    id: str
    reason: str
    at: float


class IngestStatus(BaseModel):
    status: Literal["READY", "INDEXING"]
    item_count: int
    recent_failures: list[IngestFailure] = Field(description="newest first, at most 50")


class FacetValue(BaseModel):
    value: str
    count: int


class FacetsResponse(BaseModel):
    facets: dict[str, list[FacetValue]]


class ErrorBody(BaseModel):
    error: str

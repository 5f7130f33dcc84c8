"""Imgen Cache API (seeds/004): text search, generate, taxonomy.

Two functions serve it: ``generate`` (``/api/search``, ``/api/generate``) and ``taxonomy``
(``/api/characters``, ``/api/models``, ``/api/styles``); this module holds what they share.
 Bearer key; ``{"error"}`` errors.

Searches the tenant's ``default_collection`` by meaning over item captions and prompts.
``url`` and ``thumbnail`` are signed, expiring links that work in an ``<img src>``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lookalike.contracts import Hit
from lookalike.filters import And, Filter, Term
from lookalike.service import TenantService

SEARCH_FIELDS = {"both": ("caption", "prompt"), "caption": ("caption",), "prompt": ("prompt",)}


class Filters(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send whatever else they like
    character: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=200)
    style: str | None = Field(default=None, max_length=200)
    search_in: Literal["both", "caption", "prompt"] = "both"

    def node(self) -> Filter | None:
        terms = [Term(name, value) for name in ("character", "model", "style") if (value := getattr(self, name))]
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else And(tuple(terms))


class SearchBody(Filters):
    query: str = Field(min_length=1, max_length=500)
    limit: int = Field(default=10, ge=1, le=50)


class GenerateBody(Filters):
    prompt: str = Field(min_length=1, max_length=500)


class ImageObject(BaseModel):
    id: str
    url: str
    thumbnail: str
    width: int | None
    height: int | None
    character: str
    model: str
    style: str
    prompt: str
    caption: str
    score: float | None = None


class SearchResponse(BaseModel):
    results: list[ImageObject]
    count: int


class GenerateResponse(BaseModel):
    image: ImageObject


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def image_object(tenant: TenantService, collection: str, hit: Hit, base: str, with_score: bool) -> ImageObject:
    meta = hit.metadata
    return ImageObject(
        id=hit.id, url=tenant.media_url(base, collection, hit, "full"),
        thumbnail=tenant.media_url(base, collection, hit, "thumb"),
        width=meta.get("width"), height=meta.get("height"),
        character=text_of(meta.get("character")), model=text_of(meta.get("model")), style=text_of(meta.get("style")),
        prompt=text_of(meta.get("prompt")), caption=text_of(meta.get("caption")),
        score=round(hit.score, 6) if with_score else None,
    )

"""Imgen Cache API (seeds/004): text search, generate, taxonomy. Bearer key; ``{"error"}`` errors.

Searches the tenant's ``default_collection`` by meaning over item captions and prompts.
``url`` and ``thumbnail`` are signed, expiring links that work in an ``<img src>``.
"""

from __future__ import annotations

from typing import Any, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, ConfigDict, Field

from lookalike import media
from lookalike.api.request import json_object, tenant_from_bearer, validate
from lookalike.contracts import Hit
from lookalike.errors import NotFound
from lookalike.filters import And, Filter, Term
from lookalike.schemas import GENERATE_MIN_SCORE
from lookalike.service import TenantService

search_router = Router()  # generate function: /api/search, /api/generate
taxonomy_router = Router()  # taxonomy function: /api/characters, /api/models, /api/styles

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


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def image_object(tenant: TenantService, collection: str, hit: Hit, base: str, with_score: bool) -> ImageObject:
    meta = hit.metadata
    return ImageObject(
        id=hit.id, url=tenant.media_url(base, collection, hit, "full"),
        thumbnail=tenant.media_url(base, collection, hit, "thumb"),
        width=meta.get("width"), height=meta.get("height"),
        character=_text(meta.get("character")), model=_text(meta.get("model")), style=_text(meta.get("style")),
        prompt=_text(meta.get("prompt")), caption=_text(meta.get("caption")),
        score=round(hit.score, 6) if with_score else None,
    )


@search_router.post("/api/search")
def search() -> SearchResponse:
    tenant = tenant_from_bearer(search_router.current_event)
    body = validate(SearchBody, json_object(search_router.current_event))
    collection = tenant.config.tenants[tenant.id].default_collection
    page = tenant.text_search(collection, body.query, fields=SEARCH_FIELDS[body.search_in], limit=body.limit,
                              filter=body.node())
    base = media.base_url(search_router.current_event)
    results = [image_object(tenant, collection, h, base, True) for h in page.hits]
    return SearchResponse(results=results, count=len(results))


@search_router.post("/api/generate")
def generate() -> dict[str, Any]:
    tenant = tenant_from_bearer(search_router.current_event)
    body = validate(GenerateBody, json_object(search_router.current_event))
    collection = tenant.config.tenants[tenant.id].default_collection
    page = tenant.text_search(collection, body.prompt, fields=SEARCH_FIELDS[body.search_in], limit=1,
                              filter=body.node(), min_score=GENERATE_MIN_SCORE)
    if not page.hits:
        raise NotFound("No match found")
    obj = image_object(tenant, collection, page.hits[0], media.base_url(search_router.current_event), False)
    return {"image": obj.model_dump(exclude={"score"})}


def _values(field: str) -> list[str]:
    tenant = tenant_from_bearer(taxonomy_router.current_event)
    collection = tenant.config.tenants[tenant.id].default_collection
    facets = tenant.facets(collection, [field], size=1000)
    return sorted(value for value, _ in facets[field] if value)


@taxonomy_router.get("/api/characters")
def characters() -> dict[str, list[str]]:
    return {"characters": _values("character")}


@taxonomy_router.get("/api/models")
def models() -> dict[str, list[str]]:
    return {"models": _values("model")}


@taxonomy_router.get("/api/styles")
def styles() -> dict[str, list[str]]:
    return {"styles": _values("style")}

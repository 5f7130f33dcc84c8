"""The OpenAPI 3.1 document of every route, generated from the routers and the pydantic models.

Powertools derives paths, parameters and response schemas from the routes; the request
bodies that routes parse themselves (JSON or multipart), the 4xx error shape and the auth
schemes are added here from the same pydantic models, so the document cannot drift from them.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel

from lookalike import schemas
from lookalike.api.app import build_app
from lookalike.api.surfaces import imgen
from lookalike.api.surfaces.imgen import generate as imgen_generate
from lookalike.api.surfaces.imgen import taxonomy as imgen_taxonomy
from lookalike.api.surfaces.marqo import reverse_search as marqo_reverse_search
from lookalike.api.surfaces.pixlab import embed as pixlab_embed
from lookalike.api.surfaces.visual_layer import reverse_search as visual_layer_reverse_search
from lookalike.api.surfaces.visual_layer import upload as visual_layer_upload
from lookalike.api.surfaces.xgen import reverse_search as xgen_reverse_search
from lookalike.api.v1 import embed, generate, reverse_search, taxonomy, upload

# Served by lookalike.api.web at GET /openapi.json, which imports this module (every router
# and model) only for that route.
ROUTERS: tuple[Router, ...] = (
    taxonomy.router, upload.router, reverse_search.router, generate.router, embed.router,
    xgen_reverse_search.router, marqo_reverse_search.router, pixlab_embed.router, imgen_generate.router,
    imgen_taxonomy.router, visual_layer_upload.router, visual_layer_reverse_search.router,
)

BINARY = {"type": "string", "format": "binary"}
JSON_TEXT = {"type": "string", "description": "JSON, as text"}


def _form(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": [k for k in properties if k in (
        "image", "file")]}


def _model(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _form_of(model: type[BaseModel], **files: dict[str, Any]) -> dict[str, Any]:
    """A multipart form's schema from the pydantic model that validates its fields (so a field
    added to the model is documented at once): object and list fields travel as JSON text."""
    properties: dict[str, dict[str, Any]] = {}
    for name, prop in model.model_json_schema()["properties"].items():
        kinds = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        if any(k.get("type") in ("object", "array") for k in kinds):
            properties[name] = JSON_TEXT
        else:
            kept = {k: v for k, v in prop.items() if k == "description" or (k == "default" and v is not None)}
            properties[name] = {**{k: v for k, v in kinds[0].items() if k != "title"}, **kept}
    return _form(**files, **properties)


SEARCH_FORM = _form_of(schemas.SearchOptions, image=BINARY)
MARQO_BODY = {"type": "object", "required": ["q"], "properties": {
    "q": {"type": "string", "description": "image URL (.jpg .jpeg .png .webp .tiff .avif) or data:image/... URL"},
    "limit": {"type": "integer", "default": 10, "description": "clamped to 1-10"},
    "filter": {"type": "string", "description": "Marqo filter DSL"},
    "attributesToRetrieve": {"type": "array", "items": {"type": "string"}}}}
PIXLAB_BODY = {"type": "object", "properties": {
    "img": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}],
            "description": "base64 image or image URL (an array embeds a batch)"},
    "url": {"type": "string"}, "key": {"type": "string"}, "dimension": {"type": "integer", "enum": [512, 1024]}}}

#: (method, path) -> content type -> schema (a pydantic model or a JSON schema).
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/collections"): {"application/json": schemas.CreateCollection},
    ("put", "/v1/collections/{collection}/items/{item_id}"): {
        "application/json": schemas.PutItem, "multipart/form-data": _form(image=BINARY, metadata=JSON_TEXT)},
    ("post", "/v1/anchors"): {"application/json": schemas.StageAnchor,
                              "multipart/form-data": _form(image=BINARY, bounding_box=JSON_TEXT)},
    ("post", "/v1/collections/{collection}/search"): {
        "application/json": schemas.SearchRequest, "multipart/form-data": SEARCH_FORM},
    ("post", "/v1/collections/{collection}/search/text"): {"application/json": schemas.TextSearchRequest},
    ("post", "/v1/collections/{collection}/generate"): {"application/json": schemas.GenerateRequest},
    ("post", "/v1/embed"): {"application/json": schemas.EmbedRequest,
                            "multipart/form-data": _form(image=BINARY, dimension={"type": "integer"})},
    ("post", "/customers/{customer_id}/users/{user_id}"): {
        "multipart/form-data": _form(image=BINARY, collection={"type": "string"}, locale={"type": "string"})},
    ("post", "/image/customers/{customer_id}/users/{user_id}"): {
        "multipart/form-data": _form(image=BINARY, collection={"type": "string"}, locale={"type": "string"})},
    ("post", "/api/v1/indexes/{index_name}/reverse-image-search"): {"application/json": MARQO_BODY},
    ("post", "/imgembed"): {"application/json": PIXLAB_BODY,
                            "multipart/form-data": _form(file=BINARY, key={"type": "string"},
                                                         dimension={"type": "integer"})},
    ("post", "/api/search"): {"application/json": imgen.SearchBody},
    ("post", "/api/generate"): {"application/json": imgen.GenerateBody},
    ("post", "/api/v1/dataset/{dataset_id}/search-image-similarity"): {"multipart/form-data": _form(file=BINARY)},
}
#: Query parameters of routes that read them themselves.
QUERY_PARAMETERS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("get", "/imgembed"): {"img": {"type": "string"}, "url": {"type": "string"}, "key": {"type": "string"},
                           "dimension": {"type": "integer", "enum": [512, 1024]}},
    ("post", "/api/v1/dataset/{dataset_id}/search-image-similarity"): {
        "entity_type": {"type": "string", "enum": ["IMAGES", "OBJECTS"]},
        "threshold": {"type": "integer", "minimum": 0, "maximum": 4},
        "bounding_box": {"type": "string", "description": 'JSON {"x","y","width","height"}, fractions 0-1'}},
    ("get", "/api/v1/explore/{dataset_id}"): {
        "anchor_media_id": {"type": "string"}, "anchor_type": {"type": "string", "enum": ["UPLOAD", "MEDIA"]},
        "entity_type": {"type": "string", "enum": ["IMAGES", "OBJECTS"]},
        "threshold": {"type": "integer", "minimum": 0, "maximum": 4},
        "page_number": {"type": "integer", "minimum": 0}},
}
SECURITY: dict[str, dict[str, Any]] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "API key (or a JWT for Visual Layer)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "accessToken": {"type": "apiKey", "in": "header", "name": "access_token"},
    "pixlabKey": {"type": "apiKey", "in": "query", "name": "key"},
    "marqoIndexId": {"type": "apiKey", "in": "header", "name": "x-marqo-index-id",
                     "description": "Marqo reverse image search: the collection's index id, which alone "
                                    "allows searching that one collection"},
}
#: Routes that answer success with another status than 200.
CREATED = {("post", "/v1/collections"), ("post", "/v1/anchors"), ("post", "/v1/anchors/uploads")}
#: Routes a deployment may not be able to serve (README, Deploy): 501 there.
NOT_EVERYWHERE = {("post", "/v1/anchors/uploads"), ("get", "/v1/collections/{collection}/items/{item_id}/duplicates")}
ERRORS = {"400": "Bad request", "401": "Unauthorized", "404": "Not found", "409": "Conflict",
          "413": "Payload too large"}


@cache
def document() -> dict[str, Any]:
    # Including a router in an app rebinds it to that app: put every router back afterwards,
    # so building this document never disturbs the function's own resolver.
    previous = [r.api_resolver for r in ROUTERS]
    try:
        schema = build_app(*ROUTERS).get_openapi_schema(
            title="Lookalike", version="0.1.0", summary="Serverless image search: /v1 and five compatible APIs",
            security_schemes=SECURITY)  # type: ignore[arg-type]
    finally:
        for r, resolver in zip(ROUTERS, previous, strict=True):
            r.api_resolver = resolver
    doc = json.loads(schema.model_dump_json(by_alias=True, exclude_none=True))
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = schemas.ErrorBody.model_json_schema()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for content_type, body in REQUEST_BODIES.get((method, path), {}).items():
                if isinstance(body, type) and issubclass(body, BaseModel):
                    components[body.__name__] = body.model_json_schema(ref_template="#/components/schemas/{model}")
                    for name, definition in components[body.__name__].pop("$defs", {}).items():
                        components.setdefault(name, definition)
                    body = _model(body)
                op.setdefault("requestBody", {"required": True, "content": {}})["content"][content_type] = {
                    "schema": body}
            for name, definition in QUERY_PARAMETERS.get((method, path), {}).items():
                op.setdefault("parameters", []).append({"name": name, "in": "query", "schema": definition})
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # validation errors are answered 400 with the error shape
            if (method, path) in CREATED and "200" in responses:
                responses["201"] = responses.pop("200")
            errors = {**ERRORS, "501": "Not available on this deployment"} if (method, path) in NOT_EVERYWHERE \
                else ERRORS
            for status, text in errors.items():
                responses.setdefault(status, {"description": text, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    return doc

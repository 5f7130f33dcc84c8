"""taxonomy: collections, facets, item reads, signed media and /openapi.json (/v1);
Imgen's characters, models and styles."""

from lookalike.api import openapi, v1
from lookalike.api.app import build_handler
from lookalike.api.surfaces import imgen

app, lambda_handler = build_handler(v1.catalog, imgen.taxonomy_router, openapi.router)

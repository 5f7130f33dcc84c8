"""taxonomy: collections, facets, ingest status, item reads, signed media, /openapi.json and the
search page (/ui);
Imgen's characters, models and styles."""

from lookalike.api import v1, web
from lookalike.api.app import build_handler
from lookalike.api.surfaces import imgen

app, lambda_handler = build_handler(v1.catalog, imgen.taxonomy_router, web.router)

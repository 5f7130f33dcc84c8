"""taxonomy: collections, facets, ingest status, item reads, signed media, /openapi.json and the
search page (/ui);
Imgen's characters, models and styles."""

from lookalike.api import web
from lookalike.api.app import build_handler
from lookalike.api.surfaces.imgen import taxonomy as imgen
from lookalike.api.v1 import taxonomy

app, lambda_handler = build_handler(taxonomy.router, imgen.router, web.router)

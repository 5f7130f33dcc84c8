"""taxonomy: collections, facets, item reads and signed media (/v1); Imgen's characters, models, styles."""

from lookalike.api import v1
from lookalike.api.app import build_handler
from lookalike.api.surfaces import imgen

app, lambda_handler = build_handler(v1.catalog, imgen.taxonomy_router)

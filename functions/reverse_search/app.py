"""reverse_search: search a collection by image (/v1, XGen, Marqo, Visual Layer explore)."""

from lookalike.api import v1
from lookalike.api.app import build_handler
from lookalike.api.surfaces import marqo, visual_layer, xgen

app, lambda_handler = build_handler(v1.search, xgen.router, marqo.router, visual_layer.explore_router)

"""reverse_search: search a collection by image (/v1, XGen, Marqo, Visual Layer explore)."""

from lookalike.api.app import build_handler
from lookalike.api.surfaces import marqo, visual_layer, xgen
from lookalike.api.v1 import reverse_search

app, lambda_handler = build_handler(reverse_search.router, xgen.router, marqo.router, visual_layer.explore_router)

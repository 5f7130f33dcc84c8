"""reverse_search: search a collection by image (/v1, XGen, Marqo, Visual Layer explore)."""

from lookalike.api.app import build_handler
from lookalike.api.surfaces.marqo import reverse_search as marqo
from lookalike.api.surfaces.visual_layer import reverse_search as visual_layer
from lookalike.api.surfaces.xgen import reverse_search as xgen
from lookalike.api.v1 import reverse_search

app, lambda_handler = build_handler(reverse_search.router, xgen.router, marqo.router, visual_layer.router)

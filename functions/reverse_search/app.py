"""reverse_search: search a collection by image (/v1, XGen, Marqo)."""

from lookalike.api import v1
from lookalike.api.app import build_handler
from lookalike.api.surfaces import marqo, xgen

app, lambda_handler = build_handler(v1.search, xgen.router, marqo.router)

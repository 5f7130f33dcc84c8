"""generate: text search over captions and prompts, and the single best match (/v1, Imgen)."""

from lookalike.api import v1
from lookalike.api.app import build_handler
from lookalike.api.surfaces import imgen

app, lambda_handler = build_handler(v1.text, imgen.search_router)

"""generate: text search over captions and prompts, and the single best match (/v1, Imgen)."""

from lookalike.api.app import build_handler
from lookalike.api.surfaces.imgen import generate as imgen
from lookalike.api.v1 import generate

app, lambda_handler = build_handler(generate.router, imgen.router)

"""embed: return an image's embedding vector."""

from lookalike.api import v1
from lookalike.api.app import build_handler

app, lambda_handler = build_handler(v1.embedding)

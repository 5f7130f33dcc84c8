"""embed: an image's embedding (/v1/embed, and PixLab's /imgembed)."""

from lookalike.api import v1
from lookalike.api.app import build_handler
from lookalike.api.surfaces import pixlab

app, lambda_handler = build_handler(v1.embedding, pixlab.router)

"""embed: an image's embedding (/v1/embed, and PixLab's /imgembed)."""

from lookalike.api.app import build_handler
from lookalike.api.surfaces.pixlab import embed as pixlab
from lookalike.api.v1 import embed

app, lambda_handler = build_handler(embed.router, pixlab.router)

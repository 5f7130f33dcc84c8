"""upload: add and delete catalog items, stage query images as anchors (/v1, Visual Layer step 1)."""

from lookalike.api.app import build_handler
from lookalike.api.surfaces.visual_layer import upload as visual_layer
from lookalike.api.v1 import upload

app, lambda_handler = build_handler(upload.router, visual_layer.router)

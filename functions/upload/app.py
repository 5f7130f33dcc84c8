"""upload: add and delete catalog items, stage query images as anchors (/v1, Visual Layer step 1)."""

from lookalike.api import v1
from lookalike.api.app import build_handler
from lookalike.api.surfaces import visual_layer

app, lambda_handler = build_handler(v1.items, visual_layer.upload_router)

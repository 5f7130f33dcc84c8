"""upload: add and delete catalog items, stage query images as anchors."""

from lookalike.api import v1
from lookalike.api.app import build_handler

app, lambda_handler = build_handler(v1.items)

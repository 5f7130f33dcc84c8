"""reverse_search: search a collection by image (upload, URL, data URL, anchor or item id)."""

from lookalike.api import v1
from lookalike.api.app import build_handler

app, lambda_handler = build_handler(v1.search)

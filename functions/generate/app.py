"""generate: text search over captions and prompts, and the single best match for a prompt."""

from lookalike.api import v1
from lookalike.api.app import build_handler

app, lambda_handler = build_handler(v1.text)

"""Logs are structured JSON and never carry keys, tokens, image bytes or base64 payloads."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
import requests

from lookalike.api.app import logger
from tests.conftest import catalog_images
from tests.security.conftest import DEMO, GLOBEX


def test_logs_are_json_without_secrets_or_payloads(site: str, capfd: pytest.CaptureFixture[str]) -> None:
    image = catalog_images()[1].read_bytes()
    b64 = base64.b64encode(image).decode()
    token = DEMO.jwt()
    capfd.readouterr()
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    assert handlers
    buffer = io.StringIO()
    streams = [h.setStream(buffer) for h in handlers]  # the handlers' JSON lines, as Lambda would ship them
    requests.post(f"{site}/v1/collections/{DEMO.collection}/search", headers={"Authorization": f"Bearer {DEMO.key}"},
                  json={"image_base64": b64}, timeout=30)
    requests.post(f"{site}/v1/collections/{DEMO.collection}/search", headers={"Authorization": "Bearer wrong-key-123"},
                  json={"data_url": "data:image/jpeg;base64," + b64}, timeout=30)
    requests.get(f"{site}/imgembed", params={"img": b64[:4000], "key": GLOBEX.key}, timeout=30)
    requests.post(f"{site}/api/v1/dataset/{DEMO.collection}/search-image-similarity",
                  headers={"Authorization": f"Bearer {token}"}, files={"file": ("q.jpg", image)},
                  params={"threshold": 0, "entity_type": "IMAGES"}, timeout=30)
    requests.post(f"{site}/v1/embed", headers={"Authorization": f"Bearer {DEMO.key}"},
                  json={"image_base64": "!!not base64!!" + b64[:100]}, timeout=30)
    for h, stream in zip(handlers, streams, strict=True):
        h.setStream(stream)
    out = capfd.readouterr()
    logs = buffer.getvalue() + out.out + out.err
    records = buffer.getvalue().splitlines()
    assert records, "the handlers logged nothing"
    for line in records:
        json.loads(line)  # every handler log line is one JSON object
    for secret in (DEMO.key, GLOBEX.key, "wrong-key-123", token, token.split(".")[2], b64[:40], b64[1000:1040]):
        assert secret not in logs, f"a secret or payload reached the logs: {secret[:12]}..."
    assert "key=" not in logs  # the access log drops query strings (PixLab sends its key there)

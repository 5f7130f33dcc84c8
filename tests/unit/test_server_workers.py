"""The local server's worker processes against a template of its own: a function that runs past
its template Timeout gets 504 and its worker is replaced; one that raises gets 502."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lookalike.gateway import Gateway
from lookalike.server import LocalServer, ServerOptions
from tests.conftest import free_port

TEMPLATE = """\
Resources:
  SlowFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: app.lambda_handler
      Timeout: 1
      Events:
        Get: {Type: Api, Properties: {Path: /work, Method: get}}
"""
HANDLER = """\
import os, time

def lambda_handler(event, context):
    query = event.get("queryStringParameters") or {}
    if "sleep" in query:
        time.sleep(float(query["sleep"]))
    if "crash" in query:
        raise RuntimeError("boom")
    return {"statusCode": 200, "body": str(os.getpid())}
"""


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(textwrap.dedent(HANDLER))
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    server = LocalServer(Gateway(tmp_path / "template.yaml"), ServerOptions(port=free_port(), workers=1))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        thread.join(30)


def test_a_function_past_its_timeout_gets_504_and_a_fresh_worker(site: str) -> None:
    first = requests.get(f"{site}/work", timeout=30)
    assert first.status_code == 200
    started = time.monotonic()
    r = requests.get(f"{site}/work", params={"sleep": "10"}, timeout=30)
    assert r.status_code == 504 and r.json() == {"error": "Endpoint request timed out"}
    assert time.monotonic() - started < 5  # the template's Timeout (1 s), not the handler's 10 s
    r = requests.get(f"{site}/work", timeout=60)  # waits for the replacement to start
    assert r.status_code == 200 and r.text != first.text  # another process answers


def test_a_function_that_raises_gets_502_and_keeps_its_worker(site: str) -> None:
    first = requests.get(f"{site}/work", timeout=30).text
    r = requests.get(f"{site}/work", params={"crash": "1"}, timeout=30)
    assert r.status_code == 502 and r.json() == {"error": "Internal server error"}
    assert requests.get(f"{site}/work", timeout=30).text == first
    assert requests.post(f"{site}/work", timeout=30).json() == {"error": "Method not allowed"}

"""The local server's worker processes against a template of its own: a function that runs past
its template Timeout gets 504 and its worker is replaced; one that raises gets 502."""

from __future__ import annotations

import os
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
from lookalike import scheduling

def lambda_handler(event, context):
    query = event.get("queryStringParameters") or {}
    if "sleep" in query:
        time.sleep(float(query["sleep"]))
    if "crash" in query:
        raise RuntimeError("boom")
    if "share" in query:
        return {"statusCode": 200, "body": str(scheduling.cpu_share())}
    return {"statusCode": 200, "body": str(os.getpid())}
"""


@pytest.fixture()
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(textwrap.dedent(HANDLER))
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    workers = getattr(request, "param", 1)
    server = LocalServer(Gateway(tmp_path / "template.yaml"), ServerOptions(port=free_port(), workers=workers))
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


@pytest.mark.parametrize("site", [3], indirect=True)
def test_each_request_is_told_its_share_of_the_cpus(site: str) -> None:
    """The model's threads follow the share (lookalike_local.onnx_runtime.request_threads): all
    the CPUs for a request alone, half each for two at once (two threads each on two cores
    cost 9 % more CPU an image than one each)."""
    cpus = os.cpu_count() or 1

    def power_of_two(n: int) -> int:
        return 1 << (max(1, n).bit_length() - 1)

    assert requests.get(f"{site}/work?share", timeout=30).text == str(power_of_two(cpus))
    holder = threading.Thread(target=requests.get, args=(f"{site}/work?sleep=1.5",), kwargs={"timeout": 30})
    holder.start()
    time.sleep(0.5)
    try:
        assert requests.get(f"{site}/work?share", timeout=30).text == str(power_of_two(cpus // 2))
    finally:
        holder.join(30)
    assert requests.get(f"{site}/work?share", timeout=30).text == str(power_of_two(cpus))

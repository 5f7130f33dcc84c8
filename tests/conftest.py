"""Shared fixtures: a temporary deployment (config + data folder), the real model, S3 on loopback."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lookalike.api import request as api_request
from lookalike.config import hash_key

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EVENTS = ROOT / "events"
DEMO_KEY = "demo-key"
KEYS = {"demo": ["demo-key", "demo-key-rotated"], "globex": ["globex-key"]}

# boto3 must never look for real credentials (or reach the instance metadata service).
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
})


def catalog_images() -> list[Path]:
    return sorted((FIXTURES / "images").rglob("*.jpg"))


def query_image(name: str = "shoes") -> Path:
    return FIXTURES / "queries" / f"{name}.jpg"


def load_event(name: str) -> dict:
    return json.loads((EVENTS / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted EfficientNet-Lite0 and MiniLM ONNX files (built once, a few seconds, no torch)."""
    from lookalike_local import efficientnet, minilm

    env = os.environ.get("LOOKALIKE_MODEL_DIR")
    if env and all((Path(env) / name).exists() for name in (efficientnet.ONNX_NAME, efficientnet.ONNX_INT8_NAME,
                                                               minilm.ONNX_NAME, minilm.TOKENIZER_NAME)):
        return Path(env)
    out = tmp_path_factory.mktemp("models")
    efficientnet.build_onnx(out / efficientnet.ONNX_NAME)
    efficientnet.build_int8(out / efficientnet.ONNX_INT8_NAME)
    minilm.build_onnx(out)
    return out


def write_deployment(home: Path, extra: dict | None = None) -> Path:
    config = {
        "defaults": {"embedder": {"name": "efficientnet-lite0"}},
        "tenants": {
            tenant: {"api_keys": [{"sha256": hash_key(k), "label": f"k{n}"} for n, k in enumerate(keys)]}
            for tenant, keys in KEYS.items()
        },
    }
    for key, value in (extra or {}).items():
        config[key] = value
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture()
def deployment(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh embedded-default deployment with tenants ``demo`` and ``globex``; returns its home."""
    home = tmp_path / "home"
    write_deployment(home)
    monkeypatch.setenv("LOOKALIKE_HOME", str(home))
    monkeypatch.setenv("LOOKALIKE_MODEL_DIR", str(model_dir))
    monkeypatch.delenv("LOOKALIKE_CONFIG", raising=False)
    api_request.set_service(None)
    yield home
    api_request.set_service(None)


@pytest.fixture(autouse=True)
def _clear_parameter_caches() -> Iterator[None]:
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    yield
    parameters.clear_caches()


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A line in the test log whatever pytest captures: figures a test exists to measure."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # past pytest's own output capture
            reporter.write_line(f"\n{line}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real S3/SSM endpoint speaking the AWS HTTP protocols on loopback."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()

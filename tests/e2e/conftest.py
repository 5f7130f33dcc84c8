"""Starting `lookalike serve` (and the CLI) as real processes for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port


def cli_env(home: Path, model_dir: Path) -> dict[str, str]:
    env = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_MODEL_DIR": str(model_dir),
           "LOOKALIKE_ALLOW_LOOPBACK_URLS": "true"}
    env.pop("LOOKALIKE_CONFIG", None)
    return env


def lookalike(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@contextmanager
def running_server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    # Logs go to a file: a pipe nobody reads would fill up and stall the server.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--port", str(port)], env=env,
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                requests.get(f"{base}/v1/collections", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"server did not start: {log.read()[-4000:]}")
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()

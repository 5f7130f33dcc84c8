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
from typing import IO

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


def start_server(env: dict[str, str], log: IO[str], *args: str, new_session: bool = False,
                 ) -> tuple[subprocess.Popen[str], str]:
    """`lookalike serve` on a free port, returned once it answers: (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--port", str(port), *args], env=env,
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=new_session)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{base}/v1/collections", timeout=1)
            return proc, base
        except requests.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                log.seek(0)
                pytest.fail(f"server did not start: {log.read()[-4000:]}")
            time.sleep(0.2)


@contextmanager
def running_server(env: dict[str, str]) -> Iterator[str]:
    # Logs go to a file: a pipe nobody reads would fill up and stall the server.
    log = tempfile.TemporaryFile(mode="w+")
    proc, base = start_server(env, log)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()

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
                 harness: tuple[str, ...] = ("lookalike.cli",)) -> tuple[subprocess.Popen[str], str]:
    """`lookalike serve` on a free port, returned once it answers: (process, base URL).
    ``harness``: the module (and its arguments) that runs the CLI, for tests/e2e/pause_at.py."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", *harness, "serve", "--port", str(port), *args], env=env,
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


def worker_pids(base: str) -> list[int]:
    """The server's worker processes (children of the process listening on ``base``'s port)."""
    port = int(base.rsplit(":", 1)[1])
    out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    server_pid = next(int(pid) for pid, _, args in rows if f"--port {port}" in args and "serve" in args)
    return sorted(int(pid) for pid, ppid, args in rows if int(ppid) == server_pid and "spawn_main" in args)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False

"""`lookalike serve` under concurrency: isolation, throughput, slow origins and slow clients.

    .venv/bin/python bench/server_concurrency.py [--requests 10000] [--threads 32]
                                                 [--workers 1 2 4 8] [--gunicorn]

1. Isolation: ``--requests`` mixed requests (five functions, two tenants, 32 at a time; the
   load of tests/e2e/test_concurrency.py), each answer checked against its own request.
2. Throughput and latency of searches by item id (``--threads`` clients) for each worker count.
3. A slow origin: another tenant's search while a search waits 6 s on its ``image_url``.
4. Slow clients: 200 connections that send half a request and stall, then a normal search.
5. With ``--gunicorn`` (``pip install gunicorn``), 1, 3 and 4 under gunicorn's sync workers
   hosting the same handlers in-process, one request per worker process: the alternative
   this server was chosen over.

Writes bench/results/server_concurrency.json. Loopback only; every loop bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.e2e.isolation_load import TENANTS, Load, seed, slow_origin, stored_items_are_their_owners  # noqa: E402

RESULTS = ROOT / "bench" / "results"
IMAGES = sorted((ROOT / "tests" / "fixtures" / "images").rglob("*.jpg"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    config = {"defaults": {"embedder": {"name": "efficientnet-lite0"}},
              "tenants": {t: {"api_keys": [{"sha256": hashlib.sha256(k.encode()).hexdigest()}]}
                          for t, k in TENANTS.items()}}
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    return home


@contextmanager
def serving(home: Path, workers: int, gunicorn: bool = False) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_ALLOW_LOOPBACK_URLS": "true",
           "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"}
    if gunicorn:
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--timeout", "60",
               "lookalike.server:in_process_app()"]
    else:
        cmd = [sys.executable, "-m", "lookalike.cli", "serve", "--port", str(port), "--workers", str(workers)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                requests.get(f"{base}/v1/collections", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"server did not start: {log.read()[-2000:]!r}") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 1), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 1)}


def isolation(base: str, count: int, threads: int) -> dict:
    started = time.perf_counter()
    tally = Load(base, IMAGES, seed_value=1).run(count=count, threads=threads, time_limit_s=900)
    took = time.perf_counter() - started
    wrong = stored_items_are_their_owners(base)
    return {"requests": tally.requests, "threads": threads, "leaks": len(tally.leaks), "errors": len(tally.errors),
            "wrong_owners": wrong, "first_leaks": tally.leaks[:3], "first_errors": tally.errors[:3],
            "by_kind": tally.by_kind, "requests_per_s": round(tally.requests / took, 1),
            **_percentiles(tally.seconds)}


def throughput(base: str, count: int, threads: int) -> dict:
    started = time.perf_counter()
    tally = Load(base, IMAGES, seed_value=2).run(count=count, threads=threads, time_limit_s=600,
                                                 kinds=("search_item",))
    took = time.perf_counter() - started
    return {"requests": tally.requests, "errors": len(tally.errors), "requests_per_s": round(tally.requests / took, 1),
            **_percentiles(tally.seconds)}


def slow_origin_search(base: str) -> dict:
    with slow_origin() as url:
        slow = threading.Thread(target=lambda: requests.post(
            f"{base}/v1/collections/iso/search", json={"image_url": url}, timeout=60,
            headers={"Authorization": "Bearer demo-key"}))
        slow.start()
        time.sleep(0.5)
        started = time.perf_counter()
        r = requests.post(f"{base}/v1/collections/iso/search", json={"item_id": "item-0"}, timeout=60,
                          headers={"Authorization": "Bearer globex-key"})
        took = time.perf_counter() - started
        slow.join(60)
    return {"other_tenant_search_ms": round(took * 1000, 1), "status": r.status_code}


def slow_clients(base: str, stalled: int = 200) -> dict:
    host, port = base.removeprefix("http://").split(":")
    sockets = []
    try:
        for _ in range(stalled):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /v1/collections/iso/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            sockets.append(s)
        started = time.perf_counter()
        try:
            r = requests.post(f"{base}/v1/collections/iso/search", json={"item_id": "item-1"}, timeout=20,
                              headers={"Authorization": "Bearer demo-key"})
            status: int | str = r.status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        return {"stalled_connections": stalled, "search_ms": round((time.perf_counter() - started) * 1000, 1),
                "status": status}
    finally:
        for s in sockets:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--throughput-requests", type=int, default=2000)
    parser.add_argument("--gunicorn", action="store_true")
    args = parser.parse_args()
    home = _home()
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                 "server": "waitress + worker processes", "default_workers": max(2, (os.cpu_count() or 1) + 1)}
    with serving(home, workers=0) as base:  # the default: CPUs + 1
        seed(base, IMAGES)
        out["isolation"] = isolation(base, args.requests, args.threads)
        print("isolation", json.dumps(out["isolation"]))
        out["slow_origin"] = slow_origin_search(base)
        print("slow origin", out["slow_origin"])
        out["slow_clients"] = slow_clients(base)
        print("slow clients", out["slow_clients"])
    out["workers"] = {}
    for workers in args.workers:
        with serving(home, workers) as base:
            out["workers"][workers] = throughput(base, args.throughput_requests, args.threads)
            print(f"{workers} workers", out["workers"][workers])
    if args.gunicorn:
        with serving(home, 4, gunicorn=True) as base:
            out["gunicorn_sync_4"] = {"isolation": isolation(base, min(args.requests, 2000), args.threads),
                                      "throughput": throughput(base, args.throughput_requests, args.threads),
                                      "slow_origin": slow_origin_search(base), "slow_clients": slow_clients(base)}
            print("gunicorn", json.dumps(out["gunicorn_sync_4"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server_concurrency.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'server_concurrency.json'}")


if __name__ == "__main__":
    main()

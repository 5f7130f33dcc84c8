"""End-to-end reverse-search latency through the local server: HTTP in, JSON out.

    .venv/bin/python bench/search_latency.py [--sizes 10000 100000] [--queries 200]

1. Embeds the 3,068 real catalog photos of ../shared/data/clothing/train once with the
   default model (EfficientNet-Lite0, cached in bench/results/).
2. Builds one collection per size: the real vectors, then jittered copies of them
   (gaussian noise, re-normalised) up to the size, written straight into the embedded
   index: this measures search, not ingestion.
3. Starts `lookalike serve` and uploads validation photos as multipart queries, one at a
   time, timing each request on the client; reports p50/p95/p99 and the server's took_ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import requests
import yaml

if TYPE_CHECKING:
    from lookalike.contracts import Item
    from lookalike.service import TenantService

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clothing"
RESULTS = ROOT / "bench" / "results"
KEY = "bench-key"


def catalog_vectors(home: Path) -> tuple[list[str], np.ndarray, list[str]]:
    cache = RESULTS / "catalog_vectors.npz"
    paths = sorted((DATA / "train").rglob("*.jpg"))
    from lookalike.config import Settings
    from lookalike.process import Lookalike

    tenant = Lookalike(Settings(home=home)).tenant("bench")
    if cache.exists():  # the same photos, embedded by the same model
        saved = np.load(cache)
        if len(saved["vectors"]) == len(paths) and str(saved.get("model_id", "")) == tenant.embedder.model_id:
            return [p.stem for p in paths], saved["vectors"], [p.parent.name for p in paths]
    decoded = [tenant.decode(p.read_bytes()).image for p in paths]
    vectors = tenant.embedder.embed_images(decoded)
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, model_id=np.array(tenant.embedder.model_id))
    return [p.stem for p in paths], vectors, [p.parent.name for p in paths]


def bench_tenant(prefix: str) -> tuple[Path, TenantService]:
    """A fresh home with one tenant, ``bench``, on the embedded default (set as LOOKALIKE_HOME),
    and that tenant's service."""
    from lookalike.config import Settings
    from lookalike.process import Lookalike

    home = Path(tempfile.mkdtemp(prefix=prefix))
    (home / "config.yaml").write_text("tenants: {bench: {}}\n")
    os.environ["LOOKALIKE_HOME"] = str(home)
    return home, Lookalike(Settings(home=home)).tenant("bench")


def jittered_items(size: int, ids: list[str], vectors: np.ndarray, classes: list[str]) -> Iterator[Item]:
    """The real vectors, then jittered copies of them (gaussian noise, re-normalised) up to ``size``."""
    from lookalike.contracts import Item

    rng = np.random.default_rng(0)
    for n in range(size):
        base = n % len(ids)
        v = vectors[base]
        if n >= len(ids):
            v = v + rng.normal(scale=0.02, size=v.shape).astype(np.float32)
            v /= np.linalg.norm(v)
        yield Item(id=f"{ids[base]}-{n // len(ids)}", vector=v, metadata={"category": classes[base]})


def build_collection(home: Path, name: str, size: int, ids: list[str], vectors: np.ndarray,
                     classes: list[str], model_id: str, approximate: bool = True) -> None:
    from lookalike.contracts import BackendContext, CollectionSpec
    from lookalike_local.index import LocalIndex

    index = LocalIndex(context=BackendContext(home=home))
    if index.get_collection("bench", name) is not None:
        index.delete_collection("bench", name)
    index.create_collection("bench", CollectionSpec(name=name, model_id=model_id, dimension=vectors.shape[1]))
    batch: list[Item] = []
    for item in jittered_items(size, ids, vectors, classes):
        batch.append(item)
        if len(batch) == 5000:
            index.upsert("bench", name, batch)
            batch = []
    index.upsert("bench", name, batch)
    if approximate:
        index.optimize("bench", name)  # the approximate snapshot of a large collection, as ingest builds it
    index.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(env: dict[str, str], stop_timeout: float = 30, pid_out: dict | None = None) -> Iterator[str]:
    """`lookalike serve` on a free port, once it answers: yields its base URL (and puts the
    server's pid in ``pid_out``)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--port", str(port)], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if pid_out is not None:
        pid_out["pid"] = server.pid
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base}/v1/collections", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=stop_timeout)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")

    home = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    from lookalike.config import hash_key

    (home / "config.yaml").write_text(yaml.safe_dump({"tenants": {"bench": {"api_keys": [{"sha256": hash_key(KEY)}]}}}))
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    os.environ.update(env)

    t0 = time.perf_counter()
    ids, vectors, classes = catalog_vectors(home)
    print(f"catalog: {len(ids)} photos embedded/loaded in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    from lookalike_local.efficientnet import EfficientNetLite0

    model_id = EfficientNetLite0().model_id
    queries = sorted((DATA / "validation").rglob("*.jpg"))
    payloads = [(q.name, q.read_bytes()) for q in queries]

    results = []
    for size in args.sizes:
        name = f"bench-{size}"
        t0 = time.perf_counter()
        build_collection(home, name, size, ids, vectors, classes, model_id)
        print(f"{name}: built in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        with serving(env, stop_timeout=10) as base:
            url = f"{base}/v1/collections/{name}/search"
            latencies, server_ms = [], []
            for n in range(args.warmup + args.queries):
                fname, data = payloads[n % len(payloads)]
                t = time.perf_counter()
                r = session.post(url, files={"image": (fname, data, "image/jpeg")}, data={"limit": "10"}, timeout=60)
                elapsed = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if n >= args.warmup:
                    latencies.append(elapsed)
                    server_ms.append(r.json()["took_ms"])
        row = {"items": size, "queries": len(latencies), "p50_ms": round(percentile(latencies, 50), 1),
               "p95_ms": round(percentile(latencies, 95), 1), "p99_ms": round(percentile(latencies, 99), 1),
               "mean_ms": round(statistics.fmean(latencies), 1),
               "server_p50_ms": round(percentile(server_ms, 50), 1)}
        results.append(row)
        print(json.dumps(row), file=sys.stderr)

    report = {"benchmark": "search_latency", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "model": model_id, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_latency.json").write_text(json.dumps(report, indent=2))
    print("| items | p50 ms | p95 ms | p99 ms | server p50 ms |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['items']:,} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['server_p50_ms']} |")


if __name__ == "__main__":
    main()

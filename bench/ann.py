"""The embedded index at 100k and 1M items: approximate (IVF, 8-bit codes) beside exact.

    .venv/bin/python bench/ann.py [--sizes 100000 1000000] [--queries 200] [--seconds 20]

For each size, in one run:
1. The collection is built from catalog-shaped vectors (``--data catalog``, the default:
   ``bench/catalog_data.py``'s draws from a model of the real model's vectors), or as earlier
   runs built it (``--data jittered``: the 3,068 real vectors then jittered copies of them, as
   ``bench/search_latency.py`` does), with a ``shard`` field (n % 100) for a 1 % filter; then the
   approximate snapshot is built (timed), and reopened in a fresh process (timed: open plus
   first search).
2. recall@10 of the approximate search against exact search on the same data, for the
   validation photos' embeddings, with and without the 1 % filter (in process).
3. Through ``lookalike serve`` (default workers), once approximate and once exact: latency
   p50/p99 of searches by uploaded photo (multipart), with and without the filter; memory of
   the whole server (the sum over its processes of PSS, which counts a page shared by k
   processes 1/k, and of RSS); throughput, p99 and errors with 1, 8 and 32 concurrent
   clients for ``--seconds`` each.
4. The model's ceiling on this machine in the same run: one process per core decoding and
   embedding the same uploaded photos back to back (no HTTP, no search), images per second.
Writes bench/results/ann.json and prints the tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import DATA, KEY, RESULTS, ROOT, catalog_vectors, jittered_items, percentile, serving

if TYPE_CHECKING:
    from lookalike.contracts import Item

TENANT = "bench"
FILTER = {"shard": 7}  # 1 % of the items


def catalog_items(size: int) -> Iterator[Item]:
    """``size`` catalog-shaped vectors (``bench/catalog_data.py``), one item each."""
    from catalog_data import catalog

    from lookalike.contracts import Item

    vectors = catalog(size)
    for n in range(size):
        yield Item(id=f"c{n:07d}", vector=np.asarray(vectors[n], dtype=np.float32), metadata={})


def build(home: Path, name: str, size: int, ids: list[str], vectors: np.ndarray, classes: list[str],
          model_id: str, data: str = "catalog") -> dict[str, float]:
    from lookalike.contracts import BackendContext, CollectionSpec
    from lookalike_local.index import LocalIndex, LocalIndexOptions

    index = LocalIndex(LocalIndexOptions(ann_min_items=1), BackendContext(home=home))
    if index.get_collection(TENANT, name) is not None:
        index.delete_collection(TENANT, name)
    index.create_collection(TENANT, CollectionSpec(name=name, model_id=model_id, dimension=vectors.shape[1]))
    t0 = time.perf_counter()
    batch = []
    items = catalog_items(size) if data == "catalog" else jittered_items(size, ids, vectors, classes)
    for n, item in enumerate(items):
        item.metadata["shard"] = n % 100
        batch.append(item)
        if len(batch) == 5000:
            index.upsert(TENANT, name, batch)
            batch = []
    index.upsert(TENANT, name, batch)
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.optimize(TENANT, name)
    built = time.perf_counter() - t0
    from lookalike_local import ann

    files = [f for r in index._db.execute("SELECT file FROM ann_snapshots WHERE tenant = ? AND collection = ?",
                                          (TENANT, name))
             for f in (index.ann_dir / r[0], *ann.sidecars(index.ann_dir / r[0])) if f.exists()]
    index.close()
    return {"sqlite_write_s": round(written, 1), "ann_build_s": round(built, 1),
            "ann_file_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1)}


def reopen_seconds(home: Path, name: str, query: np.ndarray) -> float:
    """A fresh process: open the index and answer one approximate search."""
    np.save(home / "q.npy", query)
    code = (
        "import time, numpy as np; t = time.perf_counter()\n"
        "from lookalike.contracts import BackendContext, VectorQuery\n"
        "from lookalike_local.index import LocalIndex, LocalIndexOptions\n"
        f"from pathlib import Path; home = Path({str(home)!r})\n"
        "index = LocalIndex(LocalIndexOptions(ann_min_items=1), BackendContext(home=home))\n"
        f"index.search({TENANT!r}, {name!r}, VectorQuery(vector=np.load(home / 'q.npy'), limit=10))\n"
        "print(time.perf_counter() - t)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return round(float(out.stdout.strip().splitlines()[-1]), 2)


def recall(home: Path, name: str, queries: np.ndarray) -> dict[str, float]:
    from lookalike.contracts import BackendContext, VectorQuery
    from lookalike.filters import Term
    from lookalike_local.index import LocalIndex, LocalIndexOptions

    approximate = LocalIndex(LocalIndexOptions(ann_min_items=1), BackendContext(home=home))
    exact = LocalIndex(LocalIndexOptions(ann_min_items=0), BackendContext(home=home))
    out: dict[str, float] = {}
    for label, flt in (("recall_at_10", None), ("recall_at_10_filtered", Term("shard", 7))):
        scores, timings, exact_timings = [], [], []
        for q in queries:
            t = time.perf_counter()
            got = approximate.search(TENANT, name, VectorQuery(vector=q, limit=10, filter=flt))
            timings.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            want = exact.search(TENANT, name, VectorQuery(vector=q, limit=10, filter=flt))
            exact_timings.append((time.perf_counter() - t) * 1000)
            scores.append(len({h.id for h in got.hits} & {h.id for h in want.hits}) / max(1, len(want.hits)))
            assert len(got.hits) == 10, "a selective filter must still return k results"
        out[label] = round(float(np.mean(scores)), 4)
        out[label.replace("recall_at_10", "in_process_p50_ms")] = round(percentile(timings, 50), 2)
        out[label.replace("recall_at_10", "exact_in_process_p50_ms")] = round(percentile(exact_timings[1:], 50), 2)
    approximate.close()
    exact.close()
    return out


def server_memory(pid: int) -> dict[str, float]:
    """PSS and RSS summed over the server and its worker processes, in MB."""
    def children(p: int) -> list[int]:
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            return []
        return [int(k) for k in kids] + [g for k in kids for g in children(int(k))]

    pss = rss = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:
            continue
    return {"server_pss_mb": round(pss / 1024), "server_rss_mb": round(rss / 1024)}


def serve_figures(env: dict[str, str], name: str, payloads: list[tuple[str, bytes]], queries: int,
                  seconds: float) -> dict[str, object]:
    out: dict[str, object] = {}
    with serving(env, stop_timeout=30, pid_out=out) as base:
        url = f"{base}/v1/collections/{name}/search"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"

        def one(s: requests.Session, n: int, filtered: bool) -> float:
            fname, data = payloads[n % len(payloads)]
            form = {"limit": "10", **({"filter": json.dumps(FILTER)} if filtered else {})}
            t = time.perf_counter()
            r = s.post(url, files={"image": (fname, data, "image/jpeg")}, data=form, timeout=120)
            r.raise_for_status()
            return (time.perf_counter() - t) * 1000

        started = time.perf_counter()
        try:
            one(session, 0, False)
        except requests.HTTPError as exc:  # the exact path at 1M: a worker's first load outlasts the timeout
            out.pop("pid", None)
            out["error"] = (f"first search answered {exc.response.status_code} after "
                            f"{time.perf_counter() - started:.0f} s")
            return out
        for filtered in (False, True):
            for n in range(10):
                one(session, n, filtered)  # warm every worker
            lat = [one(session, n, filtered) for n in range(queries)]
            key = "filtered_" if filtered else ""
            out[f"{key}p50_ms"] = round(percentile(lat, 50), 1)
            out[f"{key}p99_ms"] = round(percentile(lat, 99), 1)
        out.update(server_memory(int(out.pop("pid"))))  # type: ignore[call-overload]
        for clients in (1, 8, 32):
            out[f"c{clients}"] = _load(clients, seconds, one)
    return out


def run_clients(clients: int, seconds: float, one: Callable[[requests.Session, int], float]
                ) -> tuple[list[float], int, float]:
    """``clients`` threads each calling ``one(session, n)`` back to back for ``seconds``: the
    latencies it returned, the requests that failed, and the seconds the clients ran."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {KEY}"
        n = c
        while time.monotonic() < stop:
            try:
                ms = one(s, n)
                with lock:
                    lat.append(ms)
            except requests.RequestException:
                with lock:
                    errors[0] += 1
            n += clients

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], time.monotonic() - started


def _load(clients: int, seconds: float, one: Callable[[requests.Session, int, bool], float]) -> dict[str, object]:
    """``clients`` threads searching back to back for ``seconds``: throughput, p99, errors."""
    lat, errors, elapsed = run_clients(clients, seconds, lambda s, n: one(s, n, False))
    return {"requests_per_s": round(len(lat) / elapsed, 1), "p99_ms": round(percentile(lat, 99), 1) if lat else None,
            "errors": errors}


def _embed_loop(home: str, photos: list[bytes], seconds: float) -> tuple[int, float]:
    """One core's worth: decode and embed uploaded photos one at a time, as a worker does."""
    from lookalike.config import Settings
    from lookalike.process import Lookalike

    tenant = Lookalike(Settings(home=Path(home))).tenant(TENANT)
    tenant.embedder.embed_images([tenant.decode(photos[0]).image])  # load the model first
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        tenant.embedder.embed_images([tenant.decode(photos[done % len(photos)]).image])
        done += 1
    return done, time.perf_counter() - started


def model_ceiling(home: Path, payloads: list[tuple[str, bytes]], seconds: float) -> float:
    """The model's own ceiling: one process per core decoding and embedding the uploaded
    photos back to back, with nothing else (no HTTP, no search); images/s summed."""
    from concurrent.futures import ProcessPoolExecutor

    cores = os.cpu_count() or 1
    photos = [data for _, data in payloads[:64]]
    with ProcessPoolExecutor(cores) as pool:
        runs = list(pool.map(_embed_loop, [str(home)] * cores, [photos[c::cores] for c in range(cores)],
                             [seconds] * cores))
    return round(sum(n / t for n, t in runs), 1)


def configure(home: Path, ann_min_items: int) -> None:
    """``home``'s config: the bench tenant with ``KEY``, on the embedded index, searched
    approximately from ``ann_min_items`` items (0: always exactly)."""
    from lookalike.config import hash_key

    (home / "config.yaml").write_text(yaml.safe_dump({"tenants": {TENANT: {
        "api_keys": [{"sha256": hash_key(KEY)}],
        "search": {"name": "local", "options": {"ann_min_items": ann_min_items}}}}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="each concurrency level runs this long")
    parser.add_argument("--data", choices=("catalog", "jittered"), default="catalog",
                        help="catalog-shaped draws (bench/catalog_data.py) or the earlier jittered copies")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")
    home = Path(tempfile.mkdtemp(prefix="lookalike-ann-"))
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    os.environ.update(env)
    configure(home, 1)
    ids, vectors, classes = catalog_vectors(home)
    from lookalike_local.efficientnet import EfficientNetLite0

    model_id = EfficientNetLite0().model_id
    photos = sorted((DATA / "validation").rglob("*.jpg"))[: args.queries]
    payloads = [(p.name, p.read_bytes()) for p in photos]
    ceiling = model_ceiling(home, payloads, args.seconds)
    print(f"model ceiling: {ceiling} images/s", file=sys.stderr)
    from lookalike.config import Settings
    from lookalike.process import Lookalike

    tenant = Lookalike(Settings(home=home)).tenant(TENANT)
    query_vectors = tenant.embedder.embed_images([tenant.decode(d).image for _, d in payloads])
    del tenant

    rows = []
    for size in args.sizes:
        name = f"ann-{size}"
        row: dict[str, object] = {"items": size, "data": args.data}
        row.update(build(home, name, size, ids, vectors, classes, model_id, args.data))
        print(json.dumps(row), file=sys.stderr)
        row["reopen_s"] = reopen_seconds(home, name, query_vectors[0])
        row.update(recall(home, name, query_vectors))
        gc.collect()
        print(json.dumps(row), file=sys.stderr)
        for mode, minimum in (("approximate", 1), ("exact", 0)):
            configure(home, minimum)
            row[mode] = serve_figures(env, name, payloads, args.queries if mode == "approximate" or size < 500_000
                                      else max(20, args.queries // 4), args.seconds)
            print(json.dumps({mode: row[mode]}), file=sys.stderr)
        rows.append(row)

    report = {"benchmark": "ann", "data": args.data, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "model": model_id, "model_ceiling_images_per_s": ceiling, "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ann.json").write_text(json.dumps(report, indent=2))
    print(f"model ceiling (decode + embed, one process per core): {ceiling} images/s\n")
    print("| items | mode | p50 ms | p99 ms | 1 % filter p50 / p99 ms | server PSS / RSS MB |"
          " 1 client req/s | 8 clients req/s, p99 | 32 clients req/s, p99, errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for mode in ("approximate", "exact"):
            f = r[mode]
            if "error" in f:
                print(f"| {r['items']:,} | {mode} | {f['error']} | | | | | | |")
                continue
            print(f"| {r['items']:,} | {mode} | {f['p50_ms']} | {f['p99_ms']} | {f['filtered_p50_ms']} / "
                  f"{f['filtered_p99_ms']} | {f['server_pss_mb']:,} / {f['server_rss_mb']:,} | "
                  f"{f['c1']['requests_per_s']} | {f['c8']['requests_per_s']}, {f['c8']['p99_ms']} | "
                  f"{f['c32']['requests_per_s']}, {f['c32']['p99_ms']}, {f['c32']['errors']} |")
    print("\n| items | recall@10 | recall@10, 1 % filter | search only, approximate / exact p50 ms |"
          " with the filter | SQLite write s | build s | file MB | reopen s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['items']:,} | {r['recall_at_10']} | {r['recall_at_10_filtered']} | "
              f"{r['in_process_p50_ms']} / {r['exact_in_process_p50_ms']} | "
              f"{r['in_process_p50_ms_filtered']} / {r['exact_in_process_p50_ms_filtered']} | {r['sqlite_write_s']} | "
              f"{r['ann_build_s']} | {r['ann_file_mb']} | {r['reopen_s']} |")


if __name__ == "__main__":
    main()

"""OpenSearch k-NN beside the embedded index, in one run, through `lookalike serve`.

    .venv/bin/python bench/opensearch.py [--size 100000] [--queries 200] [--ef-search 100]

1. The 3,068 real catalog embeddings plus jittered copies up to ``--size``
   (bench/search_latency.py builds them), written into two collections with the same vectors: one
   on the embedded index (exact search) and one on a real OpenSearch 2.19.1 + k-NN node
   (scripts/opensearch_node.py, lucene HNSW), force-merged to one segment.
2. `lookalike serve`, and each validation photo uploaded as a multipart search to both tenants:
   p50/p99 end to end, and recall@10 of OpenSearch against the exact top 10 of the same query.

Writes bench/results/opensearch.json. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
from search_latency import (  # noqa: E402
    DATA,
    RESULTS,
    build_collection,
    catalog_vectors,
    free_port,
    jittered_items,
    percentile,
    serving,
)

from scripts import opensearch_node as node  # noqa: E402

KEYS = {"bench": "bench-key", "bench-os": "bench-os-key"}


def ef_sweep(home: Path, name: str, args: argparse.Namespace, options: dict) -> list[dict]:
    """Recall@10 against exact search and the backend's own latency for each ef_search, on the
    same index (a query-time setting), with the validation photos' real embeddings."""
    from lookalike.contracts import VectorQuery
    from lookalike.process import Lookalike
    from lookalike.service import ImageRef
    from lookalike_opensearch.backend import OpenSearchBackend, OpenSearchOptions

    local = Lookalike().tenant("bench")
    photos = sorted((DATA / "validation").rglob("*.jpg"))[: args.queries]
    vectors = [local.embed(ImageRef(data=p.read_bytes())) for p in photos]
    exact = [{h.id for h in local.search_backend.search("bench", name, VectorQuery(vector=v, limit=10)).hits}
             for v in vectors]
    rows = []
    for ef in args.ef_search:
        backend = OpenSearchBackend(OpenSearchOptions(**options, ef_search=ef))
        times, recall = [], []
        for v, truth in zip(vectors, exact, strict=True):
            started = time.perf_counter()
            hits = backend.search("bench-os", name, VectorQuery(vector=v, limit=10)).hits
            times.append((time.perf_counter() - started) * 1000)
            recall.append(len(truth & {h.id for h in hits}) / 10)
        rows.append({"ef_search": ef, "recall_at_10": round(sum(recall) / len(recall), 4),
                     "backend_p50_ms": round(percentile(times, 50), 1)})
        print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[100, 200, 400, 800],
                        help="query-time candidates to sweep; the smallest reaching recall 0.95 is served")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--heap", default="2g")
    args = parser.parse_args()
    from lookalike.config import hash_key
    from lookalike.contracts import CollectionSpec
    from lookalike_local.efficientnet import EfficientNetLite0
    from lookalike_opensearch.backend import OpenSearchBackend, OpenSearchOptions

    node_home = ROOT / ".opensearch-bench"
    port = free_port()
    for folder in node_home.glob("node-*/data"):
        node.shutil.rmtree(folder, ignore_errors=True)
    url = node.start(node_home, port, args.heap, 240)[0]
    home = Path(tempfile.mkdtemp(prefix="lookalike-bench-os-"))
    options = {"url": url, "refresh": "false", "hnsw_m": args.m, "ef_construction": args.ef_construction,
               "timeout_seconds": 120, "index_prefix": "bench"}
    write_config = lambda ef: (home / "config.yaml").write_text(yaml.safe_dump({"tenants": {  # noqa: E731
        # The reference is the embedded index's exact search, whatever the collection's size.
        "bench": {"api_keys": [{"sha256": hash_key(KEYS["bench"])}],
                  "search": {"name": "local", "options": {"ann_min_items": 0}}},
        "bench-os": {"api_keys": [{"sha256": hash_key(KEYS["bench-os"])}],
                     "search": {"name": "opensearch", "options": {**options, "ef_search": ef}}}}}))
    write_config(args.ef_search[0])
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    os.environ.update(env)
    try:
        ids, vectors, classes = catalog_vectors(home)
        model_id = EfficientNetLite0().model_id
        name = f"bench-{args.size}"
        t0 = time.perf_counter()
        build_collection(home, name, args.size, ids, vectors, classes, model_id, approximate=False)
        local_build = time.perf_counter() - t0
        backend = OpenSearchBackend(OpenSearchOptions(**options))
        backend.create_collection("bench-os", CollectionSpec(name=name, model_id=model_id,
                                                             dimension=vectors.shape[1]))
        t0 = time.perf_counter()
        batch = []
        for item in jittered_items(args.size, ids, vectors, classes):
            batch.append(item)
            if len(batch) == 500:
                backend.upsert("bench-os", name, batch)
                batch = []
        backend.upsert("bench-os", name, batch)
        index = backend._index("bench-os", name)
        backend._request("POST", f"/{index}/_refresh")
        indexed = time.perf_counter() - t0
        backend._request("POST", f"/{index}/_forcemerge", params={"max_num_segments": 1})
        merged = time.perf_counter() - t0 - indexed
        print(f"built: embedded {local_build:.1f} s, OpenSearch {indexed:.1f} s + merge {merged:.1f} s",
              file=sys.stderr)
        sweep = ef_sweep(home, name, args, options)
        chosen = next((row["ef_search"] for row in sweep if row["recall_at_10"] >= 0.95), sweep[-1]["ef_search"])
        write_config(chosen)

        queries = sorted((DATA / "validation").rglob("*.jpg"))
        latencies: dict[str, list[float]] = {t: [] for t in KEYS}
        recalls: list[float] = []
        with serving(env) as base:
            sessions = {t: requests.Session() for t in KEYS}
            for t, s in sessions.items():
                s.headers["Authorization"] = f"Bearer {KEYS[t]}"
            for n in range(args.warmup + args.queries):
                photo = queries[n % len(queries)]
                tops = {}
                for t, session in sessions.items():
                    started = time.perf_counter()
                    r = session.post(f"{base}/v1/collections/{name}/search", timeout=120, data={"limit": "10"},
                                     files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
                    elapsed = (time.perf_counter() - started) * 1000
                    r.raise_for_status()
                    tops[t] = [h["id"] for h in r.json()["hits"]]
                    if n >= args.warmup:
                        latencies[t].append(elapsed)
                if n >= args.warmup:
                    recalls.append(len(set(tops["bench"]) & set(tops["bench-os"])) / 10)
    finally:
        node.stop(node_home)

    rows = {t: {"p50_ms": round(percentile(v, 50), 1), "p99_ms": round(percentile(v, 99), 1)}
            for t, v in latencies.items()}
    report = {"benchmark": "opensearch", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "items": args.size, "queries": len(recalls), "engine": "OpenSearch 2.19.1, k-NN 2.19.1.0, lucene HNSW",
              "hnsw_m": args.m, "ef_construction": args.ef_construction, "ef_search": chosen,
              "ef_search_sweep (backend only, no HTTP front)": sweep,
              "heap": args.heap, "build_s": {"embedded": round(local_build, 1), "opensearch_index": round(indexed, 1),
                                             "opensearch_merge": round(merged, 1)},
              "embedded_exact": rows["bench"], "opensearch": rows["bench-os"],
              "recall_at_10": round(sum(recalls) / len(recalls), 4)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "opensearch.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

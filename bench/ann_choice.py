"""Which approximate index, and from what size: the measurements behind lookalike_local.ann.

    .venv/bin/pip install -e ".[bench]"    # usearch, for the comparison only
    .venv/bin/python bench/ann_choice.py [--items 200000] [--queries 200]

1. Libraries, on the vectors ``bench/search_latency.py`` builds (the real catalog vectors,
   then jittered copies) and the validation photos' embeddings as queries: usearch HNSW
   (int8), faiss HNSW over 8-bit codes, faiss IVF over 8-bit codes. Each returns 100
   candidates, rescored exactly (as the index does); recall@10 against exact search, p50
   latency on one thread, build time on every core.
2. The switch-over: the embedded index's exact and approximate paths, in process, at
   10k-100k items (search only, no HTTP, no model).
Writes bench/results/ann_choice.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import DATA, RESULTS, bench_tenant, catalog_vectors, percentile

CANDIDATES = 100


def dataset(n: int, base: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 50_000):
        rows = np.arange(start, min(n, start + 50_000))
        v = base[rows % len(base)] + (rows >= len(base))[:, None] * rng.normal(
            scale=0.02, size=(len(rows), base.shape[1])).astype(np.float32)
        out[rows] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def measure(search: object, x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    recalls, lat = [], []
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        candidates = search(q)  # type: ignore[operator]
        candidates = candidates[candidates >= 0]
        top = candidates[np.argsort(-(x[candidates] @ q))[:10]]
        lat.append((time.perf_counter() - t) * 1000)
        recalls.append(len(set(top.tolist()) & set(want.tolist())) / 10)
    return round(float(np.mean(recalls)), 4), round(percentile(lat, 50), 2)


def libraries(x: np.ndarray, queries: np.ndarray) -> list[dict[str, object]]:
    import faiss

    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    rows = []
    try:
        from usearch.index import Index

        index = Index(ndim=x.shape[1], metric="cos", dtype="i8", connectivity=16, expansion_add=128)
        t = time.perf_counter()
        index.add(np.arange(len(x), dtype=np.uint64), x, threads=os.cpu_count() or 1)
        built = round(time.perf_counter() - t, 1)
        for ef in (128, 512):
            index.expansion_search = ef
            r, p50 = measure(lambda q: index.search(q, CANDIDATES, threads=1).keys.astype(np.int64), x, queries,
                             truth)
            rows.append({"index": f"usearch HNSW int8, ef {ef}", "recall_at_10": r, "p50_ms": p50, "build_s": built})
    except ImportError:
        print("usearch not installed (pip install -e '.[bench]'): skipped", file=sys.stderr)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    hnsw = faiss.IndexHNSWSQ(x.shape[1], faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 128
    t = time.perf_counter()
    hnsw.train(x[:50_000])
    hnsw.add(x)
    built = round(time.perf_counter() - t, 1)
    faiss.omp_set_num_threads(1)
    for ef in (128, 512):
        hnsw.hnsw.efSearch = ef
        r, p50 = measure(lambda q: hnsw.search(q[None], CANDIDATES)[1][0], x, queries, truth)
        rows.append({"index": f"faiss HNSW 8-bit, ef {ef}", "recall_at_10": r, "p50_ms": p50, "build_s": built})
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    nlist = 2 ** round(np.log2(np.sqrt(len(x))))
    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist,
                                        faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    ivf.train(x[np.random.default_rng(1).choice(len(x), min(len(x), 40 * nlist), replace=False)])
    ivf.add(x)
    built = round(time.perf_counter() - t, 1)
    faiss.omp_set_num_threads(1)
    for nprobe in (8, 32):
        ivf.nprobe = nprobe
        r, p50 = measure(lambda q: ivf.search(q[None], CANDIDATES)[1][0], x, queries, truth)
        rows.append({"index": f"faiss IVF 8-bit, {nprobe} of {nlist} lists", "recall_at_10": r, "p50_ms": p50,
                     "build_s": built})
    return rows


def switch_over(base: np.ndarray, queries: np.ndarray, sizes: list[int]) -> list[dict[str, object]]:
    from lookalike.contracts import BackendContext, CollectionSpec, Item, VectorQuery
    from lookalike_local.index import LocalIndex, LocalIndexOptions

    home = Path(tempfile.mkdtemp(prefix="lookalike-switch-"))
    rows = []
    for size in sizes:
        x = dataset(size, base)
        writer = LocalIndex(LocalIndexOptions(ann_min_items=1), BackendContext(home=home))
        name = f"s{size}"
        writer.create_collection("t", CollectionSpec(name=name, model_id="m", dimension=x.shape[1]))
        for start in range(0, size, 5000):
            writer.upsert("t", name, [Item(f"i{n}", x[n]) for n in range(start, min(size, start + 5000))])
        writer.optimize("t", name)
        row: dict[str, object] = {"items": size}
        for mode, minimum in (("exact", 0), ("approximate", 1)):
            index = LocalIndex(LocalIndexOptions(ann_min_items=minimum), BackendContext(home=home))
            index.search("t", name, VectorQuery(vector=queries[0], limit=10))  # load / map
            lat = []
            for q in queries:
                t = time.perf_counter()
                index.search("t", name, VectorQuery(vector=q, limit=10))
                lat.append((time.perf_counter() - t) * 1000)
            row[f"{mode}_p50_ms"] = round(percentile(lat, 50), 2)
            index.close()
        rows.append(row)
        writer.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000])
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")
    home, tenant = bench_tenant("lookalike-choice-")
    _, base, _ = catalog_vectors(home)
    photos = sorted((DATA / "validation").rglob("*.jpg"))[: args.queries]
    queries = tenant.embedder.embed_images([tenant.decode(p.read_bytes()).image for p in photos])
    libs = libraries(dataset(args.items, base), queries)
    switch = switch_over(base, queries, args.sizes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ann_choice.json").write_text(json.dumps({"items": args.items, "libraries": libs,
                                                         "switch_over": switch}, indent=2))
    print(f"| index ({args.items:,} items, {CANDIDATES} candidates rescored) | recall@10 | p50 ms | build s |")
    print("|---|---:|---:|---:|")
    for r in libs:
        print(f"| {r['index']} | {r['recall_at_10']} | {r['p50_ms']} | {r['build_s']} |")
    print("\n| items | exact p50 ms | approximate p50 ms |")
    print("|---:|---:|---:|")
    for r in switch:
        print(f"| {r['items']:,} | {r['exact_p50_ms']} | {r['approximate_p50_ms']} |")


if __name__ == "__main__":
    main()

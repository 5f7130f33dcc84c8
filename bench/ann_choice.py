"""Which approximate index, and from what size: the measurements behind lookalike_local.ann.

    .venv/bin/pip install -e ".[bench]"    # usearch and hnswlib, for the comparison only
    .venv/bin/python bench/ann_choice.py [--items 200000] [--queries 200] [--data catalog|jittered]

1. Libraries, on catalog-shaped vectors (``--data catalog``, the default: draws from
   ``bench/catalog_data.py``'s model of the real model's vectors) or on the data the first
   choice was made on (``--data jittered``: the real catalog vectors, then jittered copies, as
   ``bench/search_latency.py`` builds them), with the validation photos' embeddings as
   queries: HNSW graphs (usearch over int8, hnswlib and faiss over float32, faiss over 8-bit
   codes), faiss IVF over 8-bit codes with a flat or an HNSW coarse quantizer. Each returns
   100 candidates, rescored exactly (as the index does); recall@10 against exact search, p50
   latency on one thread, build time on every core, bytes per vector held.
2. The switch-over: the embedded index's exact and approximate paths, in process, at
   10k-100k items (search only, no HTTP, no model).
Writes bench/results/ann_choice.json and prints the tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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


def catalog_shaped(n: int) -> np.ndarray:
    from catalog_data import catalog

    return np.ascontiguousarray(catalog(n), dtype=np.float32)


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


def _timed_build(build: Callable[[], object]) -> tuple[object, float]:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    index = build()
    built = round(time.perf_counter() - t, 1)
    faiss.omp_set_num_threads(1)  # searched on one thread, as a worker does
    return index, built


FAMILIES = ("usearch", "hnswlib", "faiss-hnsw", "faiss-ivf")


def _installed(module: str) -> bool:
    if importlib.util.find_spec(module) is None:
        print(f"{module} not installed (pip install -e '.[bench]'): skipped", file=sys.stderr)
        return False
    return True


def libraries(x: np.ndarray, queries: np.ndarray, families: Sequence[str] = FAMILIES) -> list[dict[str, object]]:
    """Each candidate index at two efforts: recall@10 after rescoring, p50, build, bytes a vector."""
    import faiss

    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    d = x.shape[1]
    rows: list[dict[str, object]] = []

    def row(name: str, search: Callable[[np.ndarray], np.ndarray], built: float, nbytes: float) -> None:
        r, p50 = measure(search, x, queries, truth)
        rows.append({"index": name, "recall_at_10": r, "p50_ms": p50, "build_s": built,
                     "bytes_per_vector": round(nbytes / len(x))})
        print(rows[-1], file=sys.stderr)

    def faiss_bytes(index: faiss.Index) -> int:
        return len(faiss.serialize_index(index))

    if "usearch" in families and _installed("usearch"):
        from usearch.index import Index

        def usearch_build() -> Index:
            index = Index(ndim=d, metric="cos", dtype="i8", connectivity=16, expansion_add=128)
            index.add(np.arange(len(x), dtype=np.uint64), x, threads=os.cpu_count() or 1)
            return index

        u, built = _timed_build(usearch_build)
        for ef in (128, 512):
            u.expansion_search = ef
            row(f"usearch HNSW int8, ef {ef}",
                lambda q: u.search(q, CANDIDATES, threads=1).keys.astype(np.int64), built, u.memory_usage)
    if "hnswlib" in families and _installed("hnswlib"):
        import hnswlib

        def hnswlib_build() -> hnswlib.Index:
            index = hnswlib.Index(space="ip", dim=d)
            index.init_index(max_elements=len(x), M=16, ef_construction=128)
            index.add_items(x, np.arange(len(x)), num_threads=os.cpu_count() or 1)
            return index

        h, built = _timed_build(hnswlib_build)
        h.set_num_threads(1)
        for ef in (128, 512):
            h.set_ef(ef)
            row(f"hnswlib HNSW float32, ef {ef}", lambda q: h.knn_query(q, k=CANDIDATES)[0][0].astype(np.int64),
                built, len(x) * (4 * d + 2 * 16 * 4 + 16))

    def graph(quantizer: int | None) -> faiss.Index:
        index = (faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT) if quantizer is None
                 else faiss.IndexHNSWSQ(d, quantizer, 16, faiss.METRIC_INNER_PRODUCT))
        index.hnsw.efConstruction = 128
        index.train(x[:50_000])
        index.add(x)
        return index

    graphs = (("float32", None), ("8-bit", faiss.ScalarQuantizer.QT_8bit)) if "faiss-hnsw" in families else ()
    for label, quantizer in graphs:
        g, built = _timed_build(lambda quantizer=quantizer: graph(quantizer))
        for ef in (128, 512):
            g.hnsw.efSearch = ef
            row(f"faiss HNSW {label}, ef {ef}", lambda q, g=g: g.search(q[None], CANDIDATES)[1][0], built,
                faiss_bytes(g))

    if "faiss-ivf" not in families:
        return rows
    nlist = 2 ** round(np.log2(np.sqrt(len(x))))
    sample = x[np.random.default_rng(1).choice(len(x), min(len(x), 40 * nlist), replace=False)]

    def ivf(lists: int, coarse: faiss.Index) -> faiss.Index:
        index = faiss.IndexIVFScalarQuantizer(coarse, d, lists, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.train(sample if lists == nlist else x[: 40 * lists])
        index.add(x)
        return index

    flat, built = _timed_build(lambda: ivf(nlist, faiss.IndexFlatIP(d)))
    for nprobe in (8, 32):
        flat.nprobe = nprobe
        row(f"faiss IVF 8-bit, {nprobe} of {nlist} lists", lambda q: flat.search(q[None], CANDIDATES)[1][0], built,
            faiss_bytes(flat))
    # Many more lists with a graph over their centroids: the IVF-HNSW layout of large indexes.
    many = min(4 * nlist, len(x) // 40)
    coarse = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    wide, built = _timed_build(lambda: ivf(many, coarse))
    for nprobe in (32, 128):
        wide.nprobe = nprobe
        coarse.hnsw.efSearch = max(64, 2 * nprobe)
        row(f"faiss IVF-HNSW 8-bit, {nprobe} of {many} lists", lambda q: wide.search(q[None], CANDIDATES)[1][0],
            built, faiss_bytes(wide))
    return rows


def switch_over(data: Callable[[int], np.ndarray], queries: np.ndarray, sizes: list[int]) -> list[dict[str, object]]:
    from lookalike.contracts import BackendContext, CollectionSpec, Item, VectorQuery
    from lookalike_local.index import LocalIndex, LocalIndexOptions

    home = Path(tempfile.mkdtemp(prefix="lookalike-switch-"))
    rows = []
    for size in sizes:
        x = data(size)
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
    parser.add_argument("--data", choices=("catalog", "jittered"), default="catalog")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                        help="which libraries to compare (each graph takes minutes to build at 200,000)")
    parser.add_argument("--no-switch-over", action="store_true", help="the libraries only")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")
    home, tenant = bench_tenant("lookalike-choice-")
    _, base, _ = catalog_vectors(home)
    photos = sorted((DATA / "validation").rglob("*.jpg"))[: args.queries]
    queries = tenant.embedder.embed_images([tenant.decode(p.read_bytes()).image for p in photos])
    data = catalog_shaped if args.data == "catalog" else (lambda n: dataset(n, base))
    libs = libraries(data(args.items), queries, args.families)
    switch = [] if args.no_switch_over else switch_over(data, queries, args.sizes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ann_choice.json").write_text(json.dumps({"items": args.items, "data": args.data, "libraries": libs,
                                                         "switch_over": switch}, indent=2))
    print(f"| index ({args.items:,} {args.data} items, {CANDIDATES} candidates rescored) | recall@10 | p50 ms"
          " | build s | bytes a vector |")
    print("|---|---:|---:|---:|---:|")
    for r in libs:
        print(f"| {r['index']} | {r['recall_at_10']} | {r['p50_ms']} | {r['build_s']} | {r['bytes_per_vector']:,} |")
    print("\n| items | exact p50 ms | approximate p50 ms |")
    print("|---:|---:|---:|")
    for r in switch:
        print(f"| {r['items']:,} | {r['exact_p50_ms']} | {r['approximate_p50_ms']} |")


if __name__ == "__main__":
    main()

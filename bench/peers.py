"""Lookalike's embedded index beside the embedded vector stores users compare it with (issue 28).

Same vectors, queries and filter for every engine, one size per run:
- vectors: catalog-shaped draws from a model of the real model's vectors (``bench/catalog_data.py``),
- queries: the real model's vectors of 200 validation photos (none of them in the base),
- a 1 % filter: every item has ``bucket`` = its number mod 100; filtered queries ask ``bucket`` = 7.

Engines: Lookalike (``LocalIndex`` with its shipped defaults, on its approximate path from 20,000
items), faiss flat (exact), faiss IVF-flat with Lookalike's list count, faiss HNSW (M 32),
LanceDB (IVF_HNSW_SQ), Chroma (HNSW). Each runs in a process of its own (so its memory is its
own), builds, then is tuned as a user would: its search parameter is raised step by step until
recall@10 over these queries reaches 0.95 (unfiltered and filtered tuned apart; Lookalike keeps
its defaults), and measured at that setting, one query at a time on one thread. Ground truth is
an exact float32 scan. LanceDB and Chroma run from ``.venv-peers`` (``make bench-peers-setup``):
they are benchmark extras, never Lookalike's dependencies.

    .venv/bin/python bench/peers.py --sizes 20000 100000      # results in bench/results/peers.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
ENGINES = ("lookalike", "faiss-flat", "faiss-ivf", "faiss-hnsw", "lancedb", "chroma")
NEEDS_PEERS_VENV = {"lancedb", "chroma"}
K = 10
BUCKETS = 100
FILTER_BUCKET = 7
TARGET_RECALL = 0.95


# ---------------------------------------------------------------- the parent: data, truth, table


def prepare(size: int, queries: int, work: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from catalog_data import catalog, real_vectors

    base = np.ascontiguousarray(catalog(size), dtype=np.float32)
    q, _ = real_vectors("validation", limit=queries)
    q = np.ascontiguousarray(q, dtype=np.float32)
    buckets = np.arange(size) % BUCKETS
    np.save(work / "base.npy", base)
    np.save(work / "queries.npy", q)
    np.save(work / "truth.npy", exact_top(base, q, None))
    np.save(work / "truth_filtered.npy", exact_top(base, q, np.nonzero(buckets == FILTER_BUCKET)[0]))


def exact_top(base: np.ndarray, q: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    rows = base if allowed is None else base[allowed]
    scores = q @ rows.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return top if allowed is None else allowed[top]


def run_engine(engine: str, work: Path, timeout_s: float) -> dict[str, Any]:
    python = str(PEERS_PYTHON) if engine in NEEDS_PEERS_VENV else sys.executable
    if engine in NEEDS_PEERS_VENV and not PEERS_PYTHON.exists():
        return {"engine": engine, "error": "needs .venv-peers: make bench-peers-setup"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "ANONYMIZED_TELEMETRY": "False"}
    try:
        done = subprocess.run([python, __file__, "--engine", engine, "--work", str(work)], env=env,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "error": f"did not finish in {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"engine": engine, "error": done.stderr.strip().splitlines()[-1][:300] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| engine | setting | recall@10 | p50 / p99 ms | 1 % filter: setting, recall, p50 / p99 ms | "
           "fewest hits (all, filtered) | build s | disk MB | search RSS MB |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['engine']} | {r['error']} |||||||||")
            continue
        a, f = r["unfiltered"], r["filtered"]
        out.append(f"| {r['engine']} | {a['setting']} | {a['recall']:.3f} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | "
                   f"{f['setting']}, {f['recall']:.3f}, {f['p50_ms']:.1f} / {f['p99_ms']:.1f} | "
                   f"{a['fewest']}, {f['fewest']} | {r['build_s']:.1f} | {r['disk_mb']:.0f} | {r['rss_mb']:.0f} |")
    return "\n".join(out)


# ---------------------------------------------------------------- the child: one engine


class Engine:
    """Build from the base; search one query (optionally filtered) at a search setting."""

    settings: tuple[Any, ...] = (None,)  # tried in order until recall reaches the target

    def __init__(self, work: Path) -> None:
        self.work = work
        self.dir = work / "engine"

    def build(self, base: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, q: np.ndarray, filtered: bool, setting: Any) -> list[int]:
        raise NotImplementedError


class Lookalike(Engine):
    def build(self, base: np.ndarray) -> None:
        from lookalike.contracts import CollectionSpec, Item
        from lookalike.filters import Term
        from lookalike_local.index import LocalIndex, LocalIndexOptions

        self.index = LocalIndex(LocalIndexOptions(path=self.dir / "index.sqlite"))
        self.index.create_collection("t", CollectionSpec(name="c", model_id="m", dimension=base.shape[1]))
        for start in range(0, len(base), 5000):
            self.index.upsert("t", "c", [Item(str(n), base[n], metadata={"bucket": n % BUCKETS})
                                         for n in range(start, min(start + 5000, len(base)))])
        self.index.optimize("t", "c")
        self.term = Term("bucket", FILTER_BUCKET)

    def search(self, q: np.ndarray, filtered: bool, setting: Any) -> list[int]:
        from lookalike.contracts import VectorQuery

        page = self.index.search("t", "c", VectorQuery(vector=q, limit=K, filter=self.term if filtered else None))
        return [int(h.id) for h in page.hits]


class FaissEngine(Engine):
    def write(self, index: Any) -> None:
        import faiss

        self.dir.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(self.dir / "index.faiss"))
        self.index = index

    def selector(self, n: int) -> Any:
        import faiss

        mask = np.zeros(n, dtype=bool)
        mask[FILTER_BUCKET::BUCKETS] = True
        self.bits = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(self.bits), faiss.swig_ptr(self.bits))

    def run(self, q: np.ndarray, params: Any) -> list[int]:
        _, ids = self.index.search(q.reshape(1, -1), K, params=params)
        return [int(i) for i in ids[0] if i >= 0]


class FaissFlat(FaissEngine):
    def build(self, base: np.ndarray) -> None:
        import faiss

        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        self.write(index)
        self.sel = self.selector(len(base))

    def search(self, q: np.ndarray, filtered: bool, setting: Any) -> list[int]:
        import faiss

        return self.run(q, faiss.SearchParameters(sel=self.sel) if filtered else None)


class FaissIvf(FaissEngine):
    settings = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

    def build(self, base: np.ndarray) -> None:
        import faiss

        from lookalike_local.ann import list_count

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        nlist = list_count(len(base))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(base.shape[1]), base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(base[np.random.default_rng(0).choice(len(base), min(len(base), nlist * 40), replace=False)])
        index.add(base)
        faiss.omp_set_num_threads(1)
        self.write(index)
        self.sel = self.selector(len(base))
        self.settings = tuple(s for s in FaissIvf.settings if s <= nlist)

    def search(self, q: np.ndarray, filtered: bool, setting: Any) -> list[int]:
        import faiss

        return self.run(q, faiss.SearchParametersIVF(nprobe=setting, sel=self.sel if filtered else None))


class FaissHnsw(FaissEngine):
    settings = (16, 32, 64, 128, 256, 512, 1024, 2048)

    def build(self, base: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index = faiss.IndexHNSWFlat(base.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.add(base)
        faiss.omp_set_num_threads(1)
        self.write(index)
        self.sel = self.selector(len(base))

    def search(self, q: np.ndarray, filtered: bool, setting: Any) -> list[int]:
        import faiss

        return self.run(q, faiss.SearchParametersHNSW(efSearch=setting, sel=self.sel if filtered else None))


class LanceDb(Engine):
    # (nprobes, refine factor): IVF_HNSW_SQ's partitions visited, then candidates re-ranked exactly.
    settings = ((10, None), (20, None), (20, 2), (40, 2), (80, 2), (80, 5), (160, 5), (320, 10))

    def build(self, base: np.ndarray) -> None:
        import lancedb
        import pyarrow as pa

        db = lancedb.connect(str(self.dir))
        d = base.shape[1]
        schema = pa.schema([pa.field("id", pa.int64()), pa.field("bucket", pa.int64()),
                            pa.field("vector", pa.list_(pa.float32(), d))])

        def batches() -> Any:
            for start in range(0, len(base), 10_000):
                part = base[start:start + 10_000]
                ids = np.arange(start, start + len(part))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(ids), pa.array(ids % BUCKETS),
                     pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), d)], schema=schema)

        self.table = db.create_table("items", data=batches(), schema=schema)
        self.table.create_index(metric="cosine", index_type="IVF_HNSW_SQ", vector_column_name="vector")
        self.table.create_scalar_index("bucket")

    def search(self, q: np.ndarray, filtered: bool, setting: Any) -> list[int]:
        nprobes, refine = setting
        query = self.table.search(q).distance_type("cosine").nprobes(nprobes).limit(K).select(["id"])
        if refine:
            query = query.refine_factor(refine)
        if filtered:
            query = query.where(f"bucket = {FILTER_BUCKET}", prefilter=True)
        return [int(i) for i in query.to_arrow()["id"].to_pylist()]


class Chroma(Engine):
    settings = (16, 32, 64, 128, 256, 512, 1024)

    def build(self, base: np.ndarray) -> None:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.PersistentClient(path=str(self.dir), settings=Settings(anonymized_telemetry=False))
        self.collection = client.create_collection("items", embedding_function=None,
                                                   configuration={"hnsw": {"space": "cosine"}})
        step = min(5000, client.get_max_batch_size())
        for start in range(0, len(base), step):
            part = base[start:start + step]
            ids = range(start, start + len(part))
            self.collection.add(ids=[str(i) for i in ids], embeddings=part,
                                metadatas=[{"bucket": i % BUCKETS} for i in ids])
        self.ef: int | None = None

    def search(self, q: np.ndarray, filtered: bool, setting: Any) -> list[int]:
        if setting != self.ef:
            import chromadb
            from chromadb.api.client import SharedSystemClient
            from chromadb.config import Settings

            self.collection.modify(configuration={"hnsw": {"ef_search": setting}})
            # A loaded index keeps the ef_search it was opened with: open the collection again.
            SharedSystemClient.clear_system_cache()
            client = chromadb.PersistentClient(path=str(self.dir), settings=Settings(anonymized_telemetry=False))
            self.collection = client.get_collection("items", embedding_function=None)
            self.ef = setting
        got = self.collection.query(query_embeddings=[q], n_results=K, include=[],
                                    where={"bucket": FILTER_BUCKET} if filtered else None)
        return [int(i) for i in got["ids"][0]]


ENGINE_CLASSES: dict[str, type[Engine]] = {
    "lookalike": Lookalike, "faiss-flat": FaissFlat, "faiss-ivf": FaissIvf, "faiss-hnsw": FaissHnsw,
    "lancedb": LanceDb, "chroma": Chroma}


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def resident_mb() -> float:
    """This process's resident memory now (VmRSS: ru_maxrss would include the parent's, from
    before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(search: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    found, times = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(search(q))
        times.append((time.perf_counter() - start) * 1000)
    return found, times


def child(engine_name: str, work: Path) -> None:
    base = np.load(work / "base.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    truths = {False: np.load(work / "truth.npy"), True: np.load(work / "truth_filtered.npy")}
    engine = ENGINE_CLASSES[engine_name](work)
    vectors = np.ascontiguousarray(base)
    start = time.perf_counter()
    engine.build(vectors)
    build_s = time.perf_counter() - start
    del vectors, base  # the engine keeps what it needs; the input's copy is not the engine's memory
    gc.collect()
    engine.search(queries[0], False, engine.settings[0])
    rss_mb = resident_mb()  # built and searched once, before tuning (Chroma reopens per setting tried)
    disk = sum(p.stat().st_size for p in engine.dir.rglob("*") if p.is_file())
    result: dict[str, Any] = {"engine": engine_name, "build_s": round(build_s, 1), "disk_mb": disk / 1e6}
    for filtered in (False, True):
        chosen = engine.settings[-1]
        for setting in engine.settings:  # the smallest setting that reaches the target
            found, _ = measure(lambda q, s=setting, f=filtered: engine.search(q, f, s), queries[:50])
            if recall(found, truths[filtered][:50]) >= TARGET_RECALL:
                chosen = setting
                break
        measure(lambda q, s=chosen, f=filtered: engine.search(q, f, s), queries[:20])  # warm
        found, times = measure(lambda q, s=chosen, f=filtered: engine.search(q, f, s), queries)
        result["filtered" if filtered else "unfiltered"] = {
            "setting": "defaults" if chosen is None else str(chosen), "recall": recall(found, truths[filtered]),
            "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "fewest": min(len(f) for f in found)}
    result["rss_mb"] = rss_mb
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one engine may take at one size")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        child(args.engine, args.work)
        return
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    report: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(), "sizes": {}}
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"lookalike-peers-{size}-"))
        try:
            prepare(size, args.queries, work)
            rows = []
            for engine in args.engines:
                shutil.rmtree(work / "engine", ignore_errors=True)
                load = os.getloadavg()[0]
                row = run_engine(engine, work, args.timeout)
                row["load_before"] = round(load, 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            report["sizes"][str(size)] = rows
            print(f"\n{size:,} items, {args.queries} queries, CPU {cpu}:\n{table(rows)}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "peers.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

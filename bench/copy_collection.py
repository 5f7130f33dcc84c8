"""`lookalike collections copy` from the embedded index to a real OpenSearch node: items per second.

    .venv/bin/python bench/copy_collection.py [--items 100000] [--page-size 200] [--threads 8] [--opensearch-url URL]

1. Starts an OpenSearch 2.19.1 node with the k-NN plugin (scripts/opensearch_node.py, on port
   9260, its own data folder) unless ``--opensearch-url`` names one.
2. Builds the source (not timed): ``--items`` catalog-shaped vectors (bench/catalog_data.py) in a
   tenant on the embedded index, each with a real photo of ../shared/data/clothing/train (cycled)
   in the filesystem blob store, a caption, and a 1 % ``shard`` field.
3. Times the copy into a tenant on OpenSearch, as the CLI runs it (pages of ``--page-size``, photos
   copied ``--threads`` at a time, a checkpoint after each page), then its verification (counts,
   64 items byte for byte, 10 queries on both sides) separately.
Writes bench/results/copy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import DATA, KEY, RESULTS, ROOT


def build_source(home: Path, items: int) -> dict[str, float]:
    from catalog_data import catalog

    from lookalike import keys
    from lookalike.config import Settings
    from lookalike.contracts import CollectionSpec, Item
    from lookalike.process import Lookalike

    t = Lookalike(Settings(home=home)).tenant("source")
    inner = t.search_backend.inner
    inner.create_collection("source", CollectionSpec(name="catalog", model_id=t.embedder.model_id,
                                                     dimension=t.embedder.dimension))
    photos = [p.read_bytes() for p in sorted((DATA / "train").rglob("*.jpg"))]
    vectors = catalog(items)
    started = time.perf_counter()
    batch = []
    for n in range(items):
        item_id = f"c{n:07d}"
        image_key = keys.new_image_key("source", "catalog", item_id)
        t.blobs.put(image_key, photos[n % len(photos)], "image/jpeg", {"item_id": item_id})
        batch.append(Item(item_id, np.asarray(vectors[n], dtype=np.float32), {"shard": n % 100, "caption": f"item {n}"},
                          image_key=image_key, updated_at=1_700_000_000.0 + n))
        if len(batch) == 2000:
            inner.upsert("source", "catalog", batch)
            batch = []
    inner.upsert("source", "catalog", batch)
    return {"build_s": round(time.perf_counter() - started, 1), "photo_bytes_mean": round(
        sum(len(photos[n % len(photos)]) for n in range(min(items, len(photos)))) / min(items, len(photos)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--opensearch-url")
    args = parser.parse_args()

    node_home = ROOT / ".opensearch-bench"
    url = args.opensearch_url
    if url is None:
        subprocess.run([sys.executable, "scripts/opensearch_node.py", "start", "--home", str(node_home),
                        "--port", "9260", "--fresh"], cwd=ROOT, check=True)
        url = "http://127.0.0.1:9260"
    try:
        with tempfile.TemporaryDirectory(prefix="lookalike-copy-bench-") as tmp:
            home = Path(tmp)
            from lookalike.config import hash_key

            (home / "config.yaml").write_text(yaml.safe_dump({"tenants": {
                "source": {"api_keys": [{"sha256": hash_key(KEY)}]},
                "dest": {"api_keys": [{"sha256": hash_key(KEY + "-dest")}], "search": {
                    "name": "opensearch", "options": {"url": url, "index_prefix": f"copybench{time.time_ns()}"}}}}}))
            print(f"building {args.items:,} items ...", flush=True)
            source = build_source(home, args.items)
            from lookalike import transfer
            from lookalike.config import Settings
            from lookalike.process import Lookalike

            app = Lookalike(Settings(home=home))
            src, dst = app.tenant("source"), app.tenant("dest")
            last = [0.0]

            def progress(done: int, total: int) -> None:
                if time.monotonic() - last[0] > 10:
                    last[0] = time.monotonic()
                    print(f"  {done:,} / {total:,}", flush=True)

            report = transfer.copy_collection(src, "catalog", dst, "catalog", page_size=args.page_size,
                                              threads=args.threads, verify_sample=0, progress=progress)
            t0 = time.perf_counter()
            verification = transfer.verify_copy(src, "catalog", dst, "catalog", sample=64)
            verify_s = time.perf_counter() - t0
    finally:
        if args.opensearch_url is None:
            subprocess.run([sys.executable, "scripts/opensearch_node.py", "stop", "--home", str(node_home)], cwd=ROOT)
    result = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
        "items": args.items, "page_size": args.page_size, "threads": args.threads, "source": source,
        "copy_s": round(report.seconds, 1), "items_per_s": round(report.copied / report.seconds, 1),
        "verify_s": round(verify_s, 1), "verification_ok": verification.ok,
        "top1_agree": f"{verification.top1_agree}/{verification.queries}",
        "top10_overlap": round(verification.top10_overlap, 3), "mismatched": verification.mismatched[:5],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "copy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

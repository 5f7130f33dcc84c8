"""`lookalike collections reindex` of the 3,068 catalog photos, and what it does to searches.

    .venv/bin/python bench/reindex.py [--limit 3068] [--clients 2] [--seconds 30]

1. Ingests ../shared/data/clothing/train (``--limit`` photos) into the embedded default (not timed).
2. Starts ``lookalike serve`` and runs ``--clients`` clients searching by uploaded photo (the
   validation photos) back to back for ``--seconds``: p50/p99 without a reindex.
3. Runs ``lookalike collections reindex`` (a separate process, as a user would, ``--grace 5``)
   with the same clients searching until it ends: the reindex's items per second, and the
   searches' p50/p99 and errors during it.
Writes bench/results/reindex.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import TENANT, configure, run_clients
from search_latency import DATA, RESULTS, ROOT, percentile, serving


def _figures(lat: list[float], errors: int, elapsed: float) -> dict[str, object]:
    return {"searches": len(lat), "per_s": round(len(lat) / elapsed, 1) if elapsed else None,
            "p50_ms": round(percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(percentile(lat, 99), 1) if lat else None, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=3068)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    photos = sorted((DATA / "train").rglob("*.jpg"))[:args.limit]
    queries = [p.read_bytes() for p in sorted((DATA / "validation").rglob("*.jpg"))[:64]]
    with tempfile.TemporaryDirectory(prefix="lookalike-reindex-bench-") as tmp:
        home = Path(tmp)
        configure(home, ann_min_items=20_000)
        env = {**os.environ, "LOOKALIKE_HOME": str(home)}
        env.pop("LOOKALIKE_CONFIG", None)
        manifest = home / "items.jsonl"
        manifest.write_text("".join(json.dumps({"id": f"{p.parent.name}-{p.stem}", "image": str(p),
                                                "metadata": {"category": p.parent.name}}) + "\n" for p in photos))
        print(f"ingesting {len(photos):,} photos ...", flush=True)
        subprocess.run([sys.executable, "-m", "lookalike.cli", "ingest", str(manifest), "--collection", "catalog",
                        "--tenant", TENANT], env=env, cwd=ROOT, check=True, capture_output=True)

        def one(s: requests.Session, n: int) -> float:
            t = time.perf_counter()
            r = s.post(url, files={"image": ("q.jpg", queries[n % len(queries)], "image/jpeg")}, data={"limit": "10"},
                       timeout=120)
            r.raise_for_status()
            return (time.perf_counter() - t) * 1000

        with serving(env, stop_timeout=30) as base:
            url = f"{base}/v1/collections/catalog/search"
            run_clients(args.clients, 3, one)  # warm every worker
            print("searching without a reindex ...", flush=True)
            quiet = _figures(*run_clients(args.clients, args.seconds, one))
            print("searching during a reindex ...", flush=True)
            done: dict[str, object] = {}

            def reindex() -> None:
                proc = subprocess.run([sys.executable, "-m", "lookalike.cli", "collections", "reindex",
                                       f"{TENANT}/catalog", "--grace", "5", "--json"], env=env, cwd=ROOT,
                                      capture_output=True, text=True)
                done.update(json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-2000:]})

            worker = threading.Thread(target=reindex)
            started = time.monotonic()
            worker.start()
            lat: list[float] = []
            errors = 0
            for _ in range(1000):  # rounds of 5 s until the reindex ends (bounded)
                more, failed, _ = run_clients(args.clients, 5, one)
                lat += more
                errors += failed
                if not worker.is_alive():
                    break
            worker.join()
            during = _figures(lat, errors, time.monotonic() - started)
    result = {"machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
              "photos": len(photos), "clients": args.clients, "reindex": done, "search_without": quiet,
              "search_during": during}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reindex.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

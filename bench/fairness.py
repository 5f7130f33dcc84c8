"""Can one tenant starve another? Tenant B's search latency alone and under each attack of issue 26.

    .venv/bin/python bench/fairness.py [--probes 40] [--workers 0]

`lookalike serve` with its defaults (``--workers 0``: CPUs + 1) and two tenants. Tenant B
(globex) searches by an uploaded photo, one request at a time, ``--probes`` times: alone,
then while tenant A (demo), or a holder of A's search-only Marqo index id, runs each attack:

The attacking clients run in a process of their own (sharing the machine's two cores with the
server and with B, as the server's own CPUs would be shared with its tenants' traffic).

1. 16 clients re-ranking searches by a 40 MP text-like PNG (6324 x 6324, 345 KB);
2. 8 clients asking for an item's near-duplicates (B's probe here is ``GET /v1/collections/iso``,
   as in the issue's table, and its search too);
3. 3 clients sending an AVIF grid of 99 x 99 tiles (412 KB);
4. 6 Marqo searches, with only the index id, by an image URL on an origin that sends one byte
   every 2 s.

For each it prints B's p50/p99 alone and meanwhile (goal: p99 within 3x alone) and what A got
(answers by status: fewer, not none). Then the crafted AVIF/HEIC corpus of
tests/security/heif_files.py on `/v1/embed`: each file's time to its 4xx (goal: under 100 ms).
Writes bench/results/fairness.json. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml
from PIL import Image
from urllib3 import encode_multipart_formdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from server_concurrency import _home, serving  # noqa: E402

from tests.e2e.isolation_load import seed  # noqa: E402
from tests.loopback import serve_origin  # noqa: E402
from tests.security.heif_files import coded, crafted, tiled  # noqa: E402

RESULTS = ROOT / "bench" / "results"
IMAGES = sorted((ROOT / "tests" / "fixtures" / "images").rglob("*.jpg"))
QUERY = ROOT / "tests" / "fixtures" / "queries" / "hat.jpg"
A = {"Authorization": "Bearer demo-key"}
B = {"Authorization": "Bearer globex-key"}
INDEX_ID = "demo.fairness-bench-index-id"
ATTACK_S = 120.0  # no attack runs longer than this, whatever the probes do


class DribbleOrigin(BaseHTTPRequestHandler):
    """Headers at once, then one byte every 2 s (at most 40 of them)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(40):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(2.0)
        except OSError:
            pass


def text_like_png() -> bytes:
    rng = np.random.default_rng(26)
    glyphs = (rng.random((6324 // 4, 6324 // 4)) > 0.93).astype(np.uint8) * 255
    out = io.BytesIO()
    Image.fromarray(glyphs).resize((6324, 6324), Image.Resampling.NEAREST).save(out, "PNG")
    return out.getvalue()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 1), "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 1)}


def probe(send: Callable[[], requests.Response], count: int) -> dict[str, object]:
    seconds, statuses = [], Counter()
    for _ in range(count):
        started = time.perf_counter()
        r = send()
        seconds.append(time.perf_counter() - started)
        statuses[r.status_code] += 1
    return {**percentiles(seconds), "statuses": dict(statuses)}


Request = tuple[str, str, dict[str, str], bytes]  # method, URL, headers, body


def _attack(clients: int, request: Request, stop: Any, out: Any) -> None:
    """``clients`` threads sending ``request`` in a loop until ``stop`` (or ATTACK_S); the count
    of answers by status goes to ``out``. In a process of its own, as another machine's clients
    would be: their Python never holds the GIL of the process that measures B."""
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    method, url, headers, body = request

    def loop() -> None:
        session = requests.Session()
        deadline = time.monotonic() + ATTACK_S
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status = str(session.request(method, url, headers=headers, data=body or None, timeout=90).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ATTACK_S + 90)
    out.put(dict(statuses))


class Attack:
    def __init__(self, clients: int, request: Request) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop, self._out = ctx.Event(), ctx.Queue()
        self._process = ctx.Process(target=_attack, args=(clients, request, self._stop, self._out), daemon=True)
        self.statuses: dict[str, int] = {}

    def __enter__(self) -> Attack:
        self._process.start()
        time.sleep(3.0)  # the attack is under way: workers busy, queues filled
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.statuses = self._out.get(timeout=ATTACK_S + 120)
        self._process.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0, help="0: the server's default")
    args = parser.parse_args()

    home = _home()
    config = yaml.safe_load((home / "config.yaml").read_text())
    config["tenants"]["demo"]["collections"] = {"iso": {"marqo_index_id": INDEX_ID}}
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    query = base64.b64encode(QUERY.read_bytes()).decode()
    # The attack bodies are encoded once: the clients share this machine's CPUs with the server.
    rerank_body = json.dumps({"image_base64": base64.b64encode(text_like_png()).decode(), "rerank": True}).encode()
    grid = tiled(b"avif", coded(b"av01"), 99, 99, 64, 64)
    grid_body, grid_type = encode_multipart_formdata({"image": ("grid.avif", grid)})
    session = threading.local()

    def http() -> requests.Session:
        if not hasattr(session, "s"):
            session.s = requests.Session()
        return session.s

    results: dict[str, object] = {"cpu": platform.processor() or platform.machine(), "probes": args.probes}
    with serving(home, args.workers) as base, serve_origin(DribbleOrigin) as dribble:
        seed(base, IMAGES)

        def b_search() -> requests.Response:
            return http().post(f"{base}/v1/collections/iso/search", json={"image_base64": query}, headers=B,
                               timeout=90)

        def b_collection() -> requests.Response:
            return http().get(f"{base}/v1/collections/iso", headers=B, timeout=90)

        json_type = {"Content-Type": "application/json"}
        attacks: dict[str, tuple[int, Request]] = {
            "16 clients re-ranking 40 MP PNGs": (16, (
                "POST", f"{base}/v1/collections/iso/search", {**A, **json_type}, rerank_body)),
            "8 clients on duplicates": (8, ("GET", f"{base}/v1/collections/iso/items/item-0/duplicates", A, b"")),
            "3 clients sending 9,801-tile AVIF grids": (3, (
                "POST", f"{base}/v1/collections/iso/search", {**A, "Content-Type": grid_type}, grid_body)),
            "6 Marqo searches by a dribbling URL (index id only)": (6, (
                "POST", f"{base}/api/v1/indexes/iso/reverse-image-search",
                {"x-marqo-index-id": INDEX_ID, **json_type}, json.dumps({"q": f"{dribble}/photo.jpg"}).encode())),
        }
        # twice the probes alone: the baseline's p99 is what every ratio divides by
        alone = {"search": probe(b_search, 2 * args.probes), "collection": probe(b_collection, args.probes)}
        results["alone"] = alone
        print(f"B alone: search p50 {alone['search']['p50_ms']} ms, p99 {alone['search']['p99_ms']} ms; "
              f"GET collection p50 {alone['collection']['p50_ms']} ms, p99 {alone['collection']['p99_ms']} ms")
        rows = []
        for name, (clients, request) in attacks.items():
            with Attack(clients, request) as attack:
                search = probe(b_search, args.probes)
                collection = probe(b_collection, args.probes // 2) if "duplicates" in name else None
            row = {"attack": name, "b_search": search, "b_collection": collection, "a_answers": dict(attack.statuses),
                   "b_search_p99_x_alone": round(search["p99_ms"] / alone["search"]["p99_ms"], 2)}
            rows.append(row)
            extra = (f"; GET collection p50 {collection['p50_ms']} ms, p99 {collection['p99_ms']} ms"
                     if collection else "")
            print(f"{name}: B search p50 {search['p50_ms']} ms, p99 {search['p99_ms']} ms "
                  f"({row['b_search_p99_x_alone']}x alone){extra}; A got {dict(attack.statuses)}")
        results["attacks"] = rows

        corpus = []
        for name, data in crafted():
            body, content_type = encode_multipart_formdata({"image": (name, data)})
            times, statuses = [], set()
            for _ in range(5):  # the median of five: one upload of a 2.7 MB file varies with the machine
                started = time.perf_counter()
                r = http().post(f"{base}/v1/embed", data=body, headers={**B, "Content-Type": content_type},
                                timeout=90)
                times.append((time.perf_counter() - started) * 1000)
                statuses.add(r.status_code)
            corpus.append({"file": name, "bytes": len(data), "statuses": sorted(statuses),
                           "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)})
        results["crafted_images"] = corpus
        slowest = max(corpus, key=lambda c: c["median_ms"])
        statuses = sorted({s for c in corpus for s in c["statuses"]})
        print(f"crafted AVIF/HEIC: {len(corpus)} files x 5, statuses {statuses}, "
              f"slowest median {slowest['median_ms']} ms ({slowest['file']}, {slowest['bytes']} bytes; "
              f"its slowest {slowest['max_ms']} ms); the others' medians at most "
              f"{max(c['median_ms'] for c in corpus if c is not slowest)} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fairness.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

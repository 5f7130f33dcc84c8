"""Where a search by uploaded photo spends its CPU through ``lookalike serve``, against the
model's own ceiling measured in the same run.

    .venv/bin/python bench/request_path.py [--items 20000] [--seconds 15] [--rounds 3]
                                           [--clients 32] [--profile 300]

1. The model's ceiling: one process per core decoding and embedding the uploaded photos back
   to back (``bench/ann.py``'s), images/s; and the CPU one decode + embed costs (process time
   over a sequential run of ``--profile`` photos), with the model on one thread (as a worker
   runs it while another request is in flight) and on every core (a request alone).
2. Through ``lookalike serve`` (default workers), alternating with the ceiling of 1. for
   ``--rounds`` rounds: ``--clients`` clients search a collection of ``--items``
   catalog-shaped items by uploaded photo (multipart) for ``--seconds``; the
   CPU the server's processes used (front and workers, from /proc) over the requests
   answered is the CPU a request costs, split into the front's and the workers'.
3. In process, under cProfile: ``--profile`` requests handed to the search function's handler
   as the front hands them (the same API Gateway event, through the same pickling), the
   handler's time split into decode, model, search and everything else, and the top
   functions of "everything else".
Goal (issue 28): CPU a request <= decode + model + 3 ms, so that ``--clients`` clients reach
>= 90 % of the model's ceiling. Writes bench/results/request_path.json. Loopback only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pickle
import platform
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import TENANT, build, configure, model_ceiling, run_clients
from search_latency import DATA, KEY, RESULTS, ROOT, catalog_vectors, percentile, serving

TICKS = os.sysconf("SC_CLK_TCK")

# Where the handler's time goes: (label, file suffix, function name) of the entry points.
STAGES = (
    ("decode", "lookalike/intake.py", "decode"),
    ("model", "lookalike_local/efficientnet.py", "embed_images"),
    ("search", "lookalike_local/index.py", "search"),
)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every process under it (all alive for the window)."""
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _front_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def decode_and_model_cpu_ms(home: Path, photos: list[bytes], threads: int) -> float:
    """Process CPU (every thread) of decoding and embedding each photo once, one at a time, the
    model on ``threads`` threads (0: onnxruntime's choice, every core)."""
    from lookalike import scheduling
    from lookalike.config import Settings
    from lookalike.process import Lookalike

    scheduling.set_cpu_share(threads)  # as a server's worker is told
    try:
        tenant = Lookalike(Settings(home=home)).tenant(TENANT)
        tenant.embedder.embed_images([tenant.decode(photos[0]).image])
        started = time.process_time()
        for data in photos:
            tenant.embedder.embed_images([tenant.decode(data).image])
        return (time.process_time() - started) * 1000 / len(photos)
    finally:
        scheduling.set_cpu_share(0)


def under_load(env: dict[str, str], home: Path, url: str, payloads: list[tuple[str, bytes]], clients: int,
               seconds: float, rounds: int) -> list[dict[str, Any]]:
    """``rounds`` times: the model's ceiling for ``seconds`` (the server idle), then ``clients``
    clients for ``seconds``. Alternated because this machine's speed drifts by a third within
    minutes: a ceiling measured once, minutes from the load, compared two different machines."""
    out: dict[str, Any] = {}
    results = []
    with serving(env, stop_timeout=30, pid_out=out) as base:
        pid = int(out.pop("pid"))
        target = f"{base}{url}"

        # Each photo's multipart body encoded once: the clients share these two cores with the
        # server, and encoding 100 KB a request in them took CPU from the server.
        prepared = [requests.Request("POST", target, files={"image": (fname, data, "image/jpeg")},
                                     data={"limit": "10"}).prepare() for fname, data in payloads]
        bodies = [(p.body, p.headers["Content-Type"]) for p in prepared]

        def one(s: requests.Session, n: int) -> float:
            body, content_type = bodies[n % len(bodies)]
            t = time.perf_counter()
            r = s.post(target, data=body, headers={"Content-Type": content_type}, timeout=60)
            r.raise_for_status()
            return (time.perf_counter() - t) * 1000

        warm = requests.Session()
        warm.headers["Authorization"] = f"Bearer {KEY}"
        for n in range(20):
            one(warm, n)
        for _ in range(rounds):
            ceiling = model_ceiling(home, payloads, seconds)
            load = _load(pid, one, clients, seconds)
            results.append({"model_ceiling_images_per_s": ceiling, **load,
                            "share_of_ceiling": round(load["requests_per_s"] / ceiling, 3)})
            print(json.dumps(results[-1]), file=sys.stderr)
    return results


def _load(pid: int, one: Callable[[requests.Session, int], float], clients: int, seconds: float) -> dict[str, Any]:
    """``run_clients``' figures, and the CPU the server (``pid`` and its workers) used meanwhile."""
    cpu0, front0 = _cpu_seconds(pid), _front_cpu(pid)
    lat, errors, elapsed = run_clients(clients, seconds, one)
    cpu, front = _cpu_seconds(pid) - cpu0, _front_cpu(pid) - front0
    answered = max(1, len(lat))
    return {"clients": clients, "requests_per_s": round(len(lat) / elapsed, 1), "errors": errors,
            "p50_ms": round(percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(percentile(lat, 99), 1) if lat else None,
            "server_cpu_ms_per_request": round(cpu * 1000 / answered, 1),
            "front_cpu_ms_per_request": round(front * 1000 / answered, 1),
            "workers_cpu_ms_per_request": round((cpu - front) * 1000 / answered, 1),
            "cpu_busy": round(cpu / (elapsed * (os.cpu_count() or 1)), 2)}


def profiled(home: Path, url: str, payloads: list[tuple[str, bytes]], count: int) -> dict[str, Any]:
    """The handler's time per request by stage, in process, for ``count`` requests."""
    os.environ["LOOKALIKE_HOME"] = str(home)
    from lookalike.gateway import Gateway

    gateway = Gateway(ROOT / "template.yaml")
    route, params, _ = gateway.match("POST", url)
    assert route is not None, url
    gateway.handler_for(route)  # imported before the clock starts, as a warm worker has it

    def event(n: int) -> tuple[dict[str, Any], float]:
        fname, data = payloads[n % len(payloads)]
        prepared = requests.Request("POST", f"http://127.0.0.1{url}", files={"image": (fname, data, "image/jpeg")},
                                    data={"limit": "10"}, headers={"Authorization": f"Bearer {KEY}"}).prepare()
        t = time.process_time()
        built = gateway.event(route, params, "POST", url, list(prepared.headers.items()), prepared.body,
                              "127.0.0.1")
        built = pickle.loads(pickle.dumps(("fn", built)))[1]  # the pipe to the worker
        return built, time.process_time() - t

    # The handlers log a line a request to stdout, as a worker's do: kept, but sent nowhere.
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        return _profile(gateway, route, event, count)
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


def _profile(gateway: Any, route: Any, event: Any, count: int) -> dict[str, Any]:
    for n in range(10):
        result = gateway.invoke(route, event(n)[0])
        assert result["statusCode"] == 200, result
    events = [event(n) for n in range(count)]
    profile = cProfile.Profile()
    started = time.process_time()
    profile.enable()
    for built, _ in events:
        result = gateway.invoke(route, built)
        pickle.dumps(("ok", (result, None)))  # the answer's way back
    profile.disable()
    total = (time.process_time() - started) * 1000 / count
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    out: dict[str, Any] = {"handler_ms": round(total, 2),
                           "front_event_ms": round(sum(t for _, t in events) * 1000 / count, 2)}
    staged = 0.0
    for label, suffix, name in STAGES:
        ms = sum(v[3] for (f, _, fn), v in raw.items() if f.endswith(suffix) and fn == name) * 1000 / count
        out[f"{label}_ms"] = round(ms, 2)
        staged += ms
    wall = sum(v[2] for v in raw.values()) * 1000 / count  # self time of everything: the profiled total
    out["other_ms"] = round(wall - staged, 2)
    top = sorted(((v[3] * 1000 / count, f"{Path(f).parent.name}/{Path(f).name}:{fn}")
                  for (f, _, fn), v in raw.items()), reverse=True)
    out["top_cumulative"] = [(name, round(ms, 2)) for ms, name in top[:40]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=15.0, help="each ceiling and each load window")
    parser.add_argument("--rounds", type=int, default=3, help="ceiling and load, alternated")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--profile", type=int, default=300)
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")
    home = Path(tempfile.mkdtemp(prefix="lookalike-path-"))
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    configure(home, 1)
    ids, vectors, classes = catalog_vectors(home)
    from lookalike_local.efficientnet import EfficientNetLite0

    model_id = EfficientNetLite0().model_id
    photos = sorted((DATA / "validation").rglob("*.jpg"))[:200]
    payloads = [(p.name, p.read_bytes()) for p in photos]
    name = f"path-{args.items}"
    built = build(home, name, args.items, ids, vectors, classes, model_id)
    url = f"/v1/collections/{name}/search"
    photos_only = [d for _, d in payloads][: args.profile]
    model_cpu = {threads or "default": round(decode_and_model_cpu_ms(home, photos_only, threads), 2)
                 for threads in (1, 0)}
    rounds = under_load(env, home, url, payloads, args.clients, args.seconds, args.rounds)
    profile = profiled(home, url, payloads, args.profile)
    result = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_average": os.getloadavg(), "items": args.items, "build": built,
              "decode_and_model_cpu_ms": model_cpu, "rounds": rounds, "in_process": profile,
              "median_share_of_ceiling": float(np.median([r["share_of_ceiling"] for r in rounds]))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "request_path.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "in_process"}, indent=2))
    print(json.dumps({k: v for k, v in profile.items() if k != "top_cumulative"}, indent=2))
    for name_, ms in profile["top_cumulative"]:
        print(f"{ms:8.2f} ms  {name_}")


if __name__ == "__main__":
    main()

"""Ingestion throughput: images per second from S3 event to searchable.

    .venv/bin/python bench/ingest.py [--limit 3068] [--batch 10] [--concurrency 1]

1. Starts moto's S3 server in its own process on loopback and uploads the 3,068 catalog photos of
   ../shared/data/clothing/train under ``bench/clothing/<id>.jpg`` (not timed).
2. Starts the clock and hands the deployed ingest handler (functions/ingest/app.py) one
   SQS event per ``--batch`` S3 ObjectCreated notifications, as Lambda's event source
   mapping does: S3 GET, sidecar lookup, HEAD, decode, EfficientNet-Lite0, once-only record,
   upsert into the embedded index. Stops the clock when every photo is searchable.
   With ``--concurrency N``, N warm processes take the batches side by side, as Lambda runs
   concurrent execution environments for a backed-up queue (one embedded index and
   once-only store, shared by the processes as by `lookalike serve`'s workers).
3. Reports the CPU seconds of Lookalike and of the S3 server while the clock ran, and the
   model's own rate on the same photos (EfficientNet-Lite0, two views): the ceiling.

The SQS queue itself is left out: moto's SQS slows down by the size of its queue (it
measured moto, not Lookalike), and on AWS the queue is not on this path's critical time.

Lookalike runs in this process, on the embedded default (local index, SQLite idempotency).
Writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clothing"
RESULTS = ROOT / "bench" / "results"
BUCKET = "bench-catalog"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(endpoint: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"moto did not start at {endpoint}")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


_handler = None


def _load_handler() -> Any:
    """The deployed ingest handler, as a Lambda execution environment imports it."""
    global _handler
    if _handler is None:
        spec = importlib.util.spec_from_file_location("ingest_app", ROOT / "functions" / "ingest" / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _handler = module.lambda_handler
    return _handler


def _invoke(event: dict[str, Any]) -> int:
    """One SQS batch through the handler; its failed records."""
    from lookalike.lambda_context import LocalContext

    return len(_load_handler()(event, LocalContext(function_name="ingest"))["batchItemFailures"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="photos to ingest (0: all)")
    parser.add_argument("--batch", type=int, default=10, help="SQS batch size (the template's BatchSize)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="execution environments taking batches side by side, as Lambda scales an SQS "
                             "trigger (each a process of its own)")
    args = parser.parse_args()
    paths = sorted((DATA / "train").rglob("*.jpg"))
    if not paths:
        sys.exit(f"no photos under {DATA / 'train'}")
    paths = paths[: args.limit or None]
    previous = RESULTS / "ingest.json"
    if previous.exists():  # the figure this run replaces, and what it was measured on
        before = json.loads(previous.read_text())
        print(f"previous run: {before.get('images_per_second')} images/s, model alone "
              f"{before.get('model_only_images_per_second')}, configuration {json.dumps(before.get('configuration'))}")

    home = Path(tempfile.mkdtemp(prefix="lookalike-bench-ingest-"))
    (home / "config.yaml").write_text(yaml.safe_dump({"tenants": {"bench": {"api_keys": []}},
                                                      "defaults": {"text_embedder": {"name": "none"}}}))
    for name, value in {"LOOKALIKE_HOME": str(home), "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
                        "POWERTOOLS_LOG_LEVEL": "WARNING"}.items():
        os.environ[name] = value
    os.environ.pop("LOOKALIKE_IDEMPOTENCY_TABLE", None)

    import boto3
    # S3 in its own process, as it is on AWS: its work is not charged to Lookalike's GIL.
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(endpoint)
    os.environ["LOOKALIKE_S3_ENDPOINT_URL"] = endpoint
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for path in paths:
        s3.put_object(Bucket=BUCKET, Key=f"bench/clothing/{path.stem}.jpg", Body=path.read_bytes())

    from lookalike.api.request import service
    from lookalike.contracts import VectorQuery

    tenant = service().tenant("bench")
    tenant.create_collection("clothing")
    # The ceiling: the model alone (decoded photos, batches of the embedder's size), same machine.
    sample = [tenant.decode(p.read_bytes()).image for p in paths[:320]]
    tenant.embedder.embed_images(sample[:16])  # load the model first
    model_started = time.perf_counter()
    tenant.embedder.embed_images(sample)
    model_only = len(sample) / (time.perf_counter() - model_started)

    events = [{"Records": [{
        "messageId": f"m{start + n}", "receiptHandle": f"r{start + n}", "attributes": {},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:ingest", "awsRegion": "us-east-1",
        "body": json.dumps({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": BUCKET}, "object": {"key": f"bench/clothing/{p.stem}.jpg",
                                                          "sequencer": f"{start + n:018X}"}}}]})}
        for n, p in enumerate(paths[start:start + args.batch])]} for start in range(0, len(paths), args.batch)]
    if args.concurrency > 1:  # warm execution environments, as a scaled-out trigger keeps them
        workers = multiprocessing.get_context("spawn").Pool(args.concurrency, initializer=_load_handler)
        workers.map(abs, range(args.concurrency))  # every worker has imported the handler
    else:
        _load_handler()
    started, cpu_started, s3_cpu_started = time.perf_counter(), time.process_time(), process_cpu_seconds(server.pid)
    children_started = resource.getrusage(resource.RUSAGE_CHILDREN)
    if args.concurrency > 1:
        failures = sum(workers.imap_unordered(_invoke, events))
        workers.close()
        workers.join()
    else:
        failures = sum(_invoke(event) for event in events)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = (children.ru_utime - children_started.ru_utime) + (children.ru_stime - children_started.ru_stime)
    info = tenant.collection("clothing")
    last = tenant.search_backend.get_item("bench", "clothing", paths[-1].stem)
    assert last is not None
    hit = tenant.search_backend.search("bench", "clothing", VectorQuery(vector=last.vector, limit=1)).hits[0]
    elapsed = time.perf_counter() - started
    s3_cpu = process_cpu_seconds(server.pid) - s3_cpu_started
    server.terminate()
    server.wait(timeout=30)

    report = {
        "images": len(paths), "indexed": info.item_count, "failures": failures, "seconds": round(elapsed, 2),
        "images_per_second": round(info.item_count / elapsed, 1), "batch": args.batch,
        "lookalike_cpu_seconds": round(time.process_time() - cpu_started + children_cpu, 2),
        "concurrency": args.concurrency,
        "s3_server_cpu_seconds": round(s3_cpu, 2),
        "model_only_images_per_second": round(model_only, 1),
        "last_image_searchable": hit.id == paths[-1].stem,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "configuration": {"commit": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                                   capture_output=True, text=True, check=False).stdout.strip(),
                          "model_id": tenant.embedder.model_id, "batch": args.batch,
                          "concurrency": args.concurrency},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Lambda cold starts of the `sam build` output: process start to the first answered event.

    make sam-build && .venv/bin/python bench/cold_start.py [--runs 7]

Every function runs as ``tests/e2e/test_sam_build.py`` runs it (``tests/e2e/lambda_stand_in.py``):
its built code folder as the task root, its layers merged as Lambda mounts them at /opt,
``python -S`` (nothing from the virtualenv), the runtime's boto3, and moto's S3, SSM and
DynamoDB over HTTP on loopback. For each function, ``--runs`` fresh processes each answer one
sample event from events/ (the first request of an execution environment: the tenant
configuration read from SSM, the model loaded, the image decoded and embedded). Reported per
function, as medians: process start to the first answer, the handler's import, the first
request (the rest), and the process's peak RSS.

Then each process answers the same event ``--warm`` more times, warm: the median wall and CPU
time of a request. From them, the duration and cost of a request at a few memory sizes, as
Lambda allocates CPU in proportion to memory (one vCPU at 1,769 MB): the CPU time stretches
by 1,769 / memory below one vCPU, the rest (waiting on S3, SSM) does not; above one vCPU a
request gains only what its threads can use (``parallelism``, CPU over wall time here,
capped at the vCPUs). Price: Lambda's published x86 rate, $0.0000166667 per GB-s plus $0.20
per million requests (us-east-1). This machine's cores are not Lambda's, so the figures rank
the sizes rather than predict a bill.

Goals (issue 19): search, embed and upload within 600 ms; taxonomy and generate within 400 ms.
Writes bench/results/cold_start.json; prints the previous run's figures and configuration first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from lookalike.gateway import load_template  # noqa: E402
from tests.e2e.lambda_stand_in import (  # noqa: E402 - after the path is set
    BUILD,
    DOMAIN,
    LAMBDA_RUNTIME,
    functions,
    s3_record,
    sqs_event,
    stack_resources,
    tree_bytes,
)
from tests.e2e.strict_aws import DomainGate, SignedDomainProxy, StrictAws  # noqa: E402

FIRST_EVENT = {"ReverseSearchFunction": "reverse_search", "EmbedFunction": "embed",
               "UploadFunction": "upload_put_item", "TaxonomyFunction": "taxonomy_list_collections",
               "GenerateFunction": "generate", "IngestFunction": "ingest_object_created"}
GOAL_MS = {"ReverseSearchFunction": 600, "EmbedFunction": 600, "UploadFunction": 600,
           "TaxonomyFunction": 400, "GenerateFunction": 400}
MEMORY_MB = (512, 1024, 1769, 2048, 3008)
PER_GB_S, PER_REQUEST = 0.0000166667, 0.20 / 1e6
ONE_VCPU_MB = 1769


def at_memory(wall_ms: float, cpu_ms: float, memory_mb: int) -> tuple[float, float]:
    """A request's estimated duration (ms) and cost ($ per million) at ``memory_mb``."""
    waiting = max(0.0, wall_ms - cpu_ms)  # on S3, SSM: does not scale with memory
    parallelism = max(1.0, cpu_ms / wall_ms)  # CPU ms per wall ms here: what more vCPUs can serve
    duration = waiting + cpu_ms / min(memory_mb / ONE_VCPU_MB, parallelism)
    cost = duration / 1000 * memory_mb / 1024 * PER_GB_S + PER_REQUEST
    return round(duration, 1), round(cost * 1e6, 2)


def configuration() -> dict[str, Any]:
    """What the figures were measured on: the commit, the runtime, the layers' sizes."""
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    template = load_template(BUILD / "template.yaml")
    return {"commit": commit, "python": platform.python_version(),
            "runtime": template["Globals"]["Function"]["Runtime"],
            "layers_mb": {p.name: round(tree_bytes(p) / 2**20, 1) for p in sorted(BUILD.iterdir())
                          if p.name.endswith("Layer")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per function")
    parser.add_argument("--warm", type=int, default=5, help="warm requests per process after the first")
    parser.add_argument("--opensearch-url", default=os.environ.get("OPENSEARCH_URL"),
                        help="the stack's search domain: a real node (`make opensearch` starts one on :9200)")
    args = parser.parse_args()
    if not args.opensearch_url:
        sys.exit("needs an OpenSearch node, the stack's search backend: `make opensearch`, then "
                 "--opensearch-url http://127.0.0.1:9200")
    if not (BUILD / "template.yaml").is_file() or not LAMBDA_RUNTIME.is_dir():
        sys.exit("needs the `sam build` output: run `make sam-build` first")
    previous = RESULTS / "cold_start.json"
    if previous.exists():
        before = json.loads(previous.read_text())
        print("previous run:", json.dumps(before["configuration"]))
        for name, row in before["functions"].items():
            print(f"  {name}: {row['first_answer_ms']} ms (import {row['import_ms']}), {row['peak_rss_mb']} MB")

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    from tests.conftest import FIXTURES, free_port

    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lookalike-cold-") as tmp:
        work = Path(tmp)
        aws = StrictAws(free_port(), work / "moto.log")
        domain = SignedDomainProxy(args.opensearch_url, DomainGate(DOMAIN))
        try:
            names = stack_resources(aws, domain.url)
            # A collection with an item, and a catalog object for the ingest event.
            warm = functions(aws, names, work, domain.gate)
            try:
                warm["TaxonomyFunction"].invoke("taxonomy_create_collection")
                warm["UploadFunction"].invoke("upload_put_item")
            finally:
                for fn in warm.values():
                    fn.close()
            shoe = sorted((FIXTURES / "images" / "shoes").iterdir())[1]
            aws.client("s3").put_object(Bucket=names["CatalogBucket"], Key="demo/clothing/shoe-2.jpg",
                                        Body=shoe.read_bytes())
            record = s3_record("ObjectCreated:Put", "demo/clothing/shoe-2.jpg")
            record["s3"]["bucket"] = {"name": names["CatalogBucket"]}
            events: dict[str, Any] = {**FIRST_EVENT, "IngestFunction": sqs_event(record)}
            samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in FIRST_EVENT}
            warm_samples: dict[str, list[tuple[float, float]]] = {name: [] for name in FIRST_EVENT}
            for _ in range(args.runs):
                for name, event in events.items():
                    fn = functions(aws, names, work, domain.gate, only=name)[name]
                    try:
                        result = fn.invoke(event)
                        answered = time.perf_counter()
                        status = result.get("statusCode", 200)
                        assert status < 300 and not result.get("batchItemFailures"), (name, result)
                        samples[name].append(((answered - fn.started) * 1000, fn.last["init_ms"],
                                              fn.last["max_rss_mb"]))
                        for _ in range(args.warm):
                            began = time.perf_counter()
                            fn.invoke(event)
                            warm_samples[name].append(((time.perf_counter() - began) * 1000, fn.last["cpu_ms"]))
                    finally:
                        fn.close()
        finally:
            domain.stop()
            aws.close()
    for name, runs in samples.items():
        total, imports, rss = (statistics.median(x) for x in zip(*runs, strict=True))
        rows[name] = {"event": FIRST_EVENT[name], "first_answer_ms": round(total), "import_ms": round(imports),
                      "first_request_ms": round(total - imports), "peak_rss_mb": round(rss),
                      "max_first_answer_ms": round(max(r[0] for r in runs)), "goal_ms": GOAL_MS.get(name)}
        wall, cpu = (statistics.median(x) for x in zip(*warm_samples[name], strict=True))
        rows[name]["warm_ms"], rows[name]["warm_cpu_ms"] = round(wall, 1), round(cpu, 1)
        rows[name]["at_memory"] = {str(m): dict(zip(("ms", "usd_per_million"), at_memory(wall, cpu, m),
                                                    strict=True)) for m in MEMORY_MB}
    report = {"benchmark": "cold_start", "runs": args.runs, "configuration": configuration(), "functions": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(report, indent=2))
    print(f"\nthis run: {json.dumps(report['configuration'])}")
    print(f"| function (median of {args.runs}) | event | first answer ms | import ms | first request ms "
          "| peak RSS MB | goal ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['event']} | {r['first_answer_ms']} | {r['import_ms']} | {r['first_request_ms']} "
              f"| {r['peak_rss_mb']} | {r['goal_ms'] or '-'} |")
    print("\n| function: warm request, ms (CPU ms) | " + " | ".join(f"{m} MB: ms, $/1M" for m in MEMORY_MB) + " |")
    print("|---|" + "---:|" * len(MEMORY_MB))
    for name, r in rows.items():
        cells = " | ".join(f"{r['at_memory'][str(m)]['ms']}, {r['at_memory'][str(m)]['usd_per_million']}"
                           for m in MEMORY_MB)
        print(f"| {name}: {r['warm_ms']} ({r['warm_cpu_ms']}) | {cells} |")


if __name__ == "__main__":
    main()

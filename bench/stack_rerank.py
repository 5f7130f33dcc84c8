"""What re-ranking adds to a search by photo on the stack, measured in the Lambda stand-in.

    make sam-build && make opensearch
    .venv/bin/python bench/stack_rerank.py --opensearch-url http://127.0.0.1:9200 [--items 60] [--queries 30]

The built functions run as ``tests/e2e/test_sam_build.py`` runs them (own /tmp, roles enforced
by moto, the real OpenSearch node behind the domain's SigV4 check). reverse_search carries no
OpenCV: with ``rerank`` it invokes the rerank function (its own process here, as on Lambda),
which reads each candidate's features from the bucket, or computes and stores them the first
time. Reported: p50/p95 of the whole warm invocation of reverse_search, plain and re-ranked,
interleaved query by query, and the first re-ranked search apart (the rerank function's cold
start and its candidates' features computed), and the rerank function's own CPU time (the rest
of what it adds is waiting: the invocation and 50 S3 reads, here from moto's server with IAM
enforced, in one Python process on the same cores). Writes bench/results/stack_rerank.json.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from PIL import Image  # noqa: E402

from lookalike.gateway import Gateway  # noqa: E402
from tests.conftest import FIXTURES, free_port  # noqa: E402
from tests.e2e.lambda_stand_in import DOMAIN, api_event, functions, multipart, stack_resources  # noqa: E402
from tests.e2e.strict_aws import DomainGate, InvokeEndpoint, InvokeGate, SignedDomainProxy, StrictAws  # noqa: E402


def _edited(photo: Path, out: Path) -> Path:
    """A shopper's copy: turned 15 degrees, cropped to 80 %, re-encoded."""
    img = Image.open(photo).convert("RGB").rotate(15, expand=True, fillcolor=(255, 255, 255))
    w, h = img.size
    buf = io.BytesIO()
    img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(buf, format="JPEG", quality=80)
    out.write_bytes(buf.getvalue())
    return out


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1), "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opensearch-url", default=os.environ.get("OPENSEARCH_URL"))
    parser.add_argument("--items", type=int, default=60, help="catalog photos (tests/fixtures and ../shared/data)")
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    if not args.opensearch_url:
        sys.exit("needs an OpenSearch node: `make opensearch`, then --opensearch-url http://127.0.0.1:9200")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    shared = ROOT.parent / "shared" / "data" / "clothing" / "train"
    photos = sorted(FIXTURES.joinpath("images").rglob("*.jpg"))
    if shared.is_dir():
        photos += sorted(shared.rglob("*.jpg"))
    photos = photos[: args.items]
    gw = Gateway(ROOT / "template.yaml")
    with tempfile.TemporaryDirectory(prefix="lookalike-rerank-") as tmp:
        work = Path(tmp)
        aws = StrictAws(free_port(), work / "moto.log")
        domain = SignedDomainProxy(args.opensearch_url, DomainGate(DOMAIN))
        invoke = InvokeEndpoint(InvokeGate(domain.gate.sessions))
        names = stack_resources(aws, domain.url)
        fns = functions(aws, names, work, domain.gate, invoke=invoke)
        try:
            assert fns["TaxonomyFunction"].invoke("taxonomy_create_collection")["statusCode"] == 201
            for n, photo in enumerate(photos):
                put = api_event(gw, "PUT", f"/v1/collections/clothing/items/p{n}", form=multipart({}, {"image": photo}))
                assert fns["UploadFunction"].invoke(put)["statusCode"] == 200
            search = fns["ReverseSearchFunction"]

            def timed(query: Path, rerank: str) -> tuple[float, dict[str, Any]]:
                event = api_event(gw, "POST", "/v1/collections/clothing/search",
                                  form=multipart({"rerank": rerank, "limit": "10"}, {"image": query}))
                began = time.perf_counter()
                result = search.invoke(event)
                elapsed = (time.perf_counter() - began) * 1000
                assert result["statusCode"] == 200, result["body"]
                return elapsed, json.loads(result["body"])

            # The first re-ranked search starts the rerank function and computes (and stores) the
            # features of its candidates; reported apart.
            first, _ = timed(_edited(photos[0], work / "warm.jpg"), "true")
            plain: list[float] = []
            reranked: list[float] = []
            rerank_cpu: list[float] = []  # the rerank function's own CPU time (matching, decoding)
            found = 0
            for n in range(args.queries):
                query = _edited(photos[n % len(photos)], work / f"q{n}.jpg")
                plain.append(timed(query, "false")[0])
                elapsed, body = timed(query, "true")
                reranked.append(elapsed)
                rerank_cpu.append(fns["RerankFunction"].last["cpu_ms"])
                found += body["hits"][0]["id"] == f"p{n % len(photos)}"
        finally:
            for fn in fns.values():
                fn.close()
            invoke.stop()
            domain.stop()
            aws.close()
    out = {"items": len(photos), "queries": args.queries, "plain": _ms(plain), "reranked": _ms(reranked),
           "added_p50_ms": round(statistics.median(reranked) - statistics.median(plain), 1),
           "rerank_function_cpu_p50_ms": round(statistics.median(rerank_cpu), 1),
           "first_reranked_search_ms": round(first, 1),
           "edited_copy_first_when_reranked": round(found / args.queries, 3)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stack_rerank.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

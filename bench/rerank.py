"""Geometric re-ranking: near-duplicate recall with and without it, what it costs.

    .venv/bin/python bench/rerank.py [--dup-sample 300] [--queries 341]

The 3,068 clothing train photos are ingested into the embedded default through the service
(so each gets its stored local features, as every ingest path does). Then, through
``TenantService.search`` with and without ``rerank``:
- near-duplicate recall@1 of catalog photos edited as shoppers' photos and marketplace
  listings are (each re-encoded as JPEG): half the photo's area cropped off centre, a quarter
  of it, a 20 degree turn, a 15 degree turn of an 80 % crop, a listing (the photo padded on a
  wider canvas under a price banner, JPEG 50), a forwarded photo (a quarter of the size,
  darker, JPEG 30);
- class precision@10 of the 341 validation photos (other products, so re-ranking must not
  promote them);
- the latency re-ranking adds to a search (the query's features and 20 verifications), p50
  and p99, one thread; and the ingest-side extraction per catalog photo.
Writes bench/results/rerank.json and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import DATA, RESULTS, bench_tenant, percentile

TRANSFORMS = ("crop_half_area", "crop_quarter_area", "rotate20", "rotate15_crop80", "listing", "forwarded")


def jpeg(img: Image.Image, quality: int = 60) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def edit(img: Image.Image, kind: str, rng: random.Random) -> bytes:
    w, h = img.size
    if kind in ("crop_half_area", "crop_quarter_area"):
        side = 0.707 if kind == "crop_half_area" else 0.5
        cw, ch = round(w * side), round(h * side)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return jpeg(img.crop((x, y, x + cw, y + ch)))
    if kind == "rotate20":
        return jpeg(img.rotate(20, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)))
    if kind == "rotate15_crop80":
        turned = img.rotate(15, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(255, 255, 255))
        return jpeg(turned.crop((round(w * 0.1), round(h * 0.1), round(w * 0.9), round(h * 0.9))))
    if kind == "listing":
        canvas = Image.new("RGB", (round(w * 1.5), round(h * 1.3)), (255, 255, 255))
        canvas.paste(img, (round(w * 0.25), round(h * 0.25)))
        draw = ImageDraw.Draw(canvas)
        draw.rectangle((0, 0, canvas.width, round(h * 0.2)), fill=(200, 30, 30))
        draw.text((10, 10), "SALE -30%  free shipping", fill=(255, 255, 255))
        return jpeg(canvas, 50)
    small = img.resize((max(1, w // 4), max(1, h // 4)), Image.Resampling.BILINEAR)
    return jpeg(ImageEnhance.Brightness(small).enhance(0.8), 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dup-sample", type=int, default=300)
    parser.add_argument("--queries", type=int, default=341)
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")
    _, tenant = bench_tenant("lookalike-rerank-")
    from lookalike import geometry
    from lookalike.service import ImageRef
    catalog = sorted((DATA / "train").rglob("*.jpg"))
    tenant.create_collection("catalog")
    started = time.perf_counter()
    report = tenant.put_items("catalog", ((p.stem, p.read_bytes(), {"category": p.parent.name}) for p in catalog))
    ingest_s = time.perf_counter() - started
    assert not report.failed, report.failed[:3]
    sample = [catalog[i] for i in random.Random(0).sample(range(len(catalog)), args.dup_sample)]
    photos = [Image.open(p).convert("RGB") for p in sample[:50]]
    t = time.perf_counter()
    for img in photos:
        geometry.extract(img)
    extract_ms = (time.perf_counter() - t) / len(photos) * 1000

    def top(data: bytes, rerank: bool, limit: int = 10) -> tuple[list[str], float]:
        t = time.perf_counter()
        page = tenant.search("catalog", ImageRef(data=data), limit=limit, rerank=rerank)
        return [h.id for h in page.hits], (time.perf_counter() - t) * 1000

    rows = []
    added: list[float] = []
    rng = random.Random(1)
    for kind in TRANSFORMS:
        hits = {False: 0, True: 0}
        for path in sample:
            data = edit(Image.open(path).convert("RGB"), kind, rng)
            ids_plain, ms_plain = top(data, False)
            ids_rerank, ms_rerank = top(data, True)
            hits[False] += ids_plain[:1] == [path.stem]
            hits[True] += ids_rerank[:1] == [path.stem]
            added.append(ms_rerank - ms_plain)
        rows.append({"transform": kind, "recall_at_1": round(hits[False] / len(sample), 3),
                     "recall_at_1_reranked": round(hits[True] / len(sample), 3)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    validation = sorted((DATA / "validation").rglob("*.jpg"))[: args.queries]
    classes = {p.stem: p.parent.name for p in catalog}
    precision = {False: [], True: []}
    for q in validation:
        for rerank in (False, True):
            ids, _ = top(q.read_bytes(), rerank)
            precision[rerank].append(sum(classes[i] == q.parent.name for i in ids) / len(ids))
    result = {"benchmark": "rerank", "catalog": len(catalog), "dup_sample": len(sample),
              "ingest_images_per_s": round(len(catalog) / ingest_s, 1), "extract_ms": round(extract_ms, 1),
              "precision_at_10": round(float(np.mean(precision[False])), 4),
              "precision_at_10_reranked": round(float(np.mean(precision[True])), 4),
              "added_p50_ms": round(percentile(added, 50), 1), "added_p99_ms": round(percentile(added, 99), 1),
              "transforms": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rerank.json").write_text(json.dumps(result, indent=2))
    print(f"| transform ({len(sample)} catalog photos) | recall@1 | recall@1, re-ranked |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['transform']} | {r['recall_at_1']} | {r['recall_at_1_reranked']} |")
    print(f"\nprecision@10 (validation): {result['precision_at_10']} plain, {result['precision_at_10_reranked']} "
          f"re-ranked; added latency p50 {result['added_p50_ms']} ms, p99 {result['added_p99_ms']} ms; "
          f"features {result['extract_ms']} ms a catalog photo; ingest {result['ingest_images_per_s']} images/s")


if __name__ == "__main__":
    main()

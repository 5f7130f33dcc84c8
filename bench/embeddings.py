"""Retrieval quality and speed of the default image embedder on real photos.

    .venv/bin/python bench/embeddings.py [--dup-sample 300] [--option key=value ...]

On ../shared/data/clothing (3,068 train photos as the catalog, 341 validation photos as
queries) it reports:
- class precision@10 and @1 of the validation queries against the catalog;
- near-duplicate recall@1 of transformed catalog photos (70 % center crop, 12 degree
  rotation, brightness x1.3 + saturation x0.6, mirror + 1/3 downscale; each re-encoded as
  JPEG quality 35) among the whole catalog, and of the harder shoppers' and listings' edits
  of ``bench/rerank.py`` (off-centre crops to half and a quarter of the area, a 20 degree
  turn, a turned crop, a listing banner, a forwarded photo), which reports them with
  geometric re-ranking too;
- the same at the 512- and 1024-d projections (the PixLab dimensions);
- the text model's ms per caption, one at a time and batched;
- ms per image on one thread (batch of 1, preprocessing included) and batched on all cores,
  model load time, peak RSS once the model is loaded (and at the end, with every photo of
  the benchmark decoded in memory).
Embedder options (``--option image_size=256``) go to the embedder as tenant config would.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clothing"
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))
from rerank import TRANSFORMS as HARD_TRANSFORMS  # noqa: E402 - the script's sibling
from rerank import edit  # noqa: E402

TRANSFORMS = ("crop70", "rotate12", "recolor", "mirror_down3", *HARD_TRANSFORMS)


def decode(data: bytes) -> Image.Image:
    from lookalike.images import decode as intake

    return intake(data, max_bytes=50 * 1024 * 1024, max_pixels=100_000_000).image


def jpeg35(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=35)
    return buf.getvalue()


def transformed(img: Image.Image, rng: random.Random) -> list[bytes]:
    w, h = img.size
    crop = img.crop((round(w * 0.15), round(h * 0.15), round(w * 0.85), round(h * 0.85)))
    rotate = img.rotate(12, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    recolor = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.3)).enhance(0.6)
    mirror = ImageOps.mirror(img).resize((max(1, w // 3), max(1, h // 3)), Image.Resampling.BILINEAR)
    return [*(jpeg35(x) for x in (crop, rotate, recolor, mirror)), *(edit(img, kind, rng) for kind in HARD_TRANSFORMS)]


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def quality(catalog: np.ndarray, queries: np.ndarray, dups: np.ndarray, cat_cls: np.ndarray, q_cls: np.ndarray,
            dup_src: np.ndarray) -> dict[str, Any]:
    catalog, queries, dups = l2(catalog), l2(queries), l2(dups)
    top = np.argsort(-(queries @ catalog.T), axis=1)[:, :10]
    best = (dups @ catalog.T).argmax(axis=1)
    n = len(TRANSFORMS)
    return {
        "precision@10": round(float((cat_cls[top] == q_cls[:, None]).mean()), 3),
        "precision@1": round(float((cat_cls[top[:, 0]] == q_cls).mean()), 3),
        "near_dup_recall@1": {t: round(float((best[i::n] == dup_src).mean()), 3) for i, t in enumerate(TRANSFORMS)},
    }


def text_speed() -> dict[str, float]:
    """ms per caption for the text model, one at a time on one thread and batched."""
    from lookalike_local.minilm import MiniLM, MiniLMOptions

    t0 = time.perf_counter()
    single = MiniLM(MiniLMOptions(threads=1, batch_size=1))
    single.embed_texts(["warm-up"])  # the model loads on first use
    load_s = time.perf_counter() - t0
    batched = MiniLM(MiniLMOptions(threads=0))
    colours = ["red", "navy", "white", "black", "olive", "beige"]
    kinds = ["cotton t-shirt", "wool winter hat", "leather ankle boots", "denim skirt", "linen summer dress"]
    captions = [f"a {c} {k} photographed on a plain background, item {n}"
                for n, (c, k) in enumerate((c, k) for c in colours for k in kinds for _ in range(10))]
    single.embed_texts(captions[:5])
    t0 = time.perf_counter()
    for caption in captions:
        single.embed_texts([caption])
    one = (time.perf_counter() - t0) * 1000 / len(captions)
    t0 = time.perf_counter()
    batched.embed_texts(captions)
    many = (time.perf_counter() - t0) * 1000 / len(captions)
    return {"captions": len(captions), "ms_per_text_1_thread": round(one, 2), "ms_per_text_batched": round(many, 2),
            "model_load_s": round(load_s, 2)}


def parse_options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dup-sample", type=int, default=300, help="catalog photos to transform (x10 queries)")
    parser.add_argument("--option", action="append", default=[], help="embedder option key=value")
    parser.add_argument("--timing-images", type=int, default=200)
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")
    from lookalike_local.efficientnet import EfficientNetLite0, EfficientNetOptions

    options = parse_options(args.option)
    train = sorted((DATA / "train").rglob("*.jpg"))
    val = sorted((DATA / "validation").rglob("*.jpg"))
    random.seed(0)
    dup_src = np.array(sorted(random.sample(range(len(train)), args.dup_sample)))

    t0 = time.perf_counter()
    single = EfficientNetLite0(EfficientNetOptions(**{**options, "threads": 1, "batch_size": 1}))
    single.embed_images([Image.new("RGB", (64, 64))])  # the session loads on first use
    load_s = time.perf_counter() - t0
    batched = EfficientNetLite0(EfficientNetOptions(**{**options, "threads": 0}))
    batched.embed_images([Image.new("RGB", (64, 64))])
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    train_imgs = [decode(p.read_bytes()) for p in train]
    val_imgs = [decode(p.read_bytes()) for p in val]
    rng = random.Random(1)
    dup_imgs = [decode(b) for i in dup_src for b in transformed(train_imgs[i], rng)]

    timing = train_imgs[: args.timing_images]
    single.embed_images(timing[:5])  # warm-up
    t0 = time.perf_counter()
    for img in timing:
        single.embed_images([img])
    ms_single = (time.perf_counter() - t0) * 1000 / len(timing)
    t0 = time.perf_counter()
    catalog = batched.embed_images(train_imgs)
    ms_batched = (time.perf_counter() - t0) * 1000 / len(train_imgs)
    queries = batched.embed_images(val_imgs)
    dups = batched.embed_images(dup_imgs)
    cat_cls = np.array([p.parent.name for p in train])
    q_cls = np.array([p.parent.name for p in val])

    report: dict[str, Any] = {
        "benchmark": "embeddings", "model_id": batched.model_id, "dimension": batched.dimension,
        "options": options, "cores": os.cpu_count(),
        "catalog": len(train), "queries": len(val), "near_dup_queries": len(dup_imgs),
        "native": quality(catalog, queries, dups, cat_cls, q_cls, dup_src),
        "ms_per_image_1_thread": round(ms_single, 2), "ms_per_image_batched": round(ms_batched, 2),
        "model_load_s": round(load_s, 2),
        "peak_rss_mb_model_loaded": round(rss_after_load, 1),
        "peak_rss_mb_with_all_photos_in_memory": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    for dim in (1024, 512):
        projected = EfficientNetLite0(EfficientNetOptions(**{**options, "threads": 0, "dimension": dim}))
        p = projected.project
        report[f"projected_{dim}"] = quality(p(catalog, dim), p(queries, dim), p(dups, dim), cat_cls, q_cls,
                                             dup_src)
    report["text_all-minilm-l6-v2"] = text_speed()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embeddings.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

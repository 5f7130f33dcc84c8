"""ORB against RootSIFT for the re-ranking's local features: the measurement behind the choice.

    .venv/bin/python bench/rerank_features.py [--sample 150]

Catalog photos (../shared/data/clothing/train) cropped to half of each side off centre or
turned 20 degrees are searched by the default model over the whole catalog (exact, in
process); the 20 best are verified with each kind of feature (500 keypoints at a 512 px
side, ratio test, RANSAC similarity fit) and the one with the most inliers is promoted by
the same rule as ``lookalike.geometry.verified``. Reports recall@1 before and after, the
extraction time per photo and the matching time per query, one thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import DATA, bench_tenant, catalog_vectors, percentile


def extractor(kind: str):  # type: ignore[no-untyped-def]
    import cv2

    cv2.setNumThreads(1)
    detector = cv2.ORB_create(nfeatures=500, fastThreshold=10) if kind == "orb" else cv2.SIFT_create(nfeatures=500)

    def extract(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        gray = np.asarray(img.convert("L"))
        scale = 512 / max(gray.shape)
        gray = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        keypoints, desc = detector.detectAndCompute(gray, None)
        if desc is not None and kind == "rootsift":
            desc = np.sqrt(desc / (desc.sum(1, keepdims=True) + 1e-7)).astype(np.float32)
        return np.float32([k.pt for k in keypoints]), desc

    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if kind == "orb" else cv2.NORM_L2)

    def inliers(a: tuple, b: tuple) -> int:
        (pa, da), (pb, db) = a, b
        if da is None or db is None or len(da) < 5 or len(db) < 5:
            return 0
        good = [p[0] for p in matcher.knnMatch(da, db, k=2) if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
        if len(good) < 6:
            return 0
        _, mask = cv2.estimateAffinePartial2D(pa[[g.queryIdx for g in good]], pb[[g.trainIdx for g in good]],
                                              method=cv2.RANSAC, ransacReprojThreshold=5.0)
        return int(mask.sum()) if mask is not None else 0

    return extract, inliers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=150)
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"benchmark photos not found at {DATA}")
    from lookalike import geometry

    home, tenant = bench_tenant("lookalike-features-")
    _, vectors, _ = catalog_vectors(home)
    paths = sorted((DATA / "train").rglob("*.jpg"))
    rng = random.Random(0)
    sample = rng.sample(range(len(paths)), args.sample)

    def crop(img: Image.Image) -> Image.Image:
        w, h = img.size
        x, y = rng.randint(0, w - w // 2), rng.randint(0, h - h // 2)
        return img.crop((x, y, x + w // 2, y + h // 2))

    def turn(img: Image.Image) -> Image.Image:
        return img.rotate(20, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))

    print("| features | edit | recall@1 plain | re-ranked | extract ms | match ms (20) |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in ("orb", "rootsift"):
        extract, inliers = extractor(kind)
        catalog: dict[int, tuple] = {}
        for edit_name, edit in (("crop half side", crop), ("turn 20", turn)):
            queries = [edit(Image.open(paths[i]).convert("RGB")) for i in sample]
            qv = tenant.embedder.embed_images(queries)
            plain = reranked = 0
            extract_ms, match_ms = [], []
            for i, img, v in zip(sample, queries, qv, strict=True):
                top = np.argsort(-(vectors @ v))[:20]
                plain += top[0] == i
                t = time.perf_counter()
                q = extract(img)
                extract_ms.append((time.perf_counter() - t) * 1000)
                for c in top:
                    if c not in catalog:
                        catalog[c] = extract(Image.open(paths[c]).convert("RGB"))
                t = time.perf_counter()
                counts = [inliers(q, catalog[c]) for c in top]
                match_ms.append((time.perf_counter() - t) * 1000)
                best = geometry.verified(counts)
                reranked += (top[best[0]] if best else top[0]) == i
            print(f"| {kind} | {edit_name} | {plain / len(sample):.3f} | {reranked / len(sample):.3f} | "
                  f"{percentile(extract_ms, 50):.1f} | {percentile(match_ms, 50):.1f} |")


if __name__ == "__main__":
    main()

"""Benchmark vectors shaped like a catalog's, at any size, from the real model's vectors of the
3,068 clothing photos (issue 28).

The earlier benchmarks copied each real vector about 326 times with a little noise, so every
query had hundreds of near-equal neighbours: no catalog looks like that. Here the real vectors
are modelled instead: a mixture of Gaussians in their principal subspace (k-means clusters,
each with its own spread along the 256 main directions), plus isotropic noise for the rest of
the variance, re-normalised. One spread factor is calibrated so that 3,068 drawn vectors have
the same median nearest-neighbour cosine as the 3,068 real ones; ``neighbour_cosines`` shows
the whole distribution beside the real one, at every size.

Run it to print that comparison:  .venv/bin/python bench/catalog_data.py --sizes 20000 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clothing"
RESULTS = ROOT / "bench" / "results"
COMPONENTS = 256
CLUSTERS = 32
# Each draw's own spread, log-normal around the calibrated one: real catalogs hold tight groups
# (a product shot twice) and loners, which one spread for all draws leaves out.
HETEROGENEITY = 0.22
SEED = 20261203


def real_vectors(split: str = "train", limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The default image model's vectors of the clothing photos of ``split`` (cached), and their classes."""
    sys.path.insert(0, str(ROOT / "bench"))
    from search_latency import catalog_vectors  # the cache the other benchmarks share

    home = Path(tempfile.mkdtemp(prefix="lookalike-vectors-"))
    (home / "config.yaml").write_text("tenants: {bench: {}}\n")
    if split == "train":
        _, vectors, classes = catalog_vectors(home)
        return vectors.astype(np.float32), classes
    cache = RESULTS / f"{split}_vectors.npz"
    paths = sorted((DATA / split).rglob("*.jpg"))[:limit]
    from lookalike.config import Settings
    from lookalike.process import Lookalike

    tenant = Lookalike(Settings(home=home)).tenant("bench")
    if cache.exists():
        saved = np.load(cache)
        if len(saved["vectors"]) == len(paths) and str(saved["model_id"]) == tenant.embedder.model_id:
            return saved["vectors"], [p.parent.name for p in paths]
    vectors = tenant.embedder.embed_images([tenant.decode(p.read_bytes()).image for p in paths])
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, model_id=np.array(tenant.embedder.model_id))
    return vectors.astype(np.float32), [p.parent.name for p in paths]


class CatalogModel:
    """A Gaussian mixture over the real vectors' principal subspace, plus isotropic residual noise."""

    def __init__(self, real: np.ndarray, spread: float = 1.0) -> None:
        import faiss

        self.mean = real.mean(0)
        centred = real - self.mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        self.basis = vt[:COMPONENTS]  # (C, d)
        coords = centred @ self.basis.T
        kmeans = faiss.Kmeans(COMPONENTS, CLUSTERS, niter=25, seed=SEED, verbose=False)
        kmeans.train(np.ascontiguousarray(coords, dtype=np.float32))
        _, label = kmeans.index.search(np.ascontiguousarray(coords, dtype=np.float32), 1)
        label = label[:, 0]
        self.weights = np.bincount(label, minlength=CLUSTERS) / len(label)
        self.centres = np.stack([coords[label == k].mean(0) if (label == k).any() else kmeans.centroids[k]
                                 for k in range(CLUSTERS)])
        self.stds = np.stack([coords[label == k].std(0) if (label == k).sum() > 1 else coords.std(0)
                              for k in range(CLUSTERS)])
        total = float((singular ** 2).sum())
        kept = float((singular[:COMPONENTS] ** 2).sum())
        self.residual = np.sqrt(max(total - kept, 0.0) / len(real) / real.shape[1])
        self.spread = spread

    def sample(self, n: int, seed: int = SEED) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.mean.shape[0]), dtype=np.float32)
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            k = rng.choice(CLUSTERS, size=m, p=self.weights)
            spread = self.spread * np.exp(HETEROGENEITY * rng.standard_normal((m, 1)))
            coords = self.centres[k] + spread * self.stds[k] * rng.standard_normal((m, COMPONENTS))
            x = self.mean + coords @ self.basis
            x += spread * self.residual * rng.standard_normal(x.shape)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def neighbour_cosines(base: np.ndarray) -> np.ndarray:
    """Each vector's nearest-neighbour cosine within ``base`` (itself excluded)."""
    return _own_neighbours(base, len(base))


def calibrated(real: np.ndarray) -> CatalogModel:
    """The model whose 3,068 draws have the real vectors' median nearest-neighbour cosine."""
    target = float(np.median(neighbour_cosines(real)))
    low, high = 0.3, 1.5
    model = CatalogModel(real)
    for _ in range(12):
        model.spread = (low + high) / 2
        median = float(np.median(neighbour_cosines(model.sample(len(real), seed=SEED + 1))))
        if median > target:  # too tight: spread more
            low = model.spread
        else:
            high = model.spread
    return model


def catalog(n: int, real: np.ndarray | None = None, cache: bool = True) -> np.ndarray:
    """``n`` catalog-shaped unit vectors (the same for the same ``n`` and model: cached)."""
    path = RESULTS / f"catalog_like_{n}.npy"
    if cache and path.exists():
        return np.load(path, mmap_mode="r")
    if real is None:
        real, _ = real_vectors()
    vectors = calibrated(real).sample(n)
    if cache:
        RESULTS.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def distribution(values: np.ndarray) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(values, p)), 3) for p in (1, 10, 50, 90, 99)} | {
        "share_over_0.95": round(float((values > 0.95).mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--probes", type=int, default=2000, help="vectors whose nearest neighbour is measured")
    args = parser.parse_args()
    real, _ = real_vectors()
    rows = {"real 3,068 (train photos)": distribution(neighbour_cosines(real))}
    model = calibrated(real)
    rows["drawn 3,068"] = distribution(neighbour_cosines(model.sample(len(real), seed=SEED + 1)))
    for n in args.sizes:
        base = np.asarray(catalog(n, real))
        rows[f"drawn {n:,}"] = distribution(_own_neighbours(base, args.probes))
    rng = np.random.default_rng(0)
    for n in args.sizes:  # the old benchmark data: the real vectors copied with jitter (bench/search_latency.py)
        copies = real[np.arange(n) % len(real)] + rng.normal(scale=0.02, size=(n, real.shape[1])).astype(np.float32)
        copies[: len(real)] = real
        copies /= np.linalg.norm(copies, axis=1, keepdims=True)
        rows[f"jittered copies {n:,} (before)"] = distribution(_own_neighbours(copies, args.probes))
    print(f"| vectors | {' | '.join(rows[next(iter(rows))])} |")
    print("|---|" + "---:|" * len(rows[next(iter(rows))]))
    for name, row in rows.items():
        print(f"| {name} | {' | '.join(str(v) for v in row.values())} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "catalog_data.json").write_text(json.dumps({"spread": model.spread, "rows": rows}, indent=2))


def _own_neighbours(base: np.ndarray, probes: int) -> np.ndarray:
    """Nearest-neighbour cosines of ``probes`` evenly spaced members of ``base`` within it."""
    picked = np.linspace(0, len(base) - 1, min(probes, len(base))).astype(int)
    q = np.ascontiguousarray(base[picked])
    best = np.full(len(q), -2.0, dtype=np.float32)
    for start in range(0, len(base), 100_000):
        s = q @ np.asarray(base[start:start + 100_000]).T
        mine = (picked >= start) & (picked < start + s.shape[1])
        s[np.nonzero(mine)[0], picked[mine] - start] = -2.0
        best = np.maximum(best, s.max(1))
    return best


if __name__ == "__main__":
    main()

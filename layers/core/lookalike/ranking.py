"""Ordering shared by every backend that ranks in-process, and rank fusion: score desc, then
id asc.

The id tie-break makes offset paging stable: the same query over the same collection
always yields the same order, even when scores tie exactly (duplicates do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from lookalike.contracts import Hit, SearchPage

RRF_K = 60  # reciprocal-rank fusion constant (Cormack, Clarke and Buettcher, SIGIR 2009)


def top_k(
    scores: np.ndarray,
    k: int,
    id_of: Callable[[int], str],
    candidates: np.ndarray | None = None,
) -> tuple[list[int], int]:
    """Return (indices into ``scores`` of the best ``k``, in order; number of candidates)."""
    pool = np.arange(scores.shape[0]) if candidates is None else candidates
    total = int(pool.shape[0])
    if total == 0 or k <= 0:
        return [], total
    sub = scores[pool]
    if k < total:
        # Everything scoring at least the k-th best, ties included, then an exact sort.
        threshold = -np.partition(-sub, k - 1)[k - 1]
        pool = pool[sub >= threshold]
    order = sorted(pool.tolist(), key=lambda r: (-float(scores[r]), id_of(r)))
    return order[:k], total


def fuse(rankings: Sequence[Sequence[Hit]], limit: int, offset: int = 0) -> SearchPage:
    """Reciprocal-rank fusion of ``rankings``: each hit scores the sum of 1 / (RRF_K + rank) over
    the rankings that hold it (rank from 1), ties by id; the page ``offset:offset + limit`` of
    the fused order, each hit with its fused score, and how many hits were fused."""
    fused: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(hit.id, hit)
    order = sorted(fused, key=lambda i: (-fused[i], i))
    return SearchPage(hits=[replace(first[i], score=round(fused[i], 6)) for i in order[offset:offset + limit]],
                      total=len(order))

"""Ordering shared by every backend that ranks in-process: score desc, then id asc.

The id tie-break makes offset paging stable: the same query over the same collection
always yields the same order, even when scores tie exactly (duplicates do).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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

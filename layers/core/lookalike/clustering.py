"""Group ranked hits into clusters of near-identical images (the Visual Layer threshold).

Greedy and order-preserving: walking the hits best-first, each hit joins the first cluster
whose leader (its best-ranked member) is within the cut-off cosine distance of it, else it
starts a new cluster. So clusters come out in the order of their best member, and the same
ranked hits always give the same clusters.

Hits verified as near-duplicates of the query (``Hit.exact_match``, from a re-ranking search)
are copies of one photo whatever their cosines: they form one cluster at every threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lookalike.contracts import Hit

#: Cosine-distance cut-off between a member and its cluster's leader, by threshold 0-4.
#: 0 groups only (near-)exact copies; 4 groups visibly similar variants.
CUTOFFS = (0.01, 0.05, 0.10, 0.15, 0.25)


@dataclass
class Cluster:
    leader: Hit
    members: list[Hit] = field(default_factory=list)


def cluster(hits: Sequence[Hit], vectors: np.ndarray, threshold: int) -> list[Cluster]:
    """``vectors[i]`` is the L2-normalised vector of ``hits[i]``; hits are best-first."""
    if not 0 <= threshold < len(CUTOFFS):
        raise ValueError("threshold must be 0-4")
    cutoff = CUTOFFS[threshold]
    clusters: list[Cluster] = []
    leaders = np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
    verified: Cluster | None = None
    for hit, vector in zip(hits, vectors, strict=True):
        if hit.exact_match and verified is not None:
            verified.members.append(hit)
            continue
        if len(clusters) and not hit.exact_match:
            distances = 1.0 - leaders @ vector
            close = np.nonzero(distances <= cutoff)[0]
            if close.size:
                clusters[int(close[0])].members.append(hit)
                continue
        clusters.append(Cluster(leader=hit, members=[hit]))
        if hit.exact_match:
            verified = clusters[-1]
        leaders = np.vstack([leaders, vector[None, :]])
    return clusters

"""The retry delay every HTTP backend uses: exponential, with jitter so clients spread out."""

from __future__ import annotations

import random


def delay(base_seconds: float, attempt: int) -> float:
    """Seconds to wait before retry ``attempt + 1``: base * 2**attempt, scaled by 0.5-1.0."""
    return base_seconds * (2 ** attempt) * (0.5 + random.random() / 2)

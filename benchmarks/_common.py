"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def log(message: str) -> None:
    """Progress output, on standard error so tables on standard output stay clean."""
    print(message, file=sys.stderr, flush=True)

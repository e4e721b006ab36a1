"""Intervals for paired comparisons over seeds: the percentile bootstrap of the mean (benchmark protocol)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of the mean of ``values`` (one per seed).

    Seeds are resampled with replacement ``resamples`` times on a fixed RNG, so a report is reproducible;
    with one value the interval is undefined (NaN, NaN).
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(float(v))], dtype=np.float64)
    if x.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)

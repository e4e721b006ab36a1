"""Intervals for paired comparisons over seeds: the percentile bootstrap (benchmark protocol).

Seeds are the unit of resampling. :func:`bootstrap_interval` is the interval of a mean of per-seed values
(a paired ratio or difference); :func:`bootstrap_statistic` resamples seeds for any statistic computed from
them (e.g. the rollouts at which the seed-mean accuracy curve reaches a target), the same resample for
every arm so comparisons stay paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 10_000


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` rows of ``n`` seed indices drawn with replacement, on a fixed RNG."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


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
    means = x[_resamples(x.size, resamples, seed)].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_seeds: int,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of a statistic of the seeds.

    ``statistic(indices)`` takes a ``(resamples, n_seeds)`` array of seed indices (one resample per row,
    drawn as :func:`bootstrap_interval` draws them) and returns one value per row. A value may be ``inf``
    (e.g. a curve that never reaches its target in that resample): an end of the interval is then ``inf``
    once more than the tail's share of resamples are, which a report prints as "not reached". NaN
    resamples (undefined) are dropped; with fewer than 2 seeds or only NaNs, (NaN, NaN).
    """
    if n_seeds < 2:
        return math.nan, math.nan
    values = np.asarray(statistic(_resamples(n_seeds, resamples, seed)), dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail], method="lower")
    return float(lo), float(hi)

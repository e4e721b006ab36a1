"""Empirical-Bayes beliefs about success rates: a population prior fitted to every prompt's history.

A prompt's own history (at most a window of outcomes) says little, and an unseen prompt's nothing;
the population of prompts says much more: how many are hopeless, how many solved, where the rest lie.
:class:`PopulationPrior` fits that distribution on a fixed grid of success rates by EM (the
nonparametric maximum-likelihood estimate, no hand-set constant) and combines it with each prompt's
counts into a posterior over the grid. Expectations over the posterior turn any value function into
a knapsack table, and ``1 - p^n - (1-p)^n`` into the expected number of prompts with a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.values import ValueFunction, nonzero_gradient_probability

# 0 and 1 (hopeless and solved prompts exist) plus logit-spaced rates from 0.001 to 0.999: fine
# where it matters (p of 0.01-0.2 and 0.8-0.99, where a few more rollouts change a group's odds).
GRID = np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-np.linspace(-6.9, 6.9, 47))), [1.0]])
EM_ITERATIONS = 200
# The prior is fitted to this many most recently visited prompts: the ones nearest the current
# policy, at a cost that does not grow with the dataset.
RECENT_PROMPTS = 1024
# Mass spread evenly over the grid after the fit, so no rate is ever ruled out entirely.
SMOOTHING = 1e-3
# EMA counts are fractional: the fit groups prompts whose counts agree to this resolution.
COUNT_RESOLUTION = 0.1


def _log_likelihood(successes: np.ndarray, trials: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``s log p + (n - s) log(1 - p)`` per (prompt, grid point), with ``0 log 0 = 0``."""
    s = np.asarray(successes, dtype=np.float64)[:, None]
    f = np.asarray(trials, dtype=np.float64)[:, None] - s
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p, log_q = np.log(grid)[None, :], np.log1p(-grid)[None, :]
        out = np.where(s > 0, s * log_p, 0.0) + np.where(f > 0, f * log_q, 0.0)
    return out


def _normalise(log_weights: np.ndarray) -> np.ndarray:
    """Rows of ``exp(log_weights)`` scaled to sum to 1 (rows of all -inf are impossible by construction)."""
    top = log_weights.max(axis=1, keepdims=True)
    w = np.exp(log_weights - top)
    return w / w.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class PopulationPrior:
    """A distribution over success rates on ``grid``: what a prompt with no history is believed to be."""

    grid: np.ndarray
    weights: np.ndarray

    @classmethod
    def uniform(cls, grid: np.ndarray = GRID) -> PopulationPrior:
        """Every grid point equally likely: the prior before any outcome is seen."""
        return cls(grid, np.full(grid.size, 1.0 / grid.size))

    @classmethod
    def fit(
        cls,
        successes: np.ndarray,
        trials: np.ndarray,
        prompts: np.ndarray | None = None,
        grid: np.ndarray = GRID,
        iterations: int = EM_ITERATIONS,
    ) -> PopulationPrior:
        """EM for the mixing weights that make the prompts' counts most likely (NPMLE on the grid).

        ``prompts[j]`` is how many prompts share the counts ``(successes[j], trials[j])`` (default 1
        each). Counts are grouped to ``COUNT_RESOLUTION`` first, so the cost follows the distinct counts.
        A pure function of the counts (fixed start, fixed iterations), so every process and every resumed
        run gets the same prior. Prompts with no outcome are ignored.
        """
        s = np.asarray(successes, dtype=np.float64).reshape(-1)
        n = np.asarray(trials, dtype=np.float64).reshape(-1)
        c = np.ones(s.size) if prompts is None else np.asarray(prompts, dtype=np.float64).reshape(-1)
        seen = (n > 0) & (c > 0)
        if not seen.any():
            return cls.uniform(grid)
        pairs = np.round(np.stack([s[seen], n[seen]], axis=1) / COUNT_RESOLUTION) * COUNT_RESOLUTION
        unique, where = np.unique(pairs, axis=0, return_inverse=True)
        counts = np.bincount(where.reshape(-1), weights=c[seen])
        likelihood = _normalise(_log_likelihood(unique[:, 0], unique[:, 1], grid))
        share = counts / counts.sum()
        weights = np.full(grid.size, 1.0 / grid.size)
        for _ in range(int(iterations)):
            # EM for mixing weights: w_g <- w_g sum_j share_j L_jg / (L w)_j, two matrix-vector products.
            weights = weights * (likelihood.T @ (share / (likelihood @ weights)))
        weights = (1.0 - SMOOTHING) * weights + SMOOTHING / grid.size
        return cls(grid, weights / weights.sum())

    def posterior(
        self,
        successes: np.ndarray,
        trials: np.ndarray,
        prior_mean: np.ndarray | None = None,
        prior_strength: float = 0.0,
    ) -> Posterior:
        """Each prompt's posterior over the grid given its counts.

        ``prior_mean[i]`` (NaN = none, e.g. a value head's prediction) adds ``prior_strength``
        pseudo-outcomes at that rate, as the tracker's Beta prior does.
        """
        s = np.asarray(successes, dtype=np.float64).reshape(-1)
        n = np.asarray(trials, dtype=np.float64).reshape(-1)
        if prior_mean is not None and prior_strength > 0:
            m = np.asarray(prior_mean, dtype=np.float64).reshape(-1)
            given = ~np.isnan(m)
            s = s + np.where(given, prior_strength * np.where(given, m, 0.0), 0.0)
            n = n + np.where(given, prior_strength, 0.0)
        with np.errstate(divide="ignore"):
            log_prior = np.log(self.weights)[None, :]
        return Posterior(self.grid, _normalise(_log_likelihood(s, n, self.grid) + log_prior))


@dataclass(frozen=True)
class Posterior:
    """Per-prompt weights over ``grid`` (rows sum to 1)."""

    grid: np.ndarray
    weights: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean success rate per prompt."""
        return self.weights @ self.grid

    def value_table(self, value_fn: ValueFunction, n_max: int) -> np.ndarray:
        """``T[i, n] = E[value_fn(n, p_i)]`` for ``n = 0..n_max``, with ``T[:, 0] = 0``."""
        n = np.arange(n_max + 1, dtype=np.float64)
        per_rate = np.asarray(value_fn(n[None, :], self.grid[:, None]), dtype=np.float64)
        per_rate = np.broadcast_to(per_rate, (self.grid.size, n.size)).copy()
        per_rate[:, 0] = 0.0
        return self.weights @ per_rate

    def nonzero_gradient(self, rollouts: np.ndarray) -> np.ndarray:
        """P(the prompt's group of ``rollouts[i]`` has mixed outcomes), under the posterior."""
        n = np.asarray(rollouts, dtype=np.float64).reshape(-1, 1)
        return (self.weights * nonzero_gradient_probability(n, self.grid[None, :])).sum(axis=1)

"""Lagrangian bounds: the dp's state pruning, cpsat's domain reduction and their greedy incumbent."""

from __future__ import annotations

import numpy as np

from knapsack_trl.core.solvers.greedy import greedy
from knapsack_trl.core.solvers.problem import Problem

# A value is kept (not proven useless) unless the bound beats the incumbent by more than this,
# relative to the size of the numbers summed: generous next to float64 rounding.
BOUND_RTOL = 1e-11
# Bisection steps on the token price when the greedy hint must fit a token budget.
_HINT_PRICE_STEPS = 16
_GOLDEN_STEPS = 30


def envelope_slopes(values: np.ndarray) -> np.ndarray:
    """Slope of each row's upper concave envelope over ``[n, n + 1]``; -inf outside the row's range.

    A point below the chord of its neighbouring kept points is never on the envelope, so all such
    points are dropped at once, again on the rows that changed, until none is left (one pass for
    Knapsack RL's value, whose only dent is v(1) = 0). Dents within float noise may stay: the
    slopes only choose multipliers and a starting point, which need not be exact.
    """
    vertex = np.isfinite(values)
    filled = np.where(vertex, values, 0.0)
    tolerance = 1e-12 * (float(np.abs(filled).max()) + 1e-300)
    rows = np.arange(values.shape[0])
    while rows.size:
        prev, nxt = _neighbours(vertex[rows])
        index = np.arange(values.shape[1])
        inner = vertex[rows] & (prev >= 0) & (nxt < values.shape[1])
        a, b = np.where(inner, prev, 0), np.where(inner, nxt, 0)
        ta = np.take_along_axis(filled[rows], a, axis=1)
        tb = np.take_along_axis(filled[rows], b, axis=1)
        below = inner & ((filled[rows] - ta + tolerance) * (b - a) < (tb - ta) * (index - a))
        vertex[rows] &= ~below
        rows = rows[below.any(axis=1)]
    left, right = _neighbours(vertex)
    left = np.where(vertex, np.arange(values.shape[1]), left)[:, :-1]
    right = right[:, :-1]
    inside = (left >= 0) & (right < values.shape[1])
    a, b = np.where(inside, left, 0), np.where(inside, right, 1)
    rise = np.take_along_axis(filled, b, axis=1) - np.take_along_axis(filled, a, axis=1)
    return np.where(inside, rise / np.maximum(b - a, 1), -np.inf)


def _neighbours(vertex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the column of the nearest vertex strictly left (-1 if none) and strictly right
    (``width`` if none) in its row."""
    m, width = vertex.shape
    index = np.arange(width)
    before = np.maximum.accumulate(np.where(vertex, index, -1), axis=1)
    after = np.minimum.accumulate(np.where(vertex, index, width)[:, ::-1], axis=1)[:, ::-1]
    prev = np.concatenate([np.full((m, 1), -1), before[:, :-1]], axis=1)
    nxt = np.concatenate([after[:, 1:], np.full((m, 1), width)], axis=1)
    return prev, nxt


class Lagrangian:
    """Bounds from relaxing the two sums: for any ``lam`` and ``mu >= 0`` every allocation is worth
    at most ``UB = lam B + mu T + sum_i max_n [t_i(n) - (lam + mu c_i) n]``.

    An allocation using value ``n`` for prompt ``i`` is worth at most ``UB - reduced[i, n]``, so a
    value whose reduced cost exceeds ``UB - incumbent`` can be dropped without losing optimality.
    The multipliers come from the rows' concave envelopes, on which the relaxation is the LP.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.values = problem.used_values()
        self.n = np.arange(self.values.shape[1], dtype=np.float64)
        self.costs = np.zeros(problem.lower.size) if problem.costs is None else problem.costs
        self.slopes = envelope_slopes(self.values)
        self.has_slope = np.isfinite(self.slopes)

    def prices(self, lam: float, mu: float) -> np.ndarray:
        return lam + mu * self.costs

    def net_slopes(self, mu: float) -> np.ndarray:
        """Envelope slopes less the token price: one unit more is worth it iff this beats ``lam``."""
        return self.slopes - mu * self.costs[:, None]

    def best_lambda(self, mu: float) -> float:
        """The ``lam`` minimising ``UB(., mu)``: the R-th largest net slope (a subgradient of UB
        in ``lam`` is ``B - sum_i n_i``)."""
        net = self.net_slopes(mu)[self.has_slope]
        slack = self.problem.slack
        if net.size == 0:
            return 0.0
        if slack == 0:
            return float(net.max())
        return float(np.partition(net, net.size - slack)[net.size - slack])

    def floor(self, lam: float, mu: float) -> np.ndarray:
        """The relaxed optimum's whole part: the units whose net slope is strictly above ``lam``.
        At ``lam = best_lambda(mu)`` that is fewer than R units, so greedy can complete it."""
        return self.problem.base + (self.net_slopes(mu) > lam).sum(axis=1)

    def upper_bound(self, lam: float, mu: float) -> tuple[float, np.ndarray, float]:
        """``(UB, reduced costs, magnitude of the terms summed)`` at ``(lam, mu)``."""
        adjusted = self.values - np.multiply.outer(self.prices(lam, mu), self.n)
        row_max = adjusted.max(axis=1)
        token_term = mu * (self.problem.token_limit or 0.0)
        upper = lam * self.problem.budget + token_term + float(row_max.sum())
        magnitude = abs(lam) * self.problem.budget + abs(token_term) + float(np.abs(row_max).sum()) + 1.0
        return upper, row_max[:, None] - adjusted, magnitude

    def bound_at(self, mu: float) -> float:
        return self.upper_bound(self.best_lambda(mu), mu)[0]

    def multipliers(self, price_tokens: bool) -> tuple[float, float]:
        """``(lam, mu)`` for a tight bound; with ``price_tokens``, ``mu`` minimises the convex
        ``min_lam UB(lam, mu)`` by doubling then golden-section search."""
        if not price_tokens:
            return self.best_lambda(0.0), 0.0
        top = float(self.costs.max())
        high = (float(np.abs(self.slopes[self.has_slope]).max(initial=0.0)) + 1e-300) / max(top, 1e-300)
        previous = self.bound_at(0.0)
        for _ in range(100):
            current = self.bound_at(high)
            if current >= previous:
                break
            previous, high = current, 2.0 * high
        golden = (np.sqrt(5.0) - 1) / 2
        low = 0.0
        a, b = high - golden * (high - low), low + golden * (high - low)
        fa, fb = self.bound_at(a), self.bound_at(b)
        for _ in range(_GOLDEN_STEPS):
            if fa <= fb:
                high, b, fb = b, a, fa
                a = high - golden * (high - low)
                fa = self.bound_at(a)
            else:
                low, a, fa = a, b, fb
                b = low + golden * (high - low)
                fb = self.bound_at(b)
        mu = a if fa <= fb else b
        return self.best_lambda(mu), mu


def incumbent(problem: Problem, lagrangian: Lagrangian) -> tuple[np.ndarray, float, float]:
    """A good feasible allocation and the multipliers ``(lam, mu)`` for bounding against it.

    The relaxed optimum's whole part completed greedily; if that breaks the token budget, the
    same at the token price ``mu`` (bisected to about the lowest price that fits), or at worst
    the cheapest allocation.
    """
    lam, _ = lagrangian.multipliers(price_tokens=False)
    rollouts = greedy(problem, start=lagrangian.floor(lam, 0.0))
    if problem.token_feasible(rollouts):
        return rollouts, lam, 0.0
    assert problem.costs is not None
    lam, mu = lagrangian.multipliers(price_tokens=True)

    def priced(price: float) -> np.ndarray:
        start = lagrangian.floor(lagrangian.best_lambda(price), price)
        return greedy(problem, penalty=price * problem.costs, start=start)

    candidates = [problem.cheapest()]
    low, high, fits = 0.0, max(mu, 1e-300), False
    for _ in range(64):
        rollouts = priced(high)
        if fits := problem.token_feasible(rollouts):
            candidates.append(rollouts)
            break
        low, high = high, 2.0 * high
    for _ in range(_HINT_PRICE_STEPS if fits else 0):
        price = 0.5 * (low + high)
        rollouts = priced(price)
        if problem.token_feasible(rollouts):
            candidates.append(rollouts)
            high = price
        else:
            low = price
    return max(candidates, key=lambda r: problem.objective(r)), lam, mu

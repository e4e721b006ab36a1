"""Exact dynamic programme over the slack, pruned by a Lagrangian bound against a greedy incumbent."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from knapsack_trl.core.solvers.lagrangian import BOUND_RTOL, Lagrangian, incumbent
from knapsack_trl.core.solvers.problem import Problem


def dp(problem: Problem, prune: bool = True) -> np.ndarray:
    """Exact multiple-choice knapsack over the slack ``R = budget - sum(lower)``, any table.

    A prompt that may be skipped starts from 0, its gap below ``lower`` worth -inf (never chosen).

    ``best[s]`` is the best value of the prompts seen so far using ``lo + s`` extra rollouts;
    each prompt is a vectorised shift-max, with the argmax kept for backtracking. Prompts whose
    value does not depend on ``n`` skip the DP and absorb the leftover slack. With ``prune``,
    states whose Lagrangian bound cannot reach a greedy incumbent's value are dropped (branch
    and bound), so only a narrow band of states survives each prompt; the answer stays exact.
    """
    slack, lower = problem.slack, problem.base
    rooms = np.minimum(problem.upper - lower, slack)
    values = problem.used_values() if problem.has_gaps else problem.table
    rows = [values[i, lower[i] : lower[i] + rooms[i] + 1] for i in range(lower.size)]
    is_flat = np.array([row.max() == row.min() for row in rows])
    varies, flat = np.flatnonzero(~is_flat), np.flatnonzero(is_flat)
    absorbable = int(rooms[flat].sum())
    useful = _state_filter(problem, rows, varies, absorbable) if prune else None
    choice = np.zeros((varies.size, slack + 1), dtype=np.min_scalar_type(int(rooms.max())))
    best, lo = np.zeros(1), 0
    for j, i in enumerate(varies.tolist()):
        best = _shift_max(best, lo, rows[i], choice[j])
        if useful is not None:
            best = np.where(useful(j, lo, best), best, -np.inf)
        alive = np.flatnonzero(np.isfinite(best))
        best, lo = best[alive[0] : alive[-1] + 1], lo + int(alive[0])
    low = max(lo, slack - absorbable)
    r = low + int(np.argmax(best[low - lo :]))
    assert np.isfinite(best[r - lo]), "the DP lost every completable state"
    rollouts = lower.copy()
    leftover = slack - r
    for j in range(varies.size - 1, -1, -1):
        k = int(choice[j, r])
        rollouts[varies[j]] += k
        r -= k
    for i in flat.tolist():
        give = min(leftover, int(rooms[i]))
        rollouts[i] += give
        leftover -= give
    return rollouts


def _shift_max(best: np.ndarray, lo: int, values: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """``new[s] = max_k best[s - k] + values[k]`` (states offset by ``lo``), argmax into ``choice``.

    Loops over whichever is shorter, the choices ``k`` or the live states: after pruning only a
    handful of states survive, and a loop over 129 choices would be all Python overhead.
    """
    size = min(choice.size - 1 - lo, best.size + values.size - 2) + 1
    new = np.full(size, -np.inf)
    alive = np.flatnonzero(np.isfinite(best))
    if alive.size < values.size:
        ks = np.arange(values.size, dtype=choice.dtype)
        for s in alive.tolist():
            top = min(values.size, size - s)
            candidate = best[s] + values[:top]
            better = candidate > new[s : s + top]
            np.copyto(new[s : s + top], candidate, where=better)
            np.copyto(choice[lo + s : lo + s + top], ks[:top], where=better)
        return new
    for k in range(min(values.size, size)):
        top = min(best.size, size - k)
        candidate = best[:top] + values[k]
        better = candidate > new[k : k + top]
        np.copyto(new[k : k + top], candidate, where=better)
        np.copyto(choice[lo + k : lo + k + top], k, where=better)
    return new


def _state_filter(
    problem: Problem, rows: list[np.ndarray], varies: np.ndarray, absorbable: int
) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """``useful(j, lo, best)``: which states after prompt ``varies[j]`` may still match the incumbent.

    State ``r`` (value ``best[r]``) ends at most at ``best[r] + lam (R - r) + S_j``, where ``S_j``
    sums ``max_k [v(k) - lam k]`` over the prompts still to come (and the flat prompts that soak
    up slack): the Lagrangian bound of the rest of the problem, valid for any ``lam``.
    """
    best, lam, _ = incumbent(problem, Lagrangian(problem))
    varied_value = float(problem.table[varies, best[varies]].sum())
    row_max = np.array([float(np.max(rows[i] - lam * np.arange(rows[i].size))) for i in varies.tolist()])
    suffix = np.append(np.cumsum(row_max[::-1])[::-1][1:], 0.0) + max(0.0, -lam * absorbable)
    slack = problem.slack
    tolerance = BOUND_RTOL * (abs(lam) * slack + float(np.abs(row_max).sum()) + abs(varied_value) + 1.0)

    def useful(j: int, lo: int, best: np.ndarray) -> np.ndarray:
        r = np.arange(lo, lo + best.size)
        return best + lam * (slack - r) + suffix[j] >= varied_value - tolerance

    return useful

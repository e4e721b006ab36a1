"""Greedy on marginal gains: milliseconds, exact when every row is concave on its range."""

from __future__ import annotations

import heapq

import numpy as np

from knapsack_trl.core.solvers.problem import Problem

_CONCAVITY_RTOL = 1e-12


def greedy(
    problem: Problem, penalty: np.ndarray | None = None, start: np.ndarray | None = None
) -> np.ndarray:
    """Add rollouts one move at a time to the prompt with the best gain per rollout.

    A move is one rollout, or two when two are worth more per rollout than one: that is the
    "activation" step 0 -> 2 for Knapsack RL's value, whose v(1) = 0 makes the start
    non-concave. ``penalty[i]`` is subtracted per rollout (a price on tokens); ``start``
    (default ``lower``, at most ``budget`` in total) is where the moves begin.
    """
    table, upper = problem.table, problem.upper
    rollouts = (problem.lower if start is None else start).copy()
    pen = np.zeros(table.shape[0]) if penalty is None else penalty

    def best_move(i: int, max_step: int) -> tuple[float, int, int] | None:
        n = int(rollouts[i])
        room = min(int(upper[i]) - n, max_step)
        if room <= 0:
            return None
        base = table[i, n]
        rate, step = table[i, n + 1] - base - pen[i], 1
        if room >= 2:
            rate2 = (table[i, n + 2] - base) / 2 - pen[i]
            if rate2 > rate:
                rate, step = rate2, 2
        return (-float(rate), i, step)

    remaining = problem.budget - int(rollouts.sum())
    assert remaining >= 0, "greedy must start at or below the budget"
    heap = [move for i in range(table.shape[0]) if (move := best_move(i, remaining)) is not None]
    heapq.heapify(heap)
    while remaining > 0:
        _, i, step = heapq.heappop(heap)
        if step > remaining:
            move = best_move(i, remaining)
        else:
            rollouts[i] += step
            remaining -= step
            move = best_move(i, remaining)
        if move is not None:
            heapq.heappush(heap, move)
    return rollouts


def greedy_is_exact(problem: Problem) -> bool:
    """Greedy is exact when every row is concave on ``[lower_i, upper_i]`` (numerically)."""
    values = problem.used_values()
    inside = np.isfinite(values)
    middle = inside[:, 2:] & inside[:, :-2]
    filled = np.where(inside, values, 0.0)
    second = filled[:, 2:] - 2 * filled[:, 1:-1] + filled[:, :-2]
    scale = float(np.abs(filled).max())
    return bool((second[middle] <= _CONCAVITY_RTOL * scale).all())

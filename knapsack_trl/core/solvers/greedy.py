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
    (default ``lower``, at most ``budget`` in total) is where the moves begin. With prompts that may
    be skipped (:func:`greedy_with_gaps`) a skipped prompt's first move is a whole group.
    """
    if problem.has_gaps:
        return greedy_with_gaps(problem, penalty, start)
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


def greedy_with_gaps(
    problem: Problem, penalty: np.ndarray | None = None, start: np.ndarray | None = None
) -> np.ndarray:
    """Greedy when some prompts may take 0 or a whole group: a heuristic, never proven optimal.

    A skipped prompt's move is to ``lower`` or ``lower + 1`` rollouts at once (its gain per rollout
    over the jump); the others move as in :func:`greedy`. When the budget left is smaller than any
    skipped prompt's group and every other prompt is full, :func:`_make_room` frees rollouts where they
    are worth least to take in one more group; in the rare case even that cannot work, the answer is
    any feasible allocation (:meth:`Problem.any_allocation`), which the exact solvers improve on.
    """
    table, upper, lower = problem.table, problem.upper, problem.lower
    skip = problem.skippable
    assert skip is not None
    rollouts = (problem.base if start is None else start).copy()
    rollouts[skip & (rollouts > 0) & (rollouts < lower)] = 0  # a start inside a gap drops to 0
    pen = np.zeros(table.shape[0]) if penalty is None else penalty

    def best_move(i: int, max_step: int) -> tuple[float, int, int] | None:
        n = int(rollouts[i])
        room = min(int(upper[i]) - n, max_step)
        first = int(lower[i]) if skip[i] and n == 0 else 1
        if room < first:
            return None
        best: tuple[float, int] | None = None
        for step in (first, first + 1):
            if step <= room:
                rate = (table[i, n + step] - table[i, n]) / step - pen[i]
                if best is None or rate > best[0]:
                    best = (float(rate), step)
        assert best is not None
        return (-best[0], i, best[1])

    remaining = problem.budget - int(rollouts.sum())
    assert remaining >= 0, "greedy must start at or below the budget"
    heap = [move for i in range(table.shape[0]) if (move := best_move(i, remaining)) is not None]
    heapq.heapify(heap)
    while remaining > 0:
        if not heap:
            return _make_room(problem, rollouts, remaining, pen)
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


def _make_room(problem: Problem, rollouts: np.ndarray, remaining: int, pen: np.ndarray) -> np.ndarray:
    """Greedy is stuck ``remaining`` rollouts short: every prompt in play is full and every skipped one
    needs a larger group. Take one more prompt in at its ``lower`` (the smallest group, then the best
    value), the rollouts it lacks taken one at a time where they are worth least."""
    table, lower = problem.table, problem.lower
    assert problem.skippable is not None
    out = rollouts.copy()
    waiting = np.flatnonzero(problem.skippable & (out == 0) & (lower > remaining))
    if waiting.size:
        j = int(min(waiting.tolist(), key=lambda i: (int(lower[i]), -float(table[i, lower[i]]))))
        need = int(lower[j]) - remaining
        floor = np.where(problem.skippable & (out > 0), lower, problem.base)
        heap = [
            (float(table[i, out[i]] - table[i, out[i] - 1] - pen[i]), i) for i in np.flatnonzero(out > floor)
        ]
        heapq.heapify(heap)
        while need and heap:
            _, i = heapq.heappop(heap)
            out[i] -= 1
            need -= 1
            if out[i] > floor[i]:
                heapq.heappush(heap, (float(table[i, out[i]] - table[i, out[i] - 1] - pen[i]), i))
        if not need:
            out[j] = lower[j]
            return out
    return problem.any_allocation()


def greedy_is_exact(problem: Problem) -> bool:
    """Greedy is exact when every row is concave on ``[lower_i, upper_i]`` (numerically) and no prompt may
    be skipped below its range (a choice between 0 and a whole group defeats the marginal argument)."""
    if problem.has_gaps:
        return False
    values = problem.used_values()
    inside = np.isfinite(values)
    middle = inside[:, 2:] & inside[:, :-2]
    filled = np.where(inside, values, 0.0)
    second = filled[:, 2:] - 2 * filled[:, 1:-1] + filled[:, :-2]
    scale = float(np.abs(filled).max())
    return bool((second[middle] <= _CONCAVITY_RTOL * scale).all())

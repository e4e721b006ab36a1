"""Knapsack solvers that split a rollout budget across prompts.

Problem: maximise ``sum_i table[i, n_i]`` subject to ``sum_i n_i == budget`` and
``lower_i <= n_i <= upper_i`` (integers), optionally with ``sum_i costs_i * n_i <= token_budget``.
This is a multiple-choice knapsack: each prompt picks exactly one rollout count.

Three solvers, all pure numpy (plus OR-Tools CP-SAT):

- ``greedy``: marginal gains on a heap, milliseconds; exact when every row is concave on the
  range it may use (Knapsack RL's value is concave for ``n >= 1``).
- ``dp``: exact dynamic programme for any table. A Lagrangian bound against a greedy incumbent
  prunes its states (branch and bound), so it takes milliseconds where a full DP takes ~1 s.
- ``cpsat`` (default): exact, and the only one that takes a token budget. The same bound removes
  every value that provably cannot beat the greedy hint, so CP-SAT only sees the few undecided
  prompts; it never returns an allocation worse than its hint.

The Lagrangian multipliers come from each row's upper concave envelope, where the relaxation is
the LP relaxation: for Knapsack RL's value the bound usually proves the hint optimal outright.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

SOLVERS: tuple[str, ...] = ("cpsat", "dp", "greedy")

# A value is kept (not proven useless) unless the bound beats the incumbent by more than this,
# relative to the size of the numbers summed: generous next to float64 rounding.
_BOUND_RTOL = 1e-11
# CP-SAT needs integer coefficients: objective values are scaled so one unit is this fraction of
# the largest value difference in play, token costs so the largest total cost is ~2**40 units.
_OBJECTIVE_RESOLUTION = 1e-10
_COST_BITS = 40
# Bisection steps on the token price when the greedy hint must fit a token budget.
_HINT_PRICE_STEPS = 16
_GOLDEN_STEPS = 30
_CONCAVITY_RTOL = 1e-12
# The token budget is met to this relative slack, so a budget computed as the cheapest allocation's
# cost (summed in another order) is never refused for float rounding.
_TOKEN_RTOL = 1e-9


@dataclass(frozen=True)
class SolverResult:
    """An allocation and how it was found.

    ``optimal`` is True only when optimality is proven: greedy, when every row is concave on
    ``[lower_i, upper_i]`` (true for Knapsack RL's value when ``lower >= 1``); dp, always; cpsat,
    by the Lagrangian bound or by CP-SAT (to its 1e-10 objective resolution). ``status`` is
    "OPTIMAL"/"FEASIBLE", or "HINT" when cpsat fell back to its hint, whose objective is
    ``hint_objective`` (cpsat only).
    """

    rollouts: np.ndarray
    objective: float
    seconds: float
    optimal: bool
    solver: str
    status: str = ""
    hint_objective: float | None = None


def check_solver_name(name: str) -> str:
    """Return ``name`` if it is a known solver, else raise a ValueError listing the choices."""
    if name not in SOLVERS:
        raise ValueError(f"knapsack_solver={name!r} is not known; use one of {list(SOLVERS)}.")
    return name


@dataclass(frozen=True)
class _Problem:
    """A validated instance: float64 table, int64 bounds, optional per-rollout token costs."""

    table: np.ndarray
    budget: int
    lower: np.ndarray
    upper: np.ndarray
    costs: np.ndarray | None = None
    token_limit: float | None = None  # token_budget plus _TOKEN_RTOL

    @property
    def slack(self) -> int:
        """Rollouts left to place once every prompt has its floor."""
        return self.budget - int(self.lower.sum())

    def used_values(self) -> np.ndarray:
        """``table[:, :n_max+1]`` with -inf outside each prompt's ``[lower_i, upper_i]``."""
        n = np.arange(int(self.upper.max()) + 1)
        inside = (n >= self.lower[:, None]) & (n <= self.upper[:, None])
        return np.where(inside, self.table[:, : n.size], -np.inf)


def _objective(table: np.ndarray, rollouts: np.ndarray) -> float:
    return float(table[np.arange(table.shape[0]), rollouts].sum())


def _as_bounds(value: np.ndarray | int, m: int, name: str, field: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(m, arr)
    if arr.shape != (m,):
        raise ValueError(
            f"{name} must be a scalar or have one entry per prompt ({m}); got shape {arr.shape}."
        )
    if not np.isfinite(arr.astype(np.float64)).all() or (arr != np.round(arr)).any():
        raise ValueError(f"{name} must hold whole numbers of rollouts; check {field}.")
    return arr.astype(np.int64)


def _validate(
    table: np.ndarray,
    budget: int,
    lower: np.ndarray | int,
    upper: np.ndarray | int,
    costs: np.ndarray | None,
    token_budget: float | None,
) -> _Problem:
    """Check the instance up front so every failure names the setting to change."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (prompts x rollout counts); got shape {table.shape}.")
    m = table.shape[0]
    if m == 0:
        raise ValueError("the batch is empty (0 prompts): there is nothing to allocate rollouts to.")
    lower = _as_bounds(lower, m, "lower", "knapsack_n_min")
    upper = _as_bounds(upper, m, "upper", "knapsack_n_max")
    if (lower < 0).any():
        raise ValueError(f"lower (knapsack_n_min) must be >= 0; got {int(lower.min())}.")
    if (lower > upper).any():
        i = int(np.argmax(lower > upper))
        raise ValueError(
            f"lower > upper for prompt {i} ({int(lower[i])} > {int(upper[i])}); "
            "set knapsack_n_min <= knapsack_n_max."
        )
    if table.shape[1] < int(upper.max()) + 1:
        raise ValueError(
            f"table has {table.shape[1]} columns but upper (knapsack_n_max) is {int(upper.max())}; "
            "build it with value_table(..., n_max) so it has n_max + 1 columns."
        )
    if not np.isfinite(table).all():
        rows = np.flatnonzero(~np.isfinite(table).all(axis=1))[:5].tolist()
        raise ValueError(f"table has NaN or inf values (rows {rows}); check the value function.")
    if isinstance(budget, bool) or not float(budget).is_integer():
        raise ValueError(f"budget must be a whole number of rollouts; got {budget!r}.")
    budget = int(budget)
    if budget < lower.sum():
        raise ValueError(
            f"knapsack budget B is smaller than n_min x prompts: B = {budget} < {int(lower.sum())} "
            f"(sum of lower over {m} prompts); raise the budget or lower knapsack_n_min."
        )
    if budget > upper.sum():
        raise ValueError(
            f"knapsack budget B is larger than n_max x prompts: B = {budget} > {int(upper.sum())} "
            f"(sum of upper over {m} prompts); lower the budget or raise knapsack_n_max."
        )
    if costs is None:
        if token_budget is not None:
            raise ValueError("token_budget was given without costs (expected tokens per rollout per prompt).")
        return _Problem(table, budget, lower, upper)
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    if costs.shape != (m,):
        raise ValueError(f"costs must have one entry per prompt ({m}); got shape {costs.shape}.")
    if not np.isfinite(costs).all() or (costs < 0).any():
        raise ValueError("costs (expected tokens per rollout) must be finite and >= 0.")
    if token_budget is None or not np.isfinite(token_budget):
        raise ValueError(
            "costs were given without a finite token_budget; pass token_budget (tokens per batch)."
        )
    limit = float(token_budget) + _TOKEN_RTOL * abs(float(token_budget))
    problem = _Problem(table, budget, lower, upper, costs, limit)
    cheapest = _cheapest_allocation(problem)
    if not _token_feasible(problem, cheapest):
        raise ValueError(
            f"token_budget {float(token_budget):g} is below the cheapest allocation of B = {budget} "
            f"rollouts ({float(costs @ cheapest):g} tokens); raise token_budget or lower the budget."
        )
    return problem


def _cheapest_allocation(problem: _Problem) -> np.ndarray:
    """The allocation with the fewest tokens: floors, then the slack on the cheapest prompts."""
    assert problem.costs is not None
    order = np.argsort(problem.costs, kind="stable")
    room = (problem.upper - problem.lower)[order]
    rollouts = problem.lower.copy()
    rollouts[order] += np.minimum(room, np.maximum(problem.slack - (np.cumsum(room) - room), 0))
    return rollouts


def _token_feasible(problem: _Problem, rollouts: np.ndarray) -> bool:
    if problem.costs is None or problem.token_limit is None:
        return True
    return bool(problem.costs @ rollouts <= problem.token_limit)


def solve(
    table: np.ndarray,
    budget: int,
    lower: np.ndarray | int,
    upper: np.ndarray | int,
    *,
    solver: str = "cpsat",
    costs: np.ndarray | None = None,
    token_budget: float | None = None,
    time_limit_s: float = 1.0,
    num_workers: int = 1,
) -> SolverResult:
    """Choose ``rollouts[i]`` in ``[lower_i, upper_i]`` summing to ``budget``, maximising value.

    ``table[i, n]`` is the value of giving prompt ``i`` ``n`` rollouts (at least
    ``max(upper) + 1`` columns). ``costs``/``token_budget`` add ``sum_i costs_i n_i <=
    token_budget`` (to a relative 1e-9) and need ``solver="cpsat"``. ``time_limit_s`` and
    ``num_workers`` go to CP-SAT. Raises ValueError on any infeasible or malformed input, before
    doing any work; ``seconds`` in the result times everything after that check.
    """
    check_solver_name(solver)
    if costs is not None and solver != "cpsat":
        raise ValueError(f'token budgets need knapsack_solver="cpsat"; got knapsack_solver={solver!r}.')
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s (knapsack_time_limit_s) must be > 0; got {time_limit_s}.")
    if int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1; got {num_workers}.")
    problem = _validate(table, budget, lower, upper, costs, token_budget)
    start = time.perf_counter()
    if solver == "greedy":
        rollouts = _greedy(problem)
        exact = _greedy_is_exact(problem)
        return SolverResult(
            rollouts=rollouts,
            objective=_objective(problem.table, rollouts),
            seconds=time.perf_counter() - start,
            optimal=exact,
            solver="greedy",
            status="OPTIMAL" if exact else "FEASIBLE",
        )
    if solver == "dp":
        rollouts = _dp(problem)
        return SolverResult(
            rollouts=rollouts,
            objective=_objective(problem.table, rollouts),
            seconds=time.perf_counter() - start,
            optimal=True,
            solver="dp",
            status="OPTIMAL",
        )
    return _cpsat(problem, start, time_limit_s, int(num_workers))


# --------------------------------------------------------------------------------------------
# greedy


def _greedy(
    problem: _Problem, penalty: np.ndarray | None = None, start: np.ndarray | None = None
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


def _greedy_is_exact(problem: _Problem) -> bool:
    """Greedy is exact when every row is concave on ``[lower_i, upper_i]`` (numerically)."""
    values = problem.used_values()
    inside = np.isfinite(values)
    middle = inside[:, 2:] & inside[:, :-2]
    filled = np.where(inside, values, 0.0)
    second = filled[:, 2:] - 2 * filled[:, 1:-1] + filled[:, :-2]
    scale = float(np.abs(filled).max())
    return bool((second[middle] <= _CONCAVITY_RTOL * scale).all())


# --------------------------------------------------------------------------------------------
# dynamic programme


def _dp(problem: _Problem, prune: bool = True) -> np.ndarray:
    """Exact multiple-choice knapsack over the slack ``R = budget - sum(lower)``, any table.

    ``best[s]`` is the best value of the prompts seen so far using ``lo + s`` extra rollouts;
    each prompt is a vectorised shift-max, with the argmax kept for backtracking. Prompts whose
    value does not depend on ``n`` skip the DP and absorb the leftover slack. With ``prune``,
    states whose Lagrangian bound cannot reach a greedy incumbent's value are dropped (branch
    and bound), so only a narrow band of states survives each prompt; the answer stays exact.
    """
    slack, lower = problem.slack, problem.lower
    rooms = np.minimum(problem.upper - lower, slack)
    rows = [problem.table[i, lower[i] : lower[i] + rooms[i] + 1] for i in range(lower.size)]
    is_flat = np.array([row.max() == row.min() for row in rows])
    varies, flat = np.flatnonzero(~is_flat), np.flatnonzero(is_flat)
    absorbable = int(rooms[flat].sum())
    useful = _dp_state_filter(problem, rows, varies, absorbable) if prune else None
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


def _dp_state_filter(
    problem: _Problem, rows: list[np.ndarray], varies: np.ndarray, absorbable: int
) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """``useful(j, lo, best)``: which states after prompt ``varies[j]`` may still match the incumbent.

    State ``r`` (value ``best[r]``) ends at most at ``best[r] + lam (R - r) + S_j``, where ``S_j``
    sums ``max_k [v(k) - lam k]`` over the prompts still to come (and the flat prompts that soak
    up slack): the Lagrangian bound of the rest of the problem, valid for any ``lam``.
    """
    incumbent, lam, _ = _incumbent(problem, _Lagrangian(problem))
    varied_value = float(problem.table[varies, incumbent[varies]].sum())
    row_max = np.array([float(np.max(rows[i] - lam * np.arange(rows[i].size))) for i in varies.tolist()])
    suffix = np.append(np.cumsum(row_max[::-1])[::-1][1:], 0.0) + max(0.0, -lam * absorbable)
    slack = problem.slack
    tolerance = _BOUND_RTOL * (abs(lam) * slack + float(np.abs(row_max).sum()) + abs(varied_value) + 1.0)

    def useful(j: int, lo: int, best: np.ndarray) -> np.ndarray:
        r = np.arange(lo, lo + best.size)
        return best + lam * (slack - r) + suffix[j] >= varied_value - tolerance

    return useful


# --------------------------------------------------------------------------------------------
# Lagrangian bound: dp's state pruning and cpsat's domain reduction


def _envelope_slopes(values: np.ndarray) -> np.ndarray:
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


class _Lagrangian:
    """Bounds from relaxing the two sums: for any ``lam`` and ``mu >= 0`` every allocation is worth
    at most ``UB = lam B + mu T + sum_i max_n [t_i(n) - (lam + mu c_i) n]``.

    An allocation using value ``n`` for prompt ``i`` is worth at most ``UB - reduced[i, n]``, so a
    value whose reduced cost exceeds ``UB - incumbent`` can be dropped without losing optimality.
    The multipliers come from the rows' concave envelopes, on which the relaxation is the LP.
    """

    def __init__(self, problem: _Problem) -> None:
        self.problem = problem
        self.values = problem.used_values()
        self.n = np.arange(self.values.shape[1], dtype=np.float64)
        self.costs = np.zeros(problem.lower.size) if problem.costs is None else problem.costs
        self.slopes = _envelope_slopes(self.values)
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
        return self.problem.lower + (self.net_slopes(mu) > lam).sum(axis=1)

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


def _incumbent(problem: _Problem, lagrangian: _Lagrangian) -> tuple[np.ndarray, float, float]:
    """A good feasible allocation and the multipliers ``(lam, mu)`` for bounding against it.

    The relaxed optimum's whole part completed greedily; if that breaks the token budget, the
    same at the token price ``mu`` (bisected to about the lowest price that fits), or at worst
    the cheapest allocation.
    """
    lam, _ = lagrangian.multipliers(price_tokens=False)
    rollouts = _greedy(problem, start=lagrangian.floor(lam, 0.0))
    if _token_feasible(problem, rollouts):
        return rollouts, lam, 0.0
    assert problem.costs is not None
    lam, mu = lagrangian.multipliers(price_tokens=True)

    def priced(price: float) -> np.ndarray:
        start = lagrangian.floor(lagrangian.best_lambda(price), price)
        return _greedy(problem, penalty=price * problem.costs, start=start)

    candidates = [_cheapest_allocation(problem)]
    low, high, fits = 0.0, max(mu, 1e-300), False
    for _ in range(64):
        rollouts = priced(high)
        if fits := _token_feasible(problem, rollouts):
            candidates.append(rollouts)
            break
        low, high = high, 2.0 * high
    for _ in range(_HINT_PRICE_STEPS if fits else 0):
        price = 0.5 * (low + high)
        rollouts = priced(price)
        if _token_feasible(problem, rollouts):
            candidates.append(rollouts)
            high = price
        else:
            low = price
    return max(candidates, key=lambda r: _objective(problem.table, r)), lam, mu


# --------------------------------------------------------------------------------------------
# CP-SAT on the reduced domains


def _cpsat(problem: _Problem, start: float, time_limit_s: float, num_workers: int) -> SolverResult:
    """Exact solve: bound, prune, then CP-SAT on the prompts the bound leaves undecided."""
    lagrangian = _Lagrangian(problem)
    hint, lam, mu = _incumbent(problem, lagrangian)
    hint_objective = _objective(problem.table, hint)

    def result(rollouts: np.ndarray, optimal: bool, status: str) -> SolverResult:
        return SolverResult(
            rollouts=rollouts,
            objective=_objective(problem.table, rollouts),
            seconds=time.perf_counter() - start,
            optimal=optimal,
            solver="cpsat",
            status=status,
            hint_objective=hint_objective,
        )

    upper, reduced, magnitude = lagrangian.upper_bound(lam, mu)
    keep = np.isfinite(lagrangian.values) & (reduced <= upper - hint_objective + _BOUND_RTOL * magnitude)
    keep[np.arange(hint.size), hint] = True
    if keep.sum() == hint.size:  # every other allocation is provably worse than the hint
        return result(hint, True, "OPTIMAL")

    model, picks, fixed = _reduced_model(problem, keep, hint)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = num_workers
    status = solver.solve(model)
    proven = status == cp_model.OPTIMAL
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        rollouts = fixed.copy()
        for i, options in picks.items():
            rollouts[i] = next(n for n, var in options if solver.boolean_value(var))
        if not _token_feasible(problem, rollouts):  # float rounding of the cost sum only
            return result(hint, False, "HINT")
        if _objective(problem.table, rollouts) >= hint_objective:
            return result(rollouts, proven, solver.status_name(status))
    return result(hint, proven, "HINT")


def _reduced_model(
    problem: _Problem, keep: np.ndarray, hint: np.ndarray
) -> tuple[cp_model.CpModel, dict[int, list[tuple[int, cp_model.IntVar]]], np.ndarray]:
    """One Boolean per kept ``(i, n)``; prompts with a single kept value are constants.

    Returns the model, each open prompt's ``(n, Boolean)`` options, and the rollouts of the
    fixed prompts (0 for open ones). Values are scaled to integers at ``_OBJECTIVE_RESOLUTION``
    of the largest value spread among open prompts; the float objective is recomputed after.
    """
    model = cp_model.CpModel()
    counts = keep.sum(axis=1)
    fixed = np.where(counts == 1, keep.argmax(axis=1), 0).astype(np.int64)
    rows, ns = np.nonzero(keep & (counts > 1)[:, None])
    picks: dict[int, list[tuple[int, cp_model.IntVar]]] = {}
    booleans = []
    for i, n in zip(rows.tolist(), ns.tolist()):
        booleans.append(model.new_bool_var(f"x{i}_{n}"))
        picks.setdefault(i, []).append((n, booleans[-1]))
    for options in picks.values():
        model.add_exactly_one(var for _, var in options)
    kept = np.where(keep, problem.table[:, : keep.shape[1]], np.nan)
    floor = np.nanmin(kept, axis=1)
    values = problem.table[rows, ns]
    value_unit = max(float((values - floor[rows]).max(initial=0.0)), 1e-300) * _OBJECTIVE_RESOLUTION
    gains = np.rint((values - floor[rows]) / value_unit).astype(np.int64)
    model.add(cp_model.LinearExpr.weighted_sum(booleans, ns.tolist()) == problem.budget - int(fixed.sum()))
    most = 0.0 if problem.costs is None else float(problem.costs @ problem.upper)
    if problem.costs is not None and problem.token_limit is not None and most > problem.token_limit:
        # Costs in power-of-two units (exact for whole-token costs), rounded up, and the budget
        # rounded down: whatever CP-SAT picks fits the float budget. Only allocations within
        # about B * 2**-40 of the largest possible cost can be lost. (A budget no allocation can
        # exceed needs no constraint.)
        unit = 2.0 ** (np.ceil(np.log2(max(most, float(problem.costs.max())))) - _COST_BITS)
        scaled = np.ceil(problem.costs / unit).astype(np.int64)
        room = int(np.floor(problem.token_limit / unit)) - int(scaled @ fixed)
        model.add(cp_model.LinearExpr.weighted_sum(booleans, (scaled[rows] * ns).tolist()) <= room)
    model.maximize(cp_model.LinearExpr.weighted_sum(booleans, gains.tolist()))
    for var, i, n in zip(booleans, rows.tolist(), ns.tolist()):
        model.add_hint(var, int(n == hint[i]))
    return model, picks, fixed

"""Knapsack solvers that split a rollout budget across prompts.

Problem: maximise ``sum_i table[i, n_i]`` subject to ``sum_i n_i == budget`` and
``lower_i <= n_i <= upper_i`` (integers), optionally with ``sum_i costs_i * n_i <= token_budget``.
This is a multiple-choice knapsack: each prompt picks exactly one rollout count.

Three solvers, all pure numpy (plus OR-Tools CP-SAT):

- ``greedy``: marginal gains on a heap, milliseconds; exact when every row is concave on the
  range it may use (Knapsack RL's value is concave for ``n >= 1``).
- ``dp``: exact dynamic programme for any table, well under a second at 1,024 prompts.
- ``cpsat`` (default): exact, and the only one that takes a token budget. A Lagrangian bound
  removes every value that provably cannot beat the greedy hint, so CP-SAT only sees the few
  undecided prompts; it never returns an allocation worse than its hint.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

SOLVERS: tuple[str, ...] = ("cpsat", "dp", "greedy")

# A value is kept (not proven useless) unless the bound beats the incumbent by more than this,
# relative to the size of the numbers summed: generous next to float64 rounding.
_BOUND_RTOL = 1e-11
# CP-SAT needs integer coefficients: objective values are scaled so one unit is this fraction of
# the largest value difference in play, token costs so the largest total cost is ~2**40 units.
_OBJECTIVE_RESOLUTION = 1e-10
_COST_UNITS = 2.0**40
_CONCAVITY_RTOL = 1e-12


@dataclass(frozen=True)
class SolverResult:
    """An allocation and how it was found.

    ``optimal`` is True only when optimality is proven (greedy: when its exactness conditions
    hold; cpsat: by CP-SAT or by the Lagrangian bound). ``status`` is CP-SAT's word, or "HINT"
    when cpsat returned its greedy hint; ``hint_objective`` is that hint's objective.
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
    token_budget: float | None = None

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
    problem = _Problem(table, budget, lower, upper, costs, float(token_budget))
    cheapest = _cheapest_cost(problem)
    if cheapest > problem.token_budget * (1 + 1e-12) + 1e-12:
        raise ValueError(
            f"token_budget {problem.token_budget:g} is below the cheapest allocation of B = {budget} "
            f"rollouts ({cheapest:g} tokens); raise token_budget or lower the budget."
        )
    return problem


def _cheapest_cost(problem: _Problem) -> float:
    """Token cost of the cheapest allocation: floors, then the slack on the cheapest prompts."""
    assert problem.costs is not None
    order = np.argsort(problem.costs, kind="stable")
    room = (problem.upper - problem.lower)[order]
    taken = np.minimum(room, np.maximum(problem.slack - (np.cumsum(room) - room), 0))
    return float(problem.costs @ problem.lower + problem.costs[order] @ taken)


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
    token_budget`` and need ``solver="cpsat"``. Raises ValueError on any infeasible or malformed
    input, before doing any work.
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
        return SolverResult(
            rollouts=rollouts,
            objective=_objective(problem.table, rollouts),
            seconds=time.perf_counter() - start,
            optimal=_greedy_is_exact(problem),
            solver="greedy",
            status="OPTIMAL" if _greedy_is_exact(problem) else "FEASIBLE",
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


def _greedy(problem: _Problem, penalty: np.ndarray | None = None) -> np.ndarray:
    """Add rollouts one move at a time to the prompt with the best gain per rollout.

    A move is one rollout, or two when two are worth more per rollout than one: that is the
    "activation" step 0 -> 2 for Knapsack RL's value, whose v(1) = 0 makes the start
    non-concave. ``penalty[i]`` is subtracted per rollout (a price on tokens).
    """
    table, upper = problem.table, problem.upper
    rollouts = problem.lower.copy()
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

    remaining = problem.slack
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


def _dp(problem: _Problem) -> np.ndarray:
    """Exact multiple-choice knapsack over the slack ``R = budget - sum(lower)``, any table.

    ``best[r]`` is the best value of the prompts seen so far using ``r`` extra rollouts; each
    prompt's choice ``k`` is a vectorised shift-max, with the argmax kept for backtracking.
    Prompts whose value does not depend on ``n`` skip the DP and absorb the leftover slack.
    """
    slack = problem.slack
    lower = problem.lower
    rooms = np.minimum(problem.upper - lower, slack)
    rows = [problem.table[i, lower[i] : lower[i] + rooms[i] + 1] for i in range(lower.size)]
    varies = [i for i in range(lower.size) if rows[i].max() > rows[i].min()]
    choice = np.zeros((len(varies), slack + 1), dtype=np.min_scalar_type(int(rooms.max())))
    best = np.zeros(1)
    for j, i in enumerate(varies):
        values, reach = rows[i], min(slack, best.size - 1 + int(rooms[i]))
        new = np.full(reach + 1, -np.inf)
        new[: best.size] = best + values[0]
        for k in range(1, values.size):
            end = min(reach, best.size - 1 + k)
            candidate = best[: end - k + 1] + values[k]
            better = candidate > new[k : end + 1]
            np.copyto(new[k : end + 1], candidate, where=better)
            np.copyto(choice[j, k : end + 1], k, where=better)
        best = new
    absorbable = int(sum(rooms[i] for i in range(lower.size) if rows[i].max() == rows[i].min()))
    low = max(0, slack - absorbable)
    r = low + int(np.argmax(best[low : slack + 1]))
    rollouts = lower.copy()
    leftover = slack - r
    for j in range(len(varies) - 1, -1, -1):
        k = int(choice[j, r])
        rollouts[varies[j]] += k
        r -= k
    for i in range(lower.size):
        if leftover and rows[i].max() == rows[i].min():
            give = min(leftover, int(rooms[i]))
            rollouts[i] += give
            leftover -= give
    return rollouts


# --------------------------------------------------------------------------------------------
# CP-SAT with Lagrangian domain reduction


@dataclass(frozen=True)
class _Bound:
    """``UB = lam*B + mu*T + sum_i max_n [t_i(n) - lam n - mu c_i n]`` and each value's reduced cost.

    Any allocation using value ``n`` for prompt ``i`` is worth at most ``upper - reduced[i, n]``.
    """

    upper: float
    reduced: np.ndarray
    scale: float


def _relaxed_rollouts(values: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt argmax and max of ``values[i, n] - price[i] * n`` (the Lagrangian subproblem)."""
    adjusted = values - price[:, None] * np.arange(values.shape[1])
    best = adjusted.argmax(axis=1)
    return best, adjusted


def _bound(problem: _Problem, values: np.ndarray, lam: float, mu: float) -> _Bound:
    costs = np.zeros(values.shape[0]) if problem.costs is None else problem.costs
    _, adjusted = _relaxed_rollouts(values, lam + mu * costs)
    row_max = adjusted.max(axis=1)
    token_term = mu * problem.token_budget if problem.token_budget is not None else 0.0
    upper = lam * problem.budget + token_term + float(row_max.sum())
    scale = abs(lam) * problem.budget + abs(token_term) + float(np.abs(row_max).sum()) + 1.0
    return _Bound(upper, row_max[:, None] - adjusted, scale)


def _best_lambda(problem: _Problem, values: np.ndarray, mu: float, iterations: int = 60) -> float:
    """Minimise the (convex, piecewise-linear) bound over ``lam`` by bisection on its slope."""
    costs = np.zeros(values.shape[0]) if problem.costs is None else problem.costs
    finite = values[np.isfinite(values)]
    spread = float(finite.max() - finite.min()) + 1.0
    low = -spread - mu * float(costs.max())
    high = spread
    for _ in range(iterations):
        lam = 0.5 * (low + high)
        rollouts, _ = _relaxed_rollouts(values, lam + mu * costs)
        if rollouts.sum() > problem.budget:
            low = lam
        else:
            high = lam
        if high - low <= 1e-15 * spread:
            break
    return high


def _multipliers(problem: _Problem, values: np.ndarray) -> tuple[float, float]:
    """Multipliers ``(lam, mu)`` for a tight bound; ``mu`` prices the token budget."""
    lam = _best_lambda(problem, values, 0.0)
    if problem.costs is None or problem.token_budget is None:
        return lam, 0.0
    rollouts, _ = _relaxed_rollouts(values, lam + 0.0 * problem.costs)
    if problem.costs @ rollouts <= problem.token_budget:
        return lam, 0.0  # the budget is slack at mu = 0, so mu = 0 minimises the bound
    mu_high = 1.0 / max(float(problem.costs.max()), 1e-300)
    for _ in range(200):
        lam_high = _best_lambda(problem, values, mu_high)
        rollouts, _ = _relaxed_rollouts(values, lam_high + mu_high * problem.costs)
        if problem.costs @ rollouts <= problem.token_budget:
            break
        mu_high *= 2.0
    golden = (np.sqrt(5.0) - 1) / 2
    low, high = 0.0, mu_high

    def bound_at(mu: float) -> float:
        return _bound(problem, values, _best_lambda(problem, values, mu, 40), mu).upper

    a, b = high - golden * (high - low), low + golden * (high - low)
    fa, fb = bound_at(a), bound_at(b)
    for _ in range(30):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - golden * (high - low)
            fa = bound_at(a)
        else:
            low, a, fa = a, b, fb
            b = low + golden * (high - low)
            fb = bound_at(b)
    mu = a if fa <= fb else b
    return _best_lambda(problem, values, mu), mu


def _token_feasible(problem: _Problem, rollouts: np.ndarray) -> bool:
    if problem.costs is None or problem.token_budget is None:
        return True
    return bool(problem.costs @ rollouts <= problem.token_budget)


def _hint(problem: _Problem, mu: float) -> np.ndarray | None:
    """Greedy allocation, priced by ``mu`` per token (raised until it fits) under a token budget."""
    rollouts = _greedy(problem)
    if _token_feasible(problem, rollouts):
        return rollouts
    assert problem.costs is not None
    price = mu if mu > 0 else 1.0 / max(float(problem.costs.max()), 1e-300)
    for _ in range(64):
        rollouts = _greedy(problem, penalty=price * problem.costs)
        if _token_feasible(problem, rollouts):
            return rollouts
        price *= 4.0
    return None


def _cpsat(problem: _Problem, start: float, time_limit_s: float, num_workers: int) -> SolverResult:
    """Exact solve: bound, prune, then CP-SAT on the prompts the bound cannot decide."""
    from ortools.sat.python import cp_model

    values = problem.used_values()
    lam, mu = _multipliers(problem, values)
    hint = _hint(problem, mu)
    hint_objective = None if hint is None else _objective(problem.table, hint)

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

    keep = np.isfinite(values)
    if hint is not None and hint_objective is not None:
        bound = _bound(problem, values, lam, mu)
        margin = bound.upper - hint_objective + _BOUND_RTOL * bound.scale
        keep &= bound.reduced <= margin
        keep[np.arange(hint.size), hint] = True
        if keep.sum() == hint.size:
            return result(hint, True, "OPTIMAL")

    model = cp_model.CpModel()
    choices = [np.flatnonzero(row) for row in keep]
    fixed = [c[0] if c.size == 1 else -1 for c in choices]
    free = [i for i, c in enumerate(choices) if c.size > 1]
    fixed_rollouts = sum(int(f) for f in fixed if f >= 0)
    spread = max((float(np.ptp(problem.table[i, choices[i]])) for i in free), default=0.0)
    unit = max(spread, 1e-300) * _OBJECTIVE_RESOLUTION
    picks: dict[int, list[tuple[int, cp_model.IntVar]]] = {}
    objective_terms = []
    for i in free:
        row = problem.table[i, choices[i]]
        picks[i] = [(int(n), model.new_bool_var(f"x{i}_{n}")) for n in choices[i]]
        model.add_exactly_one(var for _, var in picks[i])
        coefficients = np.rint((row - row.min()) / unit).astype(np.int64)
        objective_terms += [int(c) * var for c, (_, var) in zip(coefficients, picks[i])]
    model.add(sum(n * var for i in free for n, var in picks[i]) == problem.budget - fixed_rollouts)
    if problem.costs is not None and problem.token_budget is not None:
        # Rounded costs: every allocation within budget stays feasible (the right-hand side absorbs
        # the rounding); one chosen may overshoot the float budget by ~1e-12 relative.
        cost_unit = max(float(problem.costs @ problem.upper), 1e-300) / _COST_UNITS
        fixed_cost = sum(float(problem.costs[i]) * int(f) for i, f in enumerate(fixed) if f >= 0)
        scaled = np.round(problem.costs / cost_unit).astype(np.int64)
        rhs = int(np.floor((problem.token_budget - fixed_cost) / cost_unit + 0.5 * problem.budget + 1))
        model.add(sum(int(scaled[i]) * n * var for i in free for n, var in picks[i]) <= rhs)
    model.maximize(sum(objective_terms))
    if hint is not None:
        for i in free:
            for n, var in picks[i]:
                model.add_hint(var, int(n == hint[i]))

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = num_workers
    status = solver.solve(model)
    proven = status == cp_model.OPTIMAL
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        rollouts = np.array([f if f >= 0 else 0 for f in fixed], dtype=np.int64)
        for i in free:
            rollouts[i] = next(n for n, var in picks[i] if solver.boolean_value(var))
        if hint is None or _objective(problem.table, rollouts) >= hint_objective:
            return result(rollouts, proven, solver.status_name(status))
        return result(hint, proven, "HINT")
    if hint is not None:
        return result(hint, False, "HINT")
    raise ValueError(
        f"CP-SAT found no allocation within the token budget in {time_limit_s:g} s "
        f"(status {solver.status_name(status)}); raise knapsack_time_limit_s or token_budget."
    )

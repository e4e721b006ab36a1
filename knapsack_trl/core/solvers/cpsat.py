"""CP-SAT on the prompts the Lagrangian bound leaves undecided: exact, and the only one with a token budget."""

from __future__ import annotations

import numpy as np
from ortools.sat.python import cp_model

from knapsack_trl.core.solvers.lagrangian import BOUND_RTOL, Lagrangian, incumbent
from knapsack_trl.core.solvers.problem import Problem, SolverResult

# CP-SAT needs integer coefficients: objective values are scaled so one unit is this fraction of
# the largest value difference in play, token costs so the largest total cost is ~2**40 units.
_OBJECTIVE_RESOLUTION = 1e-10
_COST_BITS = 40
# A search cut by this much wall-clock time (x the deterministic limit) depends on the machine's load.
WALL_CLOCK_BACKSTOP = 20.0


def cpsat(problem: Problem, start: float, time_limit_s: float, num_workers: int) -> SolverResult:
    """Exact solve: bound, prune, then CP-SAT on the prompts the bound leaves undecided."""
    lagrangian = Lagrangian(problem)
    hint, lam, mu = incumbent(problem, lagrangian)
    hint_objective = problem.objective(hint)

    def result(rollouts: np.ndarray, optimal: bool, status: str) -> SolverResult:
        return problem.result(
            rollouts, start, optimal=optimal, solver="cpsat", status=status, hint_objective=hint_objective
        )

    upper, reduced, magnitude = lagrangian.upper_bound(lam, mu)
    keep = np.isfinite(lagrangian.values) & (reduced <= upper - hint_objective + BOUND_RTOL * magnitude)
    keep[np.arange(hint.size), hint] = True
    if keep.sum() == hint.size:  # every other allocation is provably worse than the hint
        return result(hint, True, "OPTIMAL")

    model, picks, fixed = _reduced_model(problem, keep, hint)
    solver = cp_model.CpSolver()
    # The limit is CP-SAT's deterministic time, so a search cut short stops at the same point on a loaded
    # machine as on an idle one: every run of a seed allocates alike. Wall-clock time only backs it up.
    solver.parameters.max_deterministic_time = time_limit_s
    solver.parameters.max_time_in_seconds = WALL_CLOCK_BACKSTOP * time_limit_s
    solver.parameters.num_workers = num_workers
    status = solver.solve(model)
    proven = status == cp_model.OPTIMAL
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        rollouts = fixed.copy()
        for i, options in picks.items():
            rollouts[i] = next(n for n, var in options if solver.boolean_value(var))
        if not problem.token_feasible(rollouts):  # float rounding of the cost sum only
            return result(hint, False, "HINT")
        if problem.objective(rollouts) >= hint_objective:
            return result(rollouts, proven, solver.status_name(status))
    return result(hint, proven, "HINT")


def _reduced_model(
    problem: Problem, keep: np.ndarray, hint: np.ndarray
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

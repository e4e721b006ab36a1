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

    model, classes, fixed = _reduced_model(problem, keep, hint)
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
        for members, options in classes:
            counts = {n: solver.value(var) for n, var in options}
            rollouts[members] = _hand_out(counts, hint[members])
        if not problem.token_feasible(rollouts):  # float rounding of the cost sum only
            return result(hint, False, "HINT")
        if problem.objective(rollouts) >= hint_objective:
            return result(rollouts, proven, solver.status_name(status))
    return result(hint, proven, "HINT")


Options = list[tuple[int, cp_model.IntVar]]


def alike_prompts(problem: Problem, open_rows: np.ndarray) -> list[np.ndarray]:
    """The open prompts in classes of prompts that are interchangeable: the same allowed counts, the same
    value for each and the same token cost. Ordered by first member; members in index order.

    Unseen candidates share one prior, so a pool of 4x candidates holds a few dozen classes, not hundreds
    of prompts: one count per class and value leaves CP-SAT no symmetric copies of a solution to search."""
    values = problem.used_values()
    costs = np.zeros(problem.lower.size) if problem.costs is None else problem.costs
    classes: dict[bytes, list[int]] = {}
    for i in open_rows.tolist():
        classes.setdefault(values[i].tobytes() + costs[i].tobytes(), []).append(i)
    return [np.array(members, dtype=np.int64) for members in classes.values()]


def _hand_out(counts: dict[int, int], hints: np.ndarray) -> np.ndarray:
    """Interchangeable prompts' rollouts from how many of them take each count: a prompt keeps its hint's
    count while that count lasts, the rest take what is left, smallest first, in index order."""
    left = dict(counts)
    out = np.full(hints.size, -1, dtype=np.int64)
    for j, n in enumerate(hints.tolist()):
        if left.get(n, 0) > 0:
            out[j], left[n] = n, left[n] - 1
    rest = [n for n in sorted(left) for _ in range(left[n])]
    out[out < 0] = rest
    return out


def _reduced_model(
    problem: Problem, keep: np.ndarray, hint: np.ndarray
) -> tuple[cp_model.CpModel, list[tuple[np.ndarray, Options]], np.ndarray]:
    """One integer per class of interchangeable open prompts and kept count: how many of the class take
    that count (a class keeps the counts any member keeps). Prompts with a single kept value are constants.

    Returns the model, each class's members and ``(n, how many)`` options, and the rollouts of the fixed
    prompts (0 for open ones). Values are scaled to integers at ``_OBJECTIVE_RESOLUTION`` of the largest
    value spread among open prompts; the float objective is recomputed after.
    """
    model = cp_model.CpModel()
    counts = keep.sum(axis=1)
    fixed = np.where(counts == 1, keep.argmax(axis=1), 0).astype(np.int64)
    rows, ns, variables, floors = [], [], [], []
    classes: list[tuple[np.ndarray, Options]] = []
    for members in alike_prompts(problem, np.flatnonzero(counts > 1)):
        kept = np.flatnonzero(keep[members].any(axis=0))
        hinted = np.bincount(hint[members], minlength=keep.shape[1])
        options: Options = []
        for n in kept.tolist():
            options.append((n, model.new_int_var(0, members.size, f"c{members[0]}_{n}")))
            model.add_hint(options[-1][1], int(hinted[n]))
        model.add(sum(var for _, var in options) == members.size)
        classes.append((members, options))
        rows += [int(members[0])] * kept.size
        ns += kept.tolist()
        variables += [var for _, var in options]
        floors += [float(problem.table[members[0], kept].min())] * kept.size
    rows_a, ns_a = np.array(rows, dtype=np.int64), np.array(ns, dtype=np.int64)
    values = problem.table[rows_a, ns_a] - np.array(floors)
    value_unit = max(float(values.max(initial=0.0)), 1e-300) * _OBJECTIVE_RESOLUTION
    gains = np.rint(values / value_unit).astype(np.int64)
    model.add(cp_model.LinearExpr.weighted_sum(variables, ns) == problem.budget - int(fixed.sum()))
    most = 0.0 if problem.costs is None else float(problem.costs @ problem.upper)
    if problem.costs is not None and problem.token_limit is not None and most > problem.token_limit:
        # Costs in power-of-two units (exact for whole-token costs), rounded up, and the budget
        # rounded down: whatever CP-SAT picks fits the float budget. Only allocations within
        # about B * 2**-40 of the largest possible cost can be lost. (A budget no allocation can
        # exceed needs no constraint.)
        unit = 2.0 ** (np.ceil(np.log2(max(most, float(problem.costs.max())))) - _COST_BITS)
        scaled = np.ceil(problem.costs / unit).astype(np.int64)
        room = int(np.floor(problem.token_limit / unit)) - int(scaled @ fixed)
        model.add(cp_model.LinearExpr.weighted_sum(variables, (scaled[rows_a] * ns_a).tolist()) <= room)
    model.maximize(cp_model.LinearExpr.weighted_sum(variables, gains.tolist()))
    return model, classes, fixed

"""Knapsack solvers that split a rollout budget across prompts.

Problem: maximise ``sum_i table[i, n_i]`` subject to ``sum_i n_i == budget`` and
``lower_i <= n_i <= upper_i`` (integers), optionally with ``sum_i costs_i * n_i <= token_budget``.
This is a multiple-choice knapsack: each prompt picks exactly one rollout count.

Three solvers, all pure numpy (plus OR-Tools CP-SAT), one module each:

- ``greedy``: marginal gains on a heap, milliseconds; exact when every row is concave on the
  range it may use (Knapsack RL's value is concave for ``n >= 1``). With prompts that may be skipped
  (0 or a whole group) it is a heuristic and says so (``optimal=False``).
- ``dp``: exact dynamic programme for any table. A Lagrangian bound against a greedy incumbent
  prunes its states (branch and bound), so it takes milliseconds where a full DP takes ~1 s.
- ``cpsat`` (default): exact, and the only one that takes a token budget. The same bound removes
  every value that provably cannot beat the greedy hint, so CP-SAT only sees the few undecided
  prompts, counted by class of interchangeable prompts (a pool of unseen candidates is one class); it
  never returns an allocation worse than its hint.

The Lagrangian multipliers (:mod:`.lagrangian`) come from each row's upper concave envelope, where
the relaxation is the LP relaxation: for Knapsack RL's value the bound usually proves the hint
optimal outright. :mod:`.problem` validates an instance once, before any work.
"""

from __future__ import annotations

import time

import numpy as np

from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.solvers.cpsat import cpsat
from knapsack_trl.core.solvers.dp import dp
from knapsack_trl.core.solvers.greedy import greedy, greedy_is_exact
from knapsack_trl.core.solvers.problem import SOLVERS, SolverResult, check_solver_name, validate

__all__ = ["SOLVERS", "SolverResult", "check_solver_name", "solve"]


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
    skippable: np.ndarray | bool | None = None,
) -> SolverResult:
    """Choose ``rollouts[i]`` in ``[lower_i, upper_i]`` summing to ``budget``, maximising value.

    ``table[i, n]`` is the value of giving prompt ``i`` ``n`` rollouts (at least
    ``max(upper) + 1`` columns). ``skippable`` (one boolean, or one per prompt) lets a prompt take 0
    instead: ``{0} u [lower_i, upper_i]``, a semi-continuous choice that dp and cpsat solve exactly
    and greedy only heuristically. ``costs``/``token_budget`` add ``sum_i costs_i n_i <=
    token_budget`` (to a relative 1e-9) and need ``solver="cpsat"``. ``time_limit_s`` and
    ``num_workers`` go to CP-SAT. Raises ValueError on any infeasible or malformed input, before
    doing any work; ``seconds`` in the result times everything after that check.
    """
    check_solver_name(solver)
    if costs is not None and solver != "cpsat":
        raise SettingError(f'token budgets need <solver>="cpsat"; got <solver>={solver!r}.')
    if not time_limit_s > 0:
        raise SettingError(f"<time_limit_s> must be > 0; got {time_limit_s}.")
    if int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1; got {num_workers}.")
    problem = validate(table, budget, lower, upper, costs, token_budget, skippable)
    start = time.perf_counter()
    if solver == "greedy":
        exact = greedy_is_exact(problem)
        status = "OPTIMAL" if exact else "FEASIBLE"
        return problem.result(greedy(problem), start, optimal=exact, solver="greedy", status=status)
    if solver == "dp":
        return problem.result(dp(problem), start, optimal=True, solver="dp", status="OPTIMAL")
    return cpsat(problem, start, time_limit_s, int(num_workers))

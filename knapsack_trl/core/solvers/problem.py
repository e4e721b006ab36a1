"""A validated knapsack instance: what every solver takes, and the checks that build it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.budget import cheapest_fill
from knapsack_trl.core.errors import SettingError

SOLVERS: tuple[str, ...] = ("cpsat", "dp", "greedy")
# The token budget is met to this relative slack, so a budget computed as the cheapest allocation's
# cost (summed in another order) is never refused for float rounding.
TOKEN_RTOL = 1e-9


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
    """Return ``name`` if it is a known solver, else raise a SettingError listing the choices."""
    if name not in SOLVERS:
        raise SettingError(f"<solver>={name!r} is not known; use one of {list(SOLVERS)}.")
    return name


@dataclass(frozen=True)
class Problem:
    """A validated instance: float64 table, int64 bounds, optional per-rollout token costs."""

    table: np.ndarray
    budget: int
    lower: np.ndarray
    upper: np.ndarray
    costs: np.ndarray | None = None
    token_limit: float | None = None  # token_budget plus TOKEN_RTOL

    @property
    def slack(self) -> int:
        """Rollouts left to place once every prompt has its floor."""
        return self.budget - int(self.lower.sum())

    def used_values(self) -> np.ndarray:
        """``table[:, :n_max+1]`` with -inf outside each prompt's ``[lower_i, upper_i]``."""
        n = np.arange(int(self.upper.max()) + 1)
        inside = (n >= self.lower[:, None]) & (n <= self.upper[:, None])
        return np.where(inside, self.table[:, : n.size], -np.inf)

    def objective(self, rollouts: np.ndarray) -> float:
        """``sum_i table[i, rollouts_i]``."""
        return float(self.table[np.arange(self.table.shape[0]), rollouts].sum())

    def token_feasible(self, rollouts: np.ndarray) -> bool:
        """Whether ``rollouts`` fit the token budget (always, without one)."""
        if self.costs is None or self.token_limit is None:
            return True
        return bool(self.costs @ rollouts <= self.token_limit)

    def cheapest(self) -> np.ndarray:
        """The allocation with the fewest tokens: floors, then the slack on the cheapest prompts."""
        assert self.costs is not None
        return cheapest_fill(self.costs, self.budget, self.lower, self.upper)

    def result(
        self,
        rollouts: np.ndarray,
        start: float,
        *,
        optimal: bool,
        solver: str,
        status: str,
        hint_objective: float | None = None,
    ) -> SolverResult:
        """A :class:`SolverResult` for ``rollouts``, timed from ``start`` (``time.perf_counter``)."""
        return SolverResult(
            rollouts=rollouts,
            objective=self.objective(rollouts),
            seconds=time.perf_counter() - start,
            optimal=optimal,
            solver=solver,
            status=status,
            hint_objective=hint_objective,
        )


def _as_bounds(value: np.ndarray | int, m: int, name: str, setting: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(m, arr)
    if arr.shape != (m,):
        raise ValueError(
            f"{name} must be a scalar or have one entry per prompt ({m}); got shape {arr.shape}."
        )
    if not np.isfinite(arr.astype(np.float64)).all() or (arr != np.round(arr)).any():
        raise SettingError(f"{name} must hold whole numbers of rollouts; check <{setting}>.")
    return arr.astype(np.int64)


def validate(
    table: np.ndarray,
    budget: int,
    lower: np.ndarray | int,
    upper: np.ndarray | int,
    costs: np.ndarray | None,
    token_budget: float | None,
) -> Problem:
    """Check the instance up front so every failure names the setting to change."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (prompts x rollout counts); got shape {table.shape}.")
    m = table.shape[0]
    if m == 0:
        raise ValueError("the batch is empty (0 prompts): there is nothing to allocate rollouts to.")
    lower, upper = _check_bounds(table, lower, upper)
    budget = _check_budget(budget, lower, upper)
    if costs is None:
        if token_budget is not None:
            raise ValueError("token_budget was given without costs (expected tokens per rollout per prompt).")
        return Problem(table, budget, lower, upper)
    return _with_costs(Problem(table, budget, lower, upper), costs, token_budget)


def _check_bounds(
    table: np.ndarray, lower: np.ndarray | int, upper: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray]:
    m = table.shape[0]
    lower = _as_bounds(lower, m, "lower", "n_min")
    upper = _as_bounds(upper, m, "upper", "n_max")
    if (lower < 0).any():
        raise SettingError(f"lower (<n_min>) must be >= 0; got {int(lower.min())}.")
    if (lower > upper).any():
        i = int(np.argmax(lower > upper))
        raise SettingError(
            f"lower > upper for prompt {i} ({int(lower[i])} > {int(upper[i])}); set <n_min> <= <n_max>."
        )
    if table.shape[1] < int(upper.max()) + 1:
        raise ValueError(
            f"table has {table.shape[1]} columns but upper (n_max) is {int(upper.max())}; "
            "build it with value_table(..., n_max) so it has n_max + 1 columns."
        )
    if not np.isfinite(table).all():
        rows = np.flatnonzero(~np.isfinite(table).all(axis=1))[:5].tolist()
        raise ValueError(f"table has NaN or inf values (rows {rows}); check the value function.")
    return lower, upper


def _check_budget(budget: int, lower: np.ndarray, upper: np.ndarray) -> int:
    if isinstance(budget, bool) or not float(budget).is_integer():
        raise SettingError(f"<budget> must be a whole number of rollouts; got {budget!r}.")
    budget = int(budget)
    if budget < lower.sum():
        raise SettingError(
            f"<budget> B is smaller than <n_min> x prompts: B = {budget} < {int(lower.sum())} "
            f"(sum of lower over {lower.size} prompts); raise <budget> or lower <n_min>."
        )
    if budget > upper.sum():
        raise SettingError(
            f"<budget> B is larger than <n_max> x prompts: B = {budget} > {int(upper.sum())} "
            f"(sum of upper over {upper.size} prompts); lower <budget> or raise <n_max>."
        )
    return budget


def _with_costs(problem: Problem, costs: np.ndarray, token_budget: float | None) -> Problem:
    m = problem.table.shape[0]
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    if costs.shape != (m,):
        raise ValueError(f"costs must have one entry per prompt ({m}); got shape {costs.shape}.")
    if not np.isfinite(costs).all() or (costs < 0).any():
        raise ValueError("costs (expected tokens per rollout) must be finite and >= 0.")
    if token_budget is None or not np.isfinite(token_budget):
        raise ValueError(
            "costs were given without a finite token_budget; pass token_budget (tokens per batch)."
        )
    limit = float(token_budget) + TOKEN_RTOL * abs(float(token_budget))
    problem = Problem(problem.table, problem.budget, problem.lower, problem.upper, costs, limit)
    cheapest = problem.cheapest()
    if not problem.token_feasible(cheapest):
        raise SettingError(
            f"token_budget {float(token_budget):g} is below the cheapest allocation of B = {problem.budget} "
            f"rollouts ({float(costs @ cheapest):g} tokens); raise token_budget or lower <budget>."
        )
    return problem

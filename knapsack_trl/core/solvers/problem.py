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
    """A validated instance: float64 table, int64 bounds, optional per-rollout token costs.

    ``skippable[i]``: prompt ``i`` may also take 0 rollouts, below its ``[lower_i, upper_i]`` (a
    semi-continuous choice: a candidate prompt gets no rollouts or a whole group). Only prompts whose
    ``lower`` is 2 or more are marked; for the others 0 is already next to their range (``lower`` is 0).
    """

    table: np.ndarray
    budget: int
    lower: np.ndarray
    upper: np.ndarray
    costs: np.ndarray | None = None
    token_limit: float | None = None  # token_budget plus TOKEN_RTOL
    skippable: np.ndarray | None = None

    @property
    def base(self) -> np.ndarray:
        """Each prompt's smallest allowed count: 0 where it may be skipped, else ``lower``."""
        return self.lower if self.skippable is None else np.where(self.skippable, 0, self.lower)

    @property
    def has_gaps(self) -> bool:
        """Whether some prompt's allowed counts are not one interval (0, then a gap, then its range)."""
        return self.skippable is not None and bool(self.skippable.any())

    @property
    def slack(self) -> int:
        """Rollouts left to place once every prompt has its smallest allowed count."""
        return self.budget - int(self.base.sum())

    def allowed(self) -> np.ndarray:
        """``allowed[i, n]``: prompt ``i`` may take ``n`` rollouts, for ``n = 0..max(upper)``."""
        n = np.arange(int(self.upper.max()) + 1)
        inside = (n >= self.lower[:, None]) & (n <= self.upper[:, None])
        if self.skippable is not None:
            inside |= self.skippable[:, None] & (n == 0)[None, :]
        return inside

    def used_values(self) -> np.ndarray:
        """``table[:, :n_max+1]`` with -inf wherever a prompt may not take that count."""
        inside = self.allowed()
        return np.where(inside, self.table[:, : inside.shape[1]], -np.inf)

    def any_allocation(self) -> np.ndarray:
        """Some feasible allocation, found by reachable sums prompt after prompt (``O(prompts x budget)``):
        the fallback when a heuristic cannot place a budget made of whole groups."""
        budget, m = self.budget, self.lower.size
        allowed = self.allowed()
        reach = np.zeros((m + 1, budget + 1), dtype=bool)
        reach[0, 0] = True
        for i in range(m):
            options = np.flatnonzero(allowed[i, : budget + 1])
            for n in options.tolist():
                reach[i + 1, n:] |= reach[i, : budget + 1 - n]
        assert reach[m, budget], "validate lets only budgets that split through"
        out = np.zeros(m, dtype=np.int64)
        left = budget
        for i in range(m - 1, -1, -1):
            n = next(n for n in np.flatnonzero(allowed[i, : left + 1]).tolist() if reach[i, left - n])
            out[i] = n
            left -= n
        return out

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
    skippable: np.ndarray | bool | None = None,
) -> Problem:
    """Check the instance up front so every failure names the setting to change."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (prompts x rollout counts); got shape {table.shape}.")
    m = table.shape[0]
    if m == 0:
        raise ValueError("the batch is empty (0 prompts): there is nothing to allocate rollouts to.")
    lower, upper = _check_bounds(table, lower, upper)
    lower, skip = _check_skippable(skippable, lower)
    budget = _check_budget(budget, lower, upper, skip)
    if costs is None:
        if token_budget is not None:
            raise ValueError("token_budget was given without costs (expected tokens per rollout per prompt).")
        return Problem(table, budget, lower, upper, skippable=skip)
    if skip is not None:
        raise SettingError(
            "a token budget does not combine with prompts that may be skipped (candidates): the cheapest "
            "allocation is then a search of its own. Turn <token_cost> off or skip no prompt."
        )
    return _with_costs(Problem(table, budget, lower, upper), costs, token_budget)


def _check_skippable(
    skippable: np.ndarray | bool | None, lower: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(lower, skippable)`` normalised: a skippable prompt whose ``lower`` is 1 or less takes any count
    from 0 (its lower becomes 0); None when no prompt keeps a gap below its range."""
    if skippable is None:
        return lower, None
    skip = np.asarray(skippable)
    if skip.dtype != np.bool_:
        raise ValueError(f"skippable must be booleans, one per prompt or one for all; got {skip.dtype}.")
    skip = np.broadcast_to(skip, lower.shape).copy() if skip.ndim == 0 else skip.reshape(-1)
    if skip.shape != lower.shape:
        raise ValueError(
            f"skippable must be one boolean or one per prompt ({lower.size}); got shape {skip.shape}."
        )
    lower = np.where(skip & (lower <= 1), 0, lower)
    skip = skip & (lower >= 2)
    return lower, (skip if skip.any() else None)


def reachable_budgets(
    lower: np.ndarray, upper: np.ndarray, skippable: np.ndarray | None, limit: int
) -> np.ndarray:
    """``reachable[b]`` for ``b = 0..limit``: some allocation within the bounds (0 allowed where
    ``skippable``) sums to ``b``. The prompts that may not be skipped give one interval of sums; prompts
    that may, grouped by their bounds, ``k`` of a group give every sum from ``k x lower`` to ``k x upper``."""
    limit = int(limit)
    b = np.arange(limit + 1)
    skip = np.zeros(lower.size, dtype=bool) if skippable is None else skippable
    low, high = int(lower[~skip].sum()), int(upper[~skip].sum())
    groups: dict[tuple[int, int], int] = {}
    for lo, hi in zip(lower[skip].tolist(), upper[skip].tolist()):
        groups[(lo, hi)] = groups.get((lo, hi), 0) + 1
    if len(groups) <= 1:  # one interval per number of groups taken: no search
        (lo, hi), count = next(iter(groups.items())) if groups else ((0, 0), 0)
        reach = np.zeros(limit + 1, dtype=bool)
        for k in range(count + 1):
            if low + k * lo > limit:
                break
            reach[low + k * lo : min(high + k * hi, limit) + 1] = True
        return reach
    reach = (low <= b) & (b <= high)
    for (lo, hi), count in groups.items():
        prefix = np.concatenate([[0], np.cumsum(reach)])
        for k in range(1, count + 1):
            if k * lo > limit:
                break
            # any(before[b - k hi .. b - k lo]), read off the prefix sums
            top, bottom = np.clip(b - k * lo + 1, 0, limit + 1), np.clip(b - k * hi, 0, limit + 1)
            reach |= (top > bottom) & (prefix[top] > prefix[bottom])
    return reach


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


def _check_budget(budget: int, lower: np.ndarray, upper: np.ndarray, skippable: np.ndarray | None) -> int:
    if isinstance(budget, bool) or not float(budget).is_integer():
        raise SettingError(f"<budget> must be a whole number of rollouts; got {budget!r}.")
    budget = int(budget)
    if skippable is not None:
        _check_budget_with_skips(budget, lower, upper, skippable)
        return budget
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


def _check_budget_with_skips(
    budget: int, lower: np.ndarray, upper: np.ndarray, skippable: np.ndarray
) -> None:
    """Some prompts may take 0: the budget must be a sum of whole groups within the bounds."""
    if budget < 0:
        raise SettingError(f"<budget> must be >= 0 rollouts; got {budget}.")
    if budget > upper.sum():
        raise SettingError(
            f"<budget> B is larger than <n_max> x prompts: B = {budget} > {int(upper.sum())} "
            f"(sum of upper over {upper.size} prompts); lower <budget> or raise <n_max>."
        )
    if reachable_budgets(lower, upper, skippable, budget)[budget]:
        return
    reach = reachable_budgets(lower, upper, skippable, int(upper.sum()))
    below = np.flatnonzero(reach[:budget])
    above = budget + np.flatnonzero(reach[budget:])
    nearest = ", ".join(
        str(int(b))
        for b in (below[-1] if below.size else None, above[0] if above.size else None)
        if b is not None
    )
    raise SettingError(
        f"<budget> B = {budget} rollouts cannot be split into whole groups of <n_min>..<n_max> rollouts "
        f"(prompts skipped get 0; here from {int(lower[skippable].min())} to {int(upper.max())} each over "
        f"{upper.size} prompts): k groups take between k x n_min and k x n_max rollouts. The nearest budgets "
        f"that split are {nearest}; change <budget>, lower <n_min> or raise <n_max>."
    )


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

"""Turn prompt statistics into rollouts per prompt: the Knapsack RL allocation.

Prompts whose recent rollouts all failed ("zero") or all succeeded ("one") carry no gradient and get a
small fixed budget; prompts with no history get the uniform budget; the rest ("mixed", plus unseen
prompts a value head can estimate) share what is left by solving a knapsack over ``v(n, p)``. This
follows the reference code (liziniu/KnapsackRL ``sampling_budget_by_knapsack``); the schedules and the
token-cost mode are this package's additions and are off by default.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knapsack_trl.core.schedule import BudgetSchedule
from knapsack_trl.core.solvers import SolverResult, check_solver_name, solve
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.core.values import (
    ValueFunction,
    get_value_function,
    nonzero_gradient_probability,
    value_table,
)

_STATE_VERSION = 1
BUCKETS = ("unseen", "zero", "one", "mixed")


@dataclass
class AllocatorConfig:
    """Allocator settings; each field ``x`` is the trainer config field ``knapsack_x``.

    ``zero_success_budget`` / ``full_success_budget`` are the reference's ``negative_n`` /
    ``positive_n``. Schedules are strings such as ``"cosine:128:32"`` (see :mod:`.schedule`).
    """

    n_min: int = 2
    n_max: int = 128
    solver: str = "cpsat"
    value_function: str | Callable[..., Any] = "knapsack"
    zero_success_budget: int = 2
    full_success_budget: int = 2
    time_limit_s: float = 1.0
    token_cost: bool = False
    n_max_schedule: str | None = None
    exploration_schedule: str | None = None
    total_steps: int | None = None

    def validate(self) -> None:
        """Raise a ValueError naming the ``knapsack_*`` field for any setting that can never work."""
        for name in ("n_min", "n_max", "zero_success_budget", "full_success_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"knapsack_{name}={value!r} must be an integer.")
        if self.n_min < 0:
            raise ValueError(f"knapsack_n_min={self.n_min} must be >= 0.")
        if self.n_max < 1:
            raise ValueError(f"knapsack_n_max={self.n_max} must be >= 1.")
        if self.n_min > self.n_max:
            raise ValueError(
                f"knapsack_n_min={self.n_min} is larger than knapsack_n_max={self.n_max}; lower knapsack_n_min."
            )
        _check_fixed_budgets(self, self.n_min, self.n_max)
        try:
            self.solver = check_solver_name(self.solver)
        except ValueError as err:
            raise ValueError(f"knapsack_solver: {err}") from None
        get_value_function(self.value_function)
        if not (isinstance(self.time_limit_s, (int, float)) and self.time_limit_s > 0):
            raise ValueError(
                f"knapsack_time_limit_s={self.time_limit_s!r} must be a positive number of seconds."
            )
        if self.token_cost and self.solver != "cpsat":
            raise ValueError(
                f"knapsack_token_cost=True needs knapsack_solver='cpsat' (got {self.solver!r}): "
                "only CP-SAT takes the token budget as a second constraint."
            )
        if self.total_steps is not None and (isinstance(self.total_steps, bool) or self.total_steps < 1):
            raise ValueError(f"knapsack_total_steps={self.total_steps!r} must be an integer >= 1.")
        schedule = self.budget_schedule()
        if self.n_max_schedule is not None:
            lowest = math.floor(schedule.n_max.bounds[0] + 0.5)
            if lowest < self.n_min:
                raise ValueError(
                    f"knapsack_n_max_schedule={self.n_max_schedule!r} goes down to n_max={lowest}, below "
                    f"knapsack_n_min={self.n_min}; raise the schedule's end or lower knapsack_n_min."
                )
            try:
                _check_fixed_budgets(self, self.n_min, lowest)
            except ValueError as err:
                raise ValueError(f"{err} (knapsack_n_max_schedule goes down to {lowest})") from None

    def budget_schedule(self) -> BudgetSchedule:
        """The ``n_max`` and exploration schedules these fields describe."""
        return BudgetSchedule.from_config(
            self.n_max, self.n_max_schedule, self.exploration_schedule, total_steps=self.total_steps
        )


@dataclass(frozen=True, eq=False)
class Allocation:
    """Rollouts per prompt for one generation batch, with what the decision was based on."""

    rollouts_per_prompt: np.ndarray
    success_rate: np.ndarray
    bucket: np.ndarray
    expected_value: float
    uniform_expected_value: float
    solver_result: SolverResult | None
    n_max: int = 0
    exploration_share: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging (no prefix). Expectations are NaN when no prompt has an estimate."""
        n = self.rollouts_per_prompt
        uni = uniform_allocation(int(n.sum()), n.size)
        known = ~np.isnan(self.success_rate)
        p = self.success_rate[known]
        q = nonzero_gradient_probability(n[known], p)
        q_uni = nonzero_gradient_probability(uni[known], p)
        res = self.solver_result
        out = {
            "rollouts_min": float(n.min()),
            "rollouts_mean": float(n.mean()),
            "rollouts_max": float(n.max()),
            "expected_nonzero_groups": _mean(q),
            "expected_nonzero_groups_uniform": _mean(q_uni),
            "expected_nonzero_rollouts": _weighted(q, n[known]),
            "expected_nonzero_rollouts_uniform": _weighted(q_uni, uni[known]),
            "expected_value": float(self.expected_value),
            "uniform_expected_value": float(self.uniform_expected_value),
            "solver_seconds": 0.0 if res is None else float(res.seconds),
            "solver_optimal": 1.0 if res is None else float(bool(res.optimal)),
            "n_max": float(self.n_max),
            "exploration_share": float(self.exploration_share),
        }
        for name in BUCKETS:
            out[f"prompts_{name}"] = float(np.count_nonzero(self.bucket == name))
        return out


def uniform_allocation(budget: int, num_prompts: int) -> np.ndarray:
    """``budget // M`` each, the remainder one apiece to the first prompts (sums to ``budget``)."""
    base, rem = divmod(int(budget), int(num_prompts))
    out = np.full(int(num_prompts), base, dtype=np.int64)
    out[:rem] += 1
    return out


class KnapsackRolloutAllocator:
    """Decide each prompt's rollout count from its success history; learn from observed rewards.

    Deterministic: the same tracker state, ids, budget, step and priors give the same allocation.
    The config is validated and read once, at construction.
    """

    def __init__(
        self, config: AllocatorConfig | None = None, tracker: SuccessRateTracker | None = None
    ) -> None:
        self.config = AllocatorConfig() if config is None else config
        self.config.validate()
        self.tracker = SuccessRateTracker() if tracker is None else tracker
        self._schedule = self.config.budget_schedule()
        self._value_fn: ValueFunction = get_value_function(self.config.value_function)

    def n_max_at(self, step: int) -> int:
        """``n_max`` in force at ``step`` (the schedule's, else the config's)."""
        return self._schedule.n_max_at(step)

    def allocate(
        self,
        prompt_ids: Sequence[str],
        budget: int,
        *,
        step: int = 0,
        prior_success_rate: np.ndarray | None = None,
        uniform: bool = False,
    ) -> Allocation:
        """Rollouts per prompt summing to ``budget``, each within [n_min, n_max].

        ``prior_success_rate`` (e.g. a value head's prediction, NaN = none) gives unseen prompts an
        estimate so they join the knapsack, and is the prior mean for seen ones. ``uniform=True``
        returns the uniform allocation with the same diagnostics.
        """
        cfg = self.config
        ids = [str(p) for p in prompt_ids]
        m = len(ids)
        if m == 0:
            raise ValueError("allocate got an empty batch: pass at least one prompt id.")
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
            raise ValueError(f"knapsack budget={budget!r} must be an integer number of rollouts.")
        budget = int(budget)
        n_min, n_max = cfg.n_min, self.n_max_at(step)
        if n_min > n_max:
            raise ValueError(
                f"knapsack_n_min={n_min} is larger than knapsack_n_max={n_max} at step {step} "
                "(knapsack_n_max_schedule); lower knapsack_n_min or raise the schedule's end."
            )
        _check_fixed_budgets(cfg, n_min, n_max)
        if budget < n_min * m:
            raise ValueError(
                f"knapsack budget {budget} is smaller than knapsack_n_min x prompts = {n_min} x {m} = "
                f"{n_min * m}; raise num_generations or lower knapsack_n_min."
            )
        if budget > n_max * m:
            raise ValueError(
                f"knapsack budget {budget} is larger than knapsack_n_max x prompts = {n_max} x {m} = "
                f"{n_max * m}; raise knapsack_n_max or lower num_generations."
            )
        prior = _check_prior(prior_success_rate, m)

        st = self.tracker.stats(ids)
        seen = st.num_observations > 0
        zero = seen & (st.successes == 0)
        one = seen & ~zero & (st.successes == st.num_observations)
        mixed = seen & ~zero & ~one
        estimated = ~seen & ~np.isnan(prior)
        bucket = np.full(m, "unseen", dtype="<U6")
        bucket[zero], bucket[one], bucket[mixed] = "zero", "one", "mixed"

        p = np.full(m, np.nan)
        p[zero], p[one] = 0.0, 1.0
        p[mixed] = self.tracker.success_rate(ids, prior_mean=prior)[mixed]
        p[estimated] = prior[estimated]

        uni = uniform_allocation(budget, m)
        share = self._schedule.exploration_share_at(step)
        if uniform:
            n, result = uni.copy(), None
        else:
            n, result = self._knapsack(
                budget,
                n_min,
                n_max,
                share,
                p,
                zero,
                one,
                ~seen & ~estimated,
                mixed | estimated,
                uni,
                st.mean_length,
            )
        if int(n.sum()) != budget or n.min() < n_min or n.max() > n_max:
            raise RuntimeError(
                f"allocation broke its invariants (sum {int(n.sum())} vs budget {budget}, range "
                f"[{n.min()}, {n.max()}] vs [{n_min}, {n_max}]); please report this as a bug."
            )
        return Allocation(
            rollouts_per_prompt=n,
            success_rate=p,
            bucket=bucket,
            expected_value=self._expected_value(n, p),
            uniform_expected_value=self._expected_value(uni, p),
            solver_result=result,
            n_max=n_max,
            exploration_share=share,
        )

    def _knapsack(
        self,
        budget: int,
        n_min: int,
        n_max: int,
        share: float,
        p: np.ndarray,
        zero: np.ndarray,
        one: np.ndarray,
        unknown: np.ndarray,
        knap: np.ndarray,
        uni: np.ndarray,
        mean_length: np.ndarray,
    ) -> tuple[np.ndarray, SolverResult | None]:
        """Fixed budgets first, exploration reserve, deficit/surplus repair, then the knapsack."""
        cfg = self.config
        n = np.zeros(p.size, dtype=np.int64)
        n[zero] = cfg.zero_success_budget
        n[one] = cfg.full_success_budget
        n[unknown] = uni[unknown]
        fixed = ~knap
        k = int(np.count_nonzero(knap))

        explore = zero | unknown
        if share > 0 and explore.any():
            # Never reserve what the other prompts need for their floor.
            room = budget - n_min * int(np.count_nonzero(~explore))
            reserve = min(math.floor(share * budget), room)
            n[explore], _ = _fill_evenly(n[explore], reserve - int(n[explore].sum()), n_max)

        rest = budget - int(n[fixed].sum())
        if rest < n_min * k:
            n[fixed], short = _drain_evenly(n[fixed], n_min * k - rest, n_min)
            if short:
                raise ValueError(
                    f"knapsack budget {budget} cannot give every prompt knapsack_n_min={n_min}; "
                    "raise num_generations or lower knapsack_n_min."
                )
            rest = budget - int(n[fixed].sum())

        if rest >= n_max * k:
            # The knapsack prompts cannot absorb the rest: reference order, p = 0 prompts first.
            n[knap] = n_max
            surplus = rest - n_max * k
            for group in (zero, unknown, one):
                if surplus > 0 and group.any():
                    n[group], surplus = _fill_evenly(n[group], surplus, n_max)
            if surplus:
                raise RuntimeError(f"{surplus} rollouts could not be placed under knapsack_n_max={n_max}.")
            return n, None

        table = value_table(self._value_fn, p[knap], n_max)
        lower = np.full(k, n_min, dtype=np.int64)
        upper = np.full(k, n_max, dtype=np.int64)
        costs = token_budget = None
        if cfg.token_cost:
            all_costs = _token_costs(mean_length)
            costs = all_costs[knap]
            spend = float(np.dot(all_costs, uni)) - float(np.dot(all_costs[fixed], n[fixed]))
            # Never demand fewer tokens than the cheapest way to place ``rest`` rollouts.
            token_budget = max(spend, _min_cost(costs, rest, n_min, n_max))
        result = solve(
            table,
            rest,
            lower,
            upper,
            solver=cfg.solver,
            costs=costs,
            token_budget=token_budget,
            time_limit_s=float(cfg.time_limit_s),
        )
        n[knap] = np.asarray(result.rollouts, dtype=np.int64)
        return n, result

    def _expected_value(self, n: np.ndarray, p: np.ndarray) -> float:
        """Sum of ``v(n_i, p_i)`` over prompts with an estimate (``v(0, p) = 0``)."""
        known = ~np.isnan(p)
        if not known.any():
            return 0.0
        nk = n[known].astype(np.float64)
        v = np.asarray(self._value_fn(nk, p[known]), dtype=np.float64)
        return float(np.where(nk == 0, 0.0, np.broadcast_to(v, nk.shape)).sum())

    def observe(
        self,
        prompt_ids: Sequence[str],
        rewards: Sequence[float | None],
        completion_lengths: Sequence[float | None] | None = None,
        step: int = 0,
    ) -> None:
        """Record one batch of rollouts (one entry per rollout) in the tracker."""
        self.tracker.observe(prompt_ids, rewards, completion_lengths, step=step)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; with the same config, a resumed allocator decides exactly as before.

        The allocation is a pure function of the tracker, the config and the step, so the tracker's
        state is all there is to save.
        """
        return {"version": _STATE_VERSION, "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the tracker keeps its saved settings (warns if they differ)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"allocator state version {state.get('version')!r} is not supported (expected {_STATE_VERSION})."
            )
        saved = state["tracker"].get("config", {})
        current = self.tracker.config()
        changed = sorted(k for k in saved if current.get(k) != saved[k])
        if changed:
            warnings.warn(
                "the saved success-rate tracker was built with different settings "
                + ", ".join(f"{k}={saved[k]!r} (now {current.get(k)!r})" for k in changed)
                + "; the saved settings are kept so the history stays consistent.",
                stacklevel=2,
            )
        self.tracker.load_state_dict(state["tracker"])


def _check_fixed_budgets(cfg: AllocatorConfig, n_min: int, n_max: int) -> None:
    """The zero/one buckets' budgets must lie inside [n_min, n_max]."""
    for name in ("zero_success_budget", "full_success_budget"):
        value = getattr(cfg, name)
        if not n_min <= value <= n_max:
            raise ValueError(
                f"knapsack_{name}={value} must lie in [knapsack_n_min, knapsack_n_max] = [{n_min}, {n_max}]."
            )


def _check_prior(prior: np.ndarray | None, m: int) -> np.ndarray:
    """Validated per-prompt prior (NaN = no estimate), all NaN when absent."""
    if prior is None:
        return np.full(m, np.nan)
    arr = np.asarray(prior, dtype=np.float64).reshape(-1)
    if arr.size != m:
        raise ValueError(f"prior_success_rate has {arr.size} entries for {m} prompts; pass one per prompt.")
    known = arr[~np.isnan(arr)]
    if ((known < 0) | (known > 1)).any():
        raise ValueError(
            f"prior_success_rate must lie in [0, 1] (NaN = unknown); got {known[(known < 0) | (known > 1)][:5]}."
        )
    return arr


def _fill_evenly(a: np.ndarray, extra: int, cap: int) -> tuple[np.ndarray, int]:
    """Add ``extra`` units raising the lowest entries first (water-filling), none above ``cap``.

    Returns the new entries and the units that did not fit. Ties go to the earliest index.
    """
    a = np.asarray(a, dtype=np.int64).copy()
    if extra <= 0 or a.size == 0:
        return a, max(int(extra), 0)
    room = np.maximum(cap - a, 0)
    total = int(room.sum())
    if extra >= total:
        return a + room, int(extra - total)
    lo, hi = int(a.min()), int(cap)  # filled(lo) <= extra < filled(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(np.minimum(np.maximum(mid - a, 0), room).sum()) <= extra:
            lo = mid
        else:
            hi = mid
    new = a + np.minimum(np.maximum(lo - a, 0), room)
    left = int(extra - (new - a).sum())
    new[np.flatnonzero(new == lo)[:left]] += 1
    return new, 0


def _drain_evenly(a: np.ndarray, deficit: int, floor: int) -> tuple[np.ndarray, int]:
    """Remove ``deficit`` units lowering the highest entries first, none below ``floor``."""
    new, short = _fill_evenly(-np.asarray(a, dtype=np.int64), deficit, -floor)
    return -new, short


def _token_costs(mean_length: np.ndarray) -> np.ndarray:
    """Tokens per rollout: the tracker's mean length, unknown ones the mean of the known, else 1."""
    costs = np.asarray(mean_length, dtype=np.float64).copy()
    known = np.isfinite(costs)
    costs[~known] = costs[known].mean() if known.any() else 1.0
    return np.maximum(costs, 1.0)


def _min_cost(costs: np.ndarray, total: int, n_min: int, n_max: int) -> float:
    """Fewest tokens that place exactly ``total`` rollouts within [n_min, n_max]: cheapest first."""
    extra = total - n_min * costs.size
    spent = float(costs.sum()) * n_min
    for c in np.sort(costs):
        take = min(extra, n_max - n_min)
        if take <= 0:
            break
        spent += float(c) * take
        extra -= take
    return spent


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def _weighted(q: np.ndarray, w: np.ndarray) -> float:
    total = float(w.sum())
    return float(np.dot(q, w) / total) if total > 0 else math.nan

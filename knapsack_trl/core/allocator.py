"""Turn prompt statistics into rollouts per prompt: the allocation rules.

Two rules share one budget, one set of bounds ``[n_min, n_max]`` and one solver:

- ``posterior``: each prompt's success rate is a posterior over a grid, from its own outcomes and a
  population prior fitted to every prompt's history (empirical Bayes, :mod:`.posterior`). One knapsack
  over all prompts maximises the expected value; with the ``nonzero_gradient`` value that is the
  expected number of prompts whose group has mixed rewards, the prompts that give a gradient.
- ``buckets``: the paper's rule (liziniu/KnapsackRL, ``verl/trainer/ppo/exploration_utils.py``,
  ``sampling_budget_by_knapsack``). Prompts whose history is all failures / all successes get small
  fixed budgets, prompts with too little history the uniform budget, and the mixed ones share the
  rest by a knapsack over ``v(n, p)`` at their point estimate. With the cost-based fallback the
  knapsack only gets what the mixed prompts need for a ``fallback_confidence`` chance of a mixed group;
  the surplus goes evenly to the all-fail and unseen prompts.

The schedules and the token-cost mode are this package's additions and are off by default.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knapsack_trl.core.budget import add_evenly, drain_evenly, fill_evenly, uniform_allocation
from knapsack_trl.core.posterior import PopulationPrior, Posterior
from knapsack_trl.core.schedule import BudgetSchedule
from knapsack_trl.core.solvers import SolverResult, check_solver_name, solve
from knapsack_trl.core.tracker import PromptStats, SuccessRateTracker
from knapsack_trl.core.values import (
    ValueFunction,
    get_value_function,
    nonzero_gradient_probability,
    value_table,
)

__all__ = [
    "BUCKETS",
    "RULES",
    "Allocation",
    "AllocatorConfig",
    "KnapsackRolloutAllocator",
    "uniform_allocation",
]

_STATE_VERSION = 1
BUCKETS = ("unseen", "zero", "one", "mixed")
RULES = ("posterior", "buckets")


@dataclass
class AllocatorConfig:
    """Allocator settings; each field ``x`` is the trainer config field ``knapsack_x``.

    ``zero_success_budget`` / ``full_success_budget`` are the reference's ``negative_n`` /
    ``positive_n``; ``fallback_confidence`` is its ``alpha``. ``min_observations``: a prompt's history
    is used only from that many outcomes (the reference: 8); before that it counts as unseen.
    Schedules are strings such as ``"cosine:128:32"`` (see :mod:`.schedule`).
    """

    rule: str = "posterior"
    n_min: int = 2
    n_max: int = 128
    solver: str = "cpsat"
    value_function: str | Callable[..., Any] = "nonzero_gradient"
    zero_success_budget: int = 2
    full_success_budget: int = 2
    fallback: bool = True
    fallback_confidence: float = 0.9
    min_observations: int = 1
    time_limit_s: float = 1.0
    token_cost: bool = False
    n_max_schedule: str | None = None
    exploration_schedule: str | None = None
    total_steps: int | None = None

    def validate(self) -> None:
        """Raise a ValueError naming the ``knapsack_*`` field for any setting that can never work."""
        if self.rule not in RULES:
            raise ValueError(f"knapsack_rule={self.rule!r} is not known; use one of {list(RULES)}.")
        for name in ("n_min", "n_max", "zero_success_budget", "full_success_budget", "min_observations"):
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
        if self.min_observations < 1:
            raise ValueError(
                f"knapsack_min_observations={self.min_observations} must be >= 1 (1 = use any history; "
                "the reference uses 8)."
            )
        if not isinstance(self.fallback, bool):
            raise ValueError(f"knapsack_fallback={self.fallback!r} must be True or False.")
        conf = self.fallback_confidence
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 < conf < 1.0:
            raise ValueError(
                f"knapsack_fallback_confidence={conf!r} must lie strictly between 0 and 1 (the reference: 0.9)."
            )
        if self.rule == "buckets":
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
        if self.rule == "posterior" and self.exploration_schedule is not None:
            raise ValueError(
                f"knapsack_exploration_schedule={self.exploration_schedule!r} reserves budget for the buckets "
                "rule's all-fail and unseen prompts; knapsack_rule='posterior' values those by their posterior "
                "instead. Unset the schedule or set knapsack_rule='buckets'."
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
                if self.rule == "buckets":
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
    """Rollouts per prompt for one generation batch, with what the decision was based on.

    ``expected_informative`` / ``uniform_expected_informative``: expected number of prompts whose
    group has mixed outcomes under this allocation / the uniform split, from the same posterior
    (population prior plus each prompt's history), whichever rule decided.
    """

    rollouts_per_prompt: np.ndarray
    success_rate: np.ndarray
    bucket: np.ndarray
    expected_value: float
    uniform_expected_value: float
    expected_informative: float
    uniform_expected_informative: float
    solver_result: SolverResult | None
    n_max: int = 0
    exploration_share: float = 0.0
    fallback_rollouts: int = 0

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging (no prefix)."""
        n = self.rollouts_per_prompt
        res = self.solver_result
        out = {
            "rollouts_min": float(n.min()),
            "rollouts_mean": float(n.mean()),
            "rollouts_max": float(n.max()),
            "informative_prompts_expected": float(self.expected_informative),
            "informative_prompts_uniform_expected": float(self.uniform_expected_informative),
            "expected_value": float(self.expected_value),
            "uniform_expected_value": float(self.uniform_expected_value),
            "fallback_rollouts": float(self.fallback_rollouts),
            "solver_seconds": 0.0 if res is None else float(res.seconds),
            "solver_optimal": 1.0 if res is None else float(bool(res.optimal)),
            "n_max": float(self.n_max),
            "exploration_share": float(self.exploration_share),
        }
        for name in BUCKETS:
            out[f"prompts_{name}"] = float(np.count_nonzero(self.bucket == name))
        return out


@dataclass(frozen=True)
class _Batch:
    """What the rules see of one batch: counts behind each estimate, buckets, beliefs."""

    bucket: np.ndarray
    point: np.ndarray  # the buckets rule's p (NaN: none)
    posterior: Posterior
    uniform: np.ndarray
    mean_length: np.ndarray


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

    def population_prior(self) -> PopulationPrior:
        """The success-rate distribution fitted to every tracked prompt's history (a pure function of it)."""
        pairs, prompts = self.tracker.count_histogram()
        return PopulationPrior.fit(pairs[:, 0], pairs[:, 1], prompts)

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

        ``prior_success_rate`` (e.g. a value head's prediction, NaN = none): in the buckets rule it
        gives unseen prompts an estimate so they join the knapsack and is the prior mean for seen ones;
        in the posterior rule it counts as ``tracker.prior_strength`` pseudo-outcomes at that rate.
        ``uniform=True`` returns the uniform allocation with the same diagnostics.
        """
        cfg = self.config
        ids = [str(p) for p in prompt_ids]
        m = len(ids)
        budget, n_min, n_max = self._bounds(budget, m, step)
        batch = self._batch(ids, budget, _check_prior(prior_success_rate, m))
        share = self._schedule.exploration_share_at(step)
        moved, result = 0, None
        if uniform:
            n = batch.uniform.copy()
        elif cfg.rule == "posterior":
            n, result = self._posterior_rule(budget, n_min, n_max, batch)
        else:
            n, result, moved = self._buckets_rule(budget, n_min, n_max, share, batch)
        if int(n.sum()) != budget or n.min() < n_min or n.max() > n_max:
            raise RuntimeError(
                f"allocation broke its invariants (sum {int(n.sum())} vs budget {budget}, range "
                f"[{n.min()}, {n.max()}] vs [{n_min}, {n_max}]); please report this as a bug."
            )
        post = batch.posterior
        return Allocation(
            rollouts_per_prompt=n,
            success_rate=post.mean if cfg.rule == "posterior" else batch.point,
            bucket=batch.bucket,
            expected_value=self._expected_value(n, batch),
            uniform_expected_value=self._expected_value(batch.uniform, batch),
            expected_informative=float(post.nonzero_gradient(n).sum()),
            uniform_expected_informative=float(post.nonzero_gradient(batch.uniform).sum()),
            solver_result=result,
            n_max=n_max,
            exploration_share=share,
            fallback_rollouts=moved,
        )

    def allocate_known(self, success_rate: np.ndarray, budget: int, *, step: int = 0) -> Allocation:
        """The allocation if each prompt's success rate were known: the knapsack on the configured value
        at exactly these rates, every prompt in it (with ``nonzero_gradient``, the count oracle)."""
        p = np.asarray(success_rate, dtype=np.float64).reshape(-1)
        budget, n_min, n_max = self._bounds(budget, p.size, step)
        table = value_table(self._value_fn, p, n_max)
        result = self._solve(table, budget, n_min, n_max, None, None)
        n = np.asarray(result.rollouts, dtype=np.int64)
        uni = uniform_allocation(budget, p.size)
        bucket = np.where(p == 0, "zero", np.where(p == 1, "one", "mixed")).astype("<U6")
        rows = np.arange(p.size)
        return Allocation(
            rollouts_per_prompt=n,
            success_rate=p,
            bucket=bucket,
            expected_value=float(table[rows, n].sum()),
            uniform_expected_value=float(table[rows, uni].sum()),
            expected_informative=float(nonzero_gradient_probability(n, p).sum()),
            uniform_expected_informative=float(nonzero_gradient_probability(uni, p).sum()),
            solver_result=result,
            n_max=n_max,
        )

    def _bounds(self, budget: int, m: int, step: int) -> tuple[int, int, int]:
        """``(budget, n_min, n_max)`` at ``step``, or a ValueError naming the setting to change."""
        cfg = self.config
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
        if cfg.rule == "buckets":
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
        return budget, n_min, n_max

    def posterior(
        self,
        prompt_ids: Sequence[str],
        prior_success_rate: np.ndarray | None = None,
        *,
        successes: np.ndarray | None = None,
        trials: np.ndarray | None = None,
    ) -> Posterior:
        """Each prompt's beliefs as the posterior rule holds them (population prior, the history that
        passes the validity rule, ``prior_success_rate`` as in :meth:`allocate`), times the likelihood
        of ``successes`` out of ``trials`` fresh outcomes the tracker has not seen (a pilot round's)."""
        ids = [str(p) for p in prompt_ids]
        prior = _check_prior(prior_success_rate, len(ids))
        s, n = self._valid_counts(self.tracker.stats(ids))[1:]
        if (successes is None) != (trials is None):
            raise ValueError("posterior needs both successes and trials for fresh outcomes, or neither.")
        if successes is not None and trials is not None:
            s = s + np.broadcast_to(np.asarray(successes, dtype=np.float64), s.shape)
            n = n + np.broadcast_to(np.asarray(trials, dtype=np.float64), n.shape)
        return self._posterior(s, n, prior)

    def _valid_counts(self, st: PromptStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(valid, successes, outcomes)``: the history is used only from ``min_observations`` outcomes."""
        valid = st.total_observations >= self.config.min_observations
        return valid, np.where(valid, st.successes, 0.0), np.where(valid, st.num_observations, 0.0)

    def _posterior(self, s: np.ndarray, n: np.ndarray, prior: np.ndarray) -> Posterior:
        return self.population_prior().posterior(
            s, n, prior_mean=prior, prior_strength=self.tracker.prior_strength
        )

    def _batch(self, ids: list[str], budget: int, prior: np.ndarray) -> _Batch:
        """Buckets from the history that passes the validity rule, point estimates and posteriors."""
        st = self.tracker.stats(ids)
        valid, s, n = self._valid_counts(st)
        zero = valid & (s == 0)
        one = valid & ~zero & (s == n)
        mixed = valid & ~zero & ~one
        bucket = np.full(len(ids), "unseen", dtype="<U6")
        bucket[zero], bucket[one], bucket[mixed] = "zero", "one", "mixed"
        point = np.full(len(ids), np.nan)
        point[zero], point[one] = 0.0, 1.0
        point[mixed] = self.tracker.success_rate(ids, prior_mean=prior)[mixed]
        estimated = ~valid & ~np.isnan(prior)
        point[estimated] = prior[estimated]
        posterior = self._posterior(s, n, prior)
        return _Batch(bucket, point, posterior, uniform_allocation(budget, len(ids)), st.mean_length)

    def _posterior_rule(
        self, budget: int, n_min: int, n_max: int, batch: _Batch
    ) -> tuple[np.ndarray, SolverResult]:
        """One knapsack over every prompt on the posterior-expected value."""
        table = batch.posterior.value_table(self._value_fn, n_max)
        costs = token_budget = None
        if self.config.token_cost:
            costs = _token_costs(batch.mean_length)
            token_budget = float(costs @ batch.uniform)
        result = self._solve(table, budget, n_min, n_max, costs, token_budget)
        return np.asarray(result.rollouts, dtype=np.int64), result

    def _buckets_rule(
        self, budget: int, n_min: int, n_max: int, share: float, batch: _Batch
    ) -> tuple[np.ndarray, SolverResult | None, int]:
        """Fixed budgets, exploration reserve, deficit repair, the fallback, then the knapsack.

        Returns the allocation, the solver's result (None when no knapsack ran) and the rollouts the
        fallback moved off the mixed prompts.
        """
        cfg, p, uni = self.config, batch.point, batch.uniform
        zero, one = batch.bucket == "zero", batch.bucket == "one"
        unknown = np.isnan(p)
        knap = ~(zero | one | unknown)
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
            n[explore], _ = fill_evenly(n[explore], reserve - int(n[explore].sum()), n_max)

        rest = budget - int(n[fixed].sum())
        if rest < n_min * k:
            n[fixed], short = drain_evenly(n[fixed], n_min * k - rest, n_min)
            if short:
                raise ValueError(
                    f"knapsack budget {budget} cannot give every prompt knapsack_n_min={n_min}; "
                    "raise num_generations or lower knapsack_n_min."
                )
            rest = budget - int(n[fixed].sum())

        moved = 0
        if cfg.fallback and k and fixed.any():
            need = int(_fallback_costs(p[knap], cfg.fallback_confidence, n_max).sum())
            surplus = rest - n_min * k - need
            if surplus > 0:
                # The reference's order: all-fail and unseen prompts, else every other non-mixed one.
                takers = explore if explore.any() else fixed
                n[takers], left = add_evenly(n[takers], surplus, n_max)
                moved = surplus - left
                rest -= moved

        if rest >= n_max * k:
            # The knapsack prompts cannot absorb the rest: all-fail and unseen prompts, then the others.
            n[knap] = n_max
            surplus = rest - n_max * k
            for group in (explore, one):
                if surplus > 0 and group.any():
                    n[group], surplus = add_evenly(n[group], surplus, n_max)
            if surplus:
                raise RuntimeError(f"{surplus} rollouts could not be placed under knapsack_n_max={n_max}.")
            return n, None, moved

        table = value_table(self._value_fn, p[knap], n_max)
        costs = token_budget = None
        if cfg.token_cost:
            all_costs = _token_costs(batch.mean_length)
            costs = all_costs[knap]
            spend = float(np.dot(all_costs, uni)) - float(np.dot(all_costs[fixed], n[fixed]))
            # Never demand fewer tokens than the cheapest way to place ``rest`` rollouts.
            token_budget = max(spend, _min_cost(costs, rest, n_min, n_max))
        result = self._solve(table, rest, n_min, n_max, costs, token_budget)
        n[knap] = np.asarray(result.rollouts, dtype=np.int64)
        return n, result, moved

    def _solve(
        self,
        table: np.ndarray,
        budget: int,
        n_min: int | np.ndarray,
        n_max: int | np.ndarray,
        costs: np.ndarray | None,
        token_budget: float | None,
    ) -> SolverResult:
        """The configured solver, with ties between identical prompts given to the earliest first.

        ``n_min`` / ``n_max`` are one bound for all or one per prompt; identical rows must then have
        identical bounds (the pilot's table keeps rows with different floors apart)."""
        k = table.shape[0]
        result = solve(
            table,
            budget,
            np.full(k, n_min, dtype=np.int64),
            np.full(k, n_max, dtype=np.int64),
            solver=self.config.solver,
            costs=costs,
            token_budget=token_budget,
            time_limit_s=float(self.config.time_limit_s),
        )
        rollouts = _earliest_first(np.asarray(result.rollouts, dtype=np.int64), table, costs)
        return dataclasses.replace(result, rollouts=rollouts)

    def _expected_value(self, n: np.ndarray, batch: _Batch) -> float:
        """The knapsack objective under the rule's beliefs: the posterior, or the point estimates
        of the prompts that have one (``v(0, p) = 0``)."""
        if self.config.rule == "posterior":
            table = batch.posterior.value_table(self._value_fn, int(n.max()))
            return float(table[np.arange(n.size), n].sum())
        p = batch.point
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

        The allocation is a pure function of the tracker, the config and the step (the population
        prior is refitted from the tracker), so the tracker's state is all there is to save.
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


def _earliest_first(rollouts: np.ndarray, table: np.ndarray, costs: np.ndarray | None) -> np.ndarray:
    """Among prompts with identical value rows (and costs), the larger counts go to the earlier ones.

    Any optimum stays an optimum under that permutation; it makes the choice among equal optima
    independent of the solver, so prompts that look alike at the start get the uniform split.
    """
    keys = table if costs is None else np.column_stack([table, costs])
    _, group = np.unique(keys, axis=0, return_inverse=True)
    out = rollouts.copy()
    for g in np.unique(group):
        rows = np.flatnonzero(group.reshape(-1) == g)
        if rows.size > 1:
            out[rows] = np.sort(rollouts[rows])[::-1]
    return out


def _fallback_costs(p: np.ndarray, confidence: float, n_max: int) -> np.ndarray:
    """Whole rollouts for a ``confidence`` chance of a mixed group, ``log(1 - c) / log(max(p, 1 - p))``,
    capped at ``n_max`` and truncated (the reference's ``int(min(max_n, cost))``)."""
    top = np.maximum(p, 1.0 - p)
    with np.errstate(divide="ignore"):
        cost = np.where(top < 1.0, math.log(1.0 - confidence) / np.log(np.where(top < 1.0, top, 0.5)), np.inf)
    return np.floor(np.minimum(cost, n_max)).astype(np.int64)


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

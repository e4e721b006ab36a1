"""Turn prompt statistics into rollouts per prompt: the allocator the trainers call.

Two rules share one budget, one set of bounds ``[n_min, n_max]`` and one solver (:mod:`.rules`):

- ``posterior``: each prompt's success rate is a posterior over a grid, from its own outcomes and a
  population prior fitted to the recent prompts' histories (empirical Bayes, :mod:`.posterior`). One
  knapsack over all prompts maximises the expected value; with the ``nonzero_gradient`` value that is
  the expected number of prompts whose group has mixed rewards, the prompts that give a gradient.
- ``buckets``: the paper's rule (liziniu/KnapsackRL, ``sampling_budget_by_knapsack``), with its
  cost-based fallback; exact where the reference is buggy.

The schedules and the token-cost mode are this package's additions and are off by default.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from knapsack_trl.core.allocation import BUCKETS, Allocation
from knapsack_trl.core.budget import check_budget, uniform_allocation
from knapsack_trl.core.config import RULES, AllocatorConfig
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.posterior import RECENT_PROMPTS, PopulationPrior, Posterior
from knapsack_trl.core.rules import Batch, buckets_rule, earliest_first, posterior_rule
from knapsack_trl.core.solvers import SolverResult, solve
from knapsack_trl.core.state import ALLOCATOR_STATE_VERSION, check_version
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.core.values import (
    ValueFunction,
    get_value_function,
    nonzero_gradient_probability,
    value_table,
)

# Steps over which a candidate's history loses half its weight by default (AllocatorConfig.history_half_life
# unset, prompts chosen from candidates). Chosen with the allocation simulator (docs/method.md, "Choosing
# prompts: candidates"): 16 gave the best worst case over five mixes, with and without a learning trend.
DEFAULT_HISTORY_HALF_LIFE = 16.0

__all__ = [
    "BUCKETS",
    "RULES",
    "Allocation",
    "AllocatorConfig",
    "KnapsackRolloutAllocator",
    "uniform_allocation",
]


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

    def set_total_steps(self, total_steps: int | None) -> None:
        """Give the schedules their horizon once it is known (a run's ``max_steps`` at train time)."""
        self.config.total_steps = total_steps
        self.config.validate()
        self._schedule = self.config.budget_schedule()

    def n_max_at(self, step: int) -> int:
        """``n_max`` in force at ``step`` (the schedule's, else the config's)."""
        return self._schedule.n_max_at(step)

    def population_prior(self) -> PopulationPrior:
        """The success-rate distribution fitted to the histories of the most recently visited prompts
        (``posterior.RECENT_PROMPTS``; a pure function of the tracker's state)."""
        return PopulationPrior.fit(*self.tracker.recent_counts(RECENT_PROMPTS))

    def allocate(
        self,
        prompt_ids: Sequence[str],
        budget: int,
        *,
        step: int = 0,
        prior_success_rate: np.ndarray | None = None,
        uniform: bool = False,
        allow_skip: bool = False,
    ) -> Allocation:
        """Rollouts per prompt summing to ``budget``, each within [n_min, n_max].

        ``prior_success_rate`` (e.g. a value head's prediction, NaN = none): in the buckets rule it
        gives unseen prompts an estimate so they join the knapsack and is the prior mean for seen ones;
        in the posterior rule it counts as ``tracker.prior_strength`` pseudo-outcomes at that rate.
        ``uniform=True`` returns the uniform allocation with the same diagnostics.

        ``allow_skip=True`` (the prompts are candidates, more than the budget needs): a prompt may get 0
        rollouts instead, and the budget must be whole groups (``k x n_min <= budget <= k x n_max``). The
        posterior rule runs one knapsack over every candidate; the buckets rule keeps its buckets and lets
        only the knapsack over the mixed prompts skip (:func:`.rules.buckets_rule`). A skipped prompt is
        not observed. ``uniform`` with it is refused: the uniform split over candidates is the control
        that skipping is measured against, reported in every allocation.
        """
        cfg = self.config
        ids = [str(p) for p in prompt_ids]
        if uniform and allow_skip:
            raise ValueError(
                "allocate got uniform=True with allow_skip=True: the uniform mode gives every prompt its share "
                "and skips none. Choose prompts (allow_skip) with a knapsack rule, or pass uniform alone."
            )
        budget, n_min, n_max = self._bounds(budget, len(ids), step, allow_skip)
        half_life = self.history_half_life(allow_skip)
        weight = self._age_weight(ids, step, half_life)
        batch = self._batch(
            ids, budget, n_max, _check_prior(prior_success_rate, len(ids)), self.population_prior(), weight
        )
        share = self._schedule.exploration_share_at(step)
        moved, result = 0, None
        if uniform:
            n = batch.uniform.copy()
        elif cfg.rule == "posterior":
            n, result = posterior_rule(
                batch, budget, n_min, n_max, self.solve_table, cfg.token_cost, allow_skip=allow_skip
            )
        else:
            bounds = (n_min, n_max)
            n, result, moved = buckets_rule(
                batch, cfg, budget, bounds, share, self._value_fn, self.solve_table, allow_skip=allow_skip
            )
        _check_invariants(n, budget, n_min, n_max, allow_skip)
        return dataclasses.replace(
            self._record(n, batch, result),
            n_max=n_max,
            exploration_share=share,
            fallback_rollouts=moved,
            allow_skip=allow_skip,
            history_half_life=None if self._half_life_setting(allow_skip) == "off" else half_life,
        )

    def _record(self, n: np.ndarray, batch: Batch, result: SolverResult | None) -> Allocation:
        """The allocation with its expectations, and the uniform split's, under the rule's beliefs."""
        post, uni = batch.posterior, batch.uniform
        mixed, uniform_mixed = post.nonzero_gradient(n), post.nonzero_gradient(uni)
        return Allocation(
            rollouts_per_prompt=n,
            success_rate=post.mean if self.config.rule == "posterior" else batch.point,
            bucket=batch.bucket,
            expected_value=self._expected_value(n, batch),
            uniform_expected_value=self._expected_value(uni, batch),
            expected_informative=float(mixed.sum()),
            uniform_expected_informative=float(uniform_mixed.sum()),
            solver_result=result,
            expected_informative_rollouts=float(mixed @ n),
            uniform_expected_informative_rollouts=float(uniform_mixed @ uni),
        )

    def allocate_known(
        self, success_rate: np.ndarray, budget: int, *, step: int = 0, allow_skip: bool = False
    ) -> Allocation:
        """The allocation if each prompt's success rate were known: the knapsack on the configured value
        at exactly these rates, every prompt in it (with ``nonzero_gradient``, the count oracle; with
        ``allow_skip``, the oracle that also chooses which candidates get rollouts)."""
        p = np.asarray(success_rate, dtype=np.float64).reshape(-1)
        budget, n_min, n_max = self._bounds(budget, p.size, step, allow_skip)
        table = value_table(self._value_fn, p, n_max)
        result = self.solve_table(table, budget, n_min, n_max, None, None, skippable=allow_skip)
        n = np.asarray(result.rollouts, dtype=np.int64)
        uni = uniform_allocation(budget, p.size)
        rows = np.arange(p.size)
        mixed, uniform_mixed = nonzero_gradient_probability(n, p), nonzero_gradient_probability(uni, p)
        return Allocation(
            rollouts_per_prompt=n,
            success_rate=p,
            bucket=np.where(p == 0, "zero", np.where(p == 1, "one", "mixed")).astype("<U6"),
            expected_value=float(table[rows, n].sum()),
            uniform_expected_value=float(table[rows, uni].sum()),
            expected_informative=float(mixed.sum()),
            uniform_expected_informative=float(uniform_mixed.sum()),
            solver_result=result,
            n_max=n_max,
            expected_informative_rollouts=float(mixed @ n),
            uniform_expected_informative_rollouts=float(uniform_mixed @ uni),
            allow_skip=allow_skip,
        )

    def posterior(
        self,
        prompt_ids: Sequence[str],
        prior_success_rate: np.ndarray | None = None,
        *,
        successes: np.ndarray | None = None,
        trials: np.ndarray | None = None,
        step: int = 0,
        allow_skip: bool = False,
    ) -> Posterior:
        """Each prompt's beliefs as the posterior rule holds them at ``step`` (population prior, the history
        that passes the validity rule, weighed by its age as :meth:`allocate` with ``allow_skip`` weighs it,
        ``prior_success_rate`` as in :meth:`allocate`), times the likelihood of ``successes`` out of
        ``trials`` fresh outcomes the tracker has not seen (a pilot round's)."""
        ids = [str(p) for p in prompt_ids]
        if (successes is None) != (trials is None):
            raise ValueError("posterior needs both successes and trials for fresh outcomes, or neither.")
        population = self.population_prior()
        weight = self._age_weight(ids, step, self.history_half_life(allow_skip))
        s, n, _ = self._valid_counts(ids)
        s, n = s * weight, n * weight
        if successes is not None and trials is not None:
            s = s + np.broadcast_to(np.asarray(successes, dtype=np.float64), s.shape)
            n = n + np.broadcast_to(np.asarray(trials, dtype=np.float64), n.shape)
        prior = _check_prior(prior_success_rate, len(ids))
        return population.posterior(s, n, prior_mean=prior, prior_strength=self.tracker.prior_strength)

    def history_half_life(self, allow_skip: bool = False) -> float:
        """Steps over which a prompt's history loses half its weight since its last visit (inf: never):
        the config's, or with it unset ``DEFAULT_HISTORY_HALF_LIFE`` when choosing prompts (``allow_skip``)
        and none otherwise."""
        setting = self._half_life_setting(allow_skip)
        return math.inf if setting == "off" else float(setting)

    def _half_life_setting(self, allow_skip: bool) -> float | str:
        setting = self.config.history_half_life
        if setting is None:
            return DEFAULT_HISTORY_HALF_LIFE if allow_skip else "off"
        return setting

    def _age_weight(self, ids: list[str], step: int, half_life: float) -> np.ndarray:
        """Each prompt's history weight at ``step``: ``0.5 ** (steps since its last visit / half_life)``."""
        if math.isinf(half_life):
            return np.ones(len(ids))
        last = self.tracker.stats(ids).last_seen
        return np.where(last >= 0, 0.5 ** (np.maximum(step - last, 0) / half_life), 1.0)

    def _bounds(self, budget: int, m: int, step: int, allow_skip: bool = False) -> tuple[int, int, int]:
        """``(budget, n_min, n_max)`` at ``step``, or a SettingError naming the setting to change."""
        if m == 0:
            raise ValueError("allocate got an empty batch: pass at least one prompt id.")
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
            raise SettingError(f"<budget>={budget!r} must be an integer number of rollouts.")
        n_min, n_max = self.config.n_min, self.n_max_at(step)
        if n_min > n_max:
            raise SettingError(
                f"<n_min>={n_min} is larger than <n_max>={n_max} at step {step} (<n_max_schedule>); "
                "lower <n_min> or raise the schedule's end."
            )
        self.config.check_fixed_budgets(n_min, n_max)
        if allow_skip and self.config.token_cost:
            raise SettingError(
                "<token_cost>=True does not combine with skipping prompts (candidates): the token cap is the "
                "uniform split's tokens, and choosing prompts changes which ones are paid for. Turn one off."
            )
        check_budget(int(budget), m, n_min, n_max, allow_skip)
        return int(budget), n_min, n_max

    def valid_history(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """Whether each prompt's history is used (the validity rule: at least ``min_observations``
        outcomes ever seen); a prompt without one counts as unseen."""
        return self._valid(self.tracker.stats([str(p) for p in prompt_ids]))

    def _valid(self, stats: Any) -> np.ndarray:
        return stats.total_observations >= self.config.min_observations

    def _valid_counts(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray, Any]:
        """Counts behind each estimate, zeroed where the validity rule ignores the history."""
        st = self.tracker.stats(ids)
        valid = self._valid(st)
        return np.where(valid, st.successes, 0.0), np.where(valid, st.num_observations, 0.0), st

    def _batch(
        self,
        ids: list[str],
        budget: int,
        n_max: int,
        prior: np.ndarray,
        population: PopulationPrior,
        weight: np.ndarray,
    ) -> Batch:
        """Buckets from the history that passes the validity rule, point estimates and posteriors (the
        history weighed by ``weight``, its age)."""
        s, n, st = self._valid_counts(ids)
        s, n = s * weight, n * weight
        valid = n > 0
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
        posterior = population.posterior(s, n, prior_mean=prior, prior_strength=self.tracker.prior_strength)
        table = posterior.value_table(self._value_fn, n_max) if self.config.rule == "posterior" else None
        return Batch(bucket, point, posterior, uniform_allocation(budget, len(ids)), st.mean_length, table)

    def solve_table(
        self,
        table: np.ndarray,
        budget: int,
        n_min: int | np.ndarray,
        n_max: int | np.ndarray,
        costs: np.ndarray | None = None,
        token_budget: float | None = None,
        skippable: np.ndarray | bool | None = None,
    ) -> SolverResult:
        """The configured solver on ``table``, with ties between identical prompts (identical rows and
        limits) given to the earliest.

        ``n_min`` / ``n_max`` are one bound for all or one per prompt. ``skippable``: prompts that may get 0
        instead (see :func:`.solvers.solve`)."""
        k = table.shape[0]
        lower = np.broadcast_to(np.asarray(n_min, dtype=np.int64), (k,)).copy()
        upper = np.broadcast_to(np.asarray(n_max, dtype=np.int64), (k,)).copy()
        skip = np.broadcast_to(
            np.asarray(bool(skippable) if skippable is None else skippable, dtype=bool), (k,)
        )
        result = solve(
            table,
            budget,
            lower,
            upper,
            solver=self.config.solver,
            costs=costs,
            token_budget=token_budget,
            time_limit_s=float(self.config.time_limit_s),
            skippable=skippable,
        )
        limits = np.column_stack([lower, upper, skip])
        rollouts = earliest_first(np.asarray(result.rollouts, dtype=np.int64), table, costs, limits)
        return dataclasses.replace(result, rollouts=rollouts)

    def _expected_value(self, n: np.ndarray, batch: Batch) -> float:
        """The knapsack objective under the rule's beliefs: the posterior, or the point estimates
        of the prompts that have one (``v(0, p) = 0``)."""
        if batch.table is not None:
            return float(batch.table[np.arange(n.size), n].sum())
        known = ~np.isnan(batch.point)
        if not known.any():
            return 0.0
        nk = n[known].astype(np.float64)
        v = np.asarray(self._value_fn(nk, batch.point[known]), dtype=np.float64)
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
        return {"version": ALLOCATOR_STATE_VERSION, "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the tracker keeps its saved settings (warns if they differ)."""
        check_version(state, [ALLOCATOR_STATE_VERSION], "allocator state")
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


def _check_invariants(n: np.ndarray, budget: int, n_min: int, n_max: int, allow_skip: bool) -> None:
    """The budget exactly, every prompt within [n_min, n_max] (or at 0 when it may be skipped)."""
    used = n[n > 0] if allow_skip else n
    if int(n.sum()) != budget or (used.size and (used.min() < n_min or used.max() > n_max)) or (n < 0).any():
        raise RuntimeError(
            f"allocation broke its invariants (sum {int(n.sum())} vs budget {budget}, range "
            f"[{n.min()}, {n.max()}] vs [{n_min}, {n_max}], skipping {'allowed' if allow_skip else 'not allowed'}); "
            "please report this as a bug."
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

"""The pilot round: allocate the rest of a generation batch on fresh evidence.

History is one or two visits old, and a prompt seen for the first time has none. With a pilot, every
prompt of the batch first gets ``k`` rollouts; their rewards update each prompt's posterior (the
allocator's population prior and the prompt's history, exactly as the posterior rule holds them, times
``p^s (1-p)^(k-s)``), and the rest of the budget goes by one knapsack on the posterior predictive value
of each prompt's *final* group, pilot included (the pilot rollouts are never thrown away).

Each final group's value given its pilot (``P(mixed) x w(p) x size(n)``, the tables) is
:mod:`.pilot_values`.

A prompt whose pilot is mixed gains nothing from more rollouts under a value with ``size = 1``: the knapsack
spends the second round on the others, and only rollouts that no prompt's value can use (every other
prompt at ``n_max``, or every pilot mixed) go to the mixed prompts, evening out their final group sizes
(water-filling, ties to the earlier prompt). Final groups always lie in ``[n_min, n_max]``: when the pilot
is smaller than ``n_min`` the second round brings every prompt up to it first.

**Candidates** (``allow_skip``): the pilot runs over every candidate of the batch and the knapsack commits
the rest on what it showed (Pilot-Commit's shape, budget-exact): a candidate may get no second-round
rollouts, and then its final group is its pilot alone, even when ``k < n_min``. Those ``k`` rollouts were
drawn already; they stay in the batch, count for the tracker and, as a group of ``k``, give a gradient only
when mixed (a group of one never does). A candidate that does get more ends in ``[max(n_min, k), n_max]``.

The trainer's use::

    pilot = PilotRound.from_config(config, k, num_prompts, generation_batch_size, num_processes)  # config time
    # every process generates pilot.pilot_sizes(); on the main process, once the pilot's rewards are in:
    second = pilot.decide(allocator, prompt_ids, pilot_rewards, step=step, prior_success_rate=head_p)
    # broadcast second.extra_rollouts; generate them; observe pilot + second round once, after both.

:meth:`PilotRound.decide` is a pure function of the tracker's state and its inputs: it never writes to the
tracker, so every process and a resumed run take the same decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.allocation import candidate_metrics, decision_metrics
from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.budget import check_budget, fill_evenly
from knapsack_trl.core.calibration import group_successes
from knapsack_trl.core.config import AllocatorConfig
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.pilot_values import (
    PilotOutcomes,
    extra_value_table,
    final_mixed_chance,
    final_mixed_probability,
    final_size_table,
    value_factors,
)
from knapsack_trl.core.posterior import GRID, Posterior
from knapsack_trl.core.solvers import SolverResult
from knapsack_trl.core.values import get_value_function

__all__ = [
    "PilotOutcomes",
    "PilotRound",
    "SecondRound",
    "allocate_second_round",
    "check_pilot_config",
    "final_mixed_probability",
    "second_round_budget",
]

# --------------------------------------------------------------------------- settings, checked once


def second_round_budget(
    pilot_rollouts: int,
    num_prompts: int,
    generation_batch_size: int,
    num_processes: int = 1,
    n_max: int | None = None,
) -> int:
    """Rollouts left for the second round, ``generation_batch_size - k x num_prompts``; a SettingError
    naming the setting and the fix when the pilot cannot run (meant for config time)."""
    k = pilot_rollouts
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise SettingError(
            f"<pilot_rollouts>={k!r} must be an integer >= 1 to run a pilot round (0 turns it off)."
        )
    k, pilot = int(k), int(k) * int(num_prompts)
    if pilot > generation_batch_size:
        raise SettingError(
            f"<pilot_rollouts>={k} x {num_prompts} prompts = {pilot} > <budget>="
            f"{generation_batch_size}; lower <pilot_rollouts>."
        )
    if pilot % num_processes:
        raise SettingError(
            f"<pilot_rollouts>={k} x {num_prompts} prompts = {pilot} pilot rollouts do not split "
            f"evenly over {num_processes} processes; choose <pilot_rollouts> so that it times the "
            f"prompts per batch is a multiple of {num_processes}."
        )
    if n_max is not None and k > n_max:
        raise SettingError(
            f"<pilot_rollouts>={k} is larger than <n_max>={n_max}: a prompt's group would "
            "exceed n_max after the pilot alone; lower <pilot_rollouts> or raise <n_max>."
        )
    return int(generation_batch_size) - pilot


def check_pilot_config(config: AllocatorConfig) -> None:
    """A SettingError when the allocator's settings cannot run a pilot round (meant for config time):
    a token budget, an exploration schedule, or a value that is not ``P(mixed) x w(p) x size(n)``."""
    if config.token_cost:
        raise SettingError(
            "<token_cost>=True does not combine with a pilot round (<pilot_rollouts> > 0); "
            "turn one of them off."
        )
    if config.exploration_schedule is not None:
        raise SettingError(
            f"<exploration_schedule>={config.exploration_schedule!r} reserves budget for the buckets rule's "
            "prompts; the pilot's second round values every prompt by its posterior. Unset the schedule or "
            "the pilot (<pilot_rollouts>=0)."
        )
    value_factors(get_value_function(config.value_function), GRID, config.budget_schedule().highest_n_max())


@dataclass(frozen=True)
class PilotRound:
    """One generation batch's pilot round: ``pilot_rollouts`` (``k``) per prompt first, the rest of
    ``budget`` (``second_round_budget``) by the knapsack on what they showed.

    Built once with :meth:`from_config`, which checks the settings (meant for config time); then
    :meth:`decide` per batch. ``allow_skip``: the prompts are candidates, and a candidate may get no
    second-round rollouts (its pilot is then its final group).
    """

    pilot_rollouts: int
    num_prompts: int
    budget: int
    num_processes: int
    second_round_budget: int
    allow_skip: bool = False

    @classmethod
    def from_config(
        cls,
        config: AllocatorConfig,
        pilot_rollouts: int,
        num_prompts: int,
        budget: int,
        num_processes: int = 1,
        *,
        allow_skip: bool = False,
    ) -> PilotRound:
        """The pilot round these settings describe, or a SettingError naming the setting and the fix:
        the allocator's settings (:func:`check_pilot_config`), ``k`` against the batch, the processes and
        the lowest ``n_max`` of the schedule, and a second round that can bring the groups into bounds."""
        config.validate()
        check_pilot_config(config)
        if pilot_rollouts == 0 and not isinstance(pilot_rollouts, bool):
            raise SettingError("<pilot_rollouts>=0 is no pilot round; build a PilotRound only with k >= 1.")
        lowest = config.budget_schedule().lowest_n_max()
        second = second_round_budget(pilot_rollouts, num_prompts, budget, num_processes, lowest)
        k = int(pilot_rollouts)
        for n_max in {lowest, config.n_max}:
            _check_second_budget(second, np.full(int(num_prompts), k), config.n_min, n_max, allow_skip)
        return cls(k, int(num_prompts), int(budget), int(num_processes), second, bool(allow_skip))

    def pilot_sizes(self) -> np.ndarray:
        """Pilot rollouts per prompt (``k`` each), in the batch's prompt order."""
        return np.full(self.num_prompts, self.pilot_rollouts, dtype=np.int64)

    def decide(
        self,
        allocator: KnapsackRolloutAllocator,
        prompt_ids: Sequence[str],
        pilot_rewards: np.ndarray | Sequence[float],
        *,
        step: int = 0,
        prior_success_rate: np.ndarray | None = None,
        uniform: bool = False,
    ) -> SecondRound:
        """The second round from the pilot's per-rollout rewards.

        ``pilot_rewards``: one aggregated reward per pilot rollout, prompt after prompt (``k`` each, the
        order of ``prompt_ids``), NaN where a rollout could not be scored. A success is a reward above the
        *tracker's* threshold (the one its history was counted with, also after a resume).
        ``prior_success_rate`` and ``uniform`` as in :func:`allocate_second_round`.
        """
        ids = [str(p) for p in prompt_ids]
        if len(ids) != self.num_prompts:
            raise ValueError(
                f"decide got {len(ids)} prompt ids for a pilot round of {self.num_prompts} prompts."
            )
        rewards = np.asarray(pilot_rewards, dtype=np.float64).reshape(-1)
        if rewards.size != self.pilot_rollouts * self.num_prompts:
            raise ValueError(
                f"decide got {rewards.size} pilot rewards; expected {self.pilot_rollouts} per prompt x "
                f"{self.num_prompts} prompts = {self.pilot_rollouts * self.num_prompts}."
            )
        sizes = self.pilot_sizes()
        wins, scored = group_successes(rewards, sizes, allocator.tracker.success_threshold)
        pilot = PilotOutcomes(sizes, wins.astype(np.int64), (scored - wins).astype(np.int64))
        return _decide_second_round(
            allocator,
            ids,
            pilot,
            self.second_round_budget,
            step=step,
            prior_success_rate=prior_success_rate,
            uniform=uniform,
            allow_skip=self.allow_skip,
        )


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True, eq=False)
class SecondRound:
    """The second round's rollouts per prompt, and what the decision was based on.

    ``group_sizes = pilot_rollouts + extra_rollouts`` (each prompt's final group, in ``[n_min, n_max]``;
    with ``allow_skip`` a candidate's final group may also be its pilot alone).
    ``posterior``: beliefs after the pilot. ``expected_informative``: expected prompts with a mixed
    final group under it; ``uniform_expected_informative``: the same had the second round evened out
    the groups instead (with equal pilots: the uniform split of the whole batch, sharing the pilot's
    outcomes); ``expected_value`` / ``uniform_expected_value``: the same for the configured value;
    ``expected_informative_rollouts`` / ``uniform_expected_informative_rollouts``: rollouts in mixed final
    groups. ``spare_rollouts``: rollouts no prompt's value could use, spread over the prompts mixed already.
    """

    extra_rollouts: np.ndarray
    group_sizes: np.ndarray
    pilot_rollouts: np.ndarray
    pilot_mixed: np.ndarray
    posterior: Posterior
    expected_value: float
    uniform_expected_value: float
    expected_informative: float
    uniform_expected_informative: float
    spare_rollouts: int
    solver_result: SolverResult | None
    n_max: int
    expected_informative_rollouts: float = 0.0
    uniform_expected_informative_rollouts: float = 0.0
    allow_skip: bool = False
    pilot_bucket: np.ndarray | None = None

    @property
    def pilot_informative(self) -> int:
        """Prompts already mixed after the pilot (known, not expected)."""
        return int(np.count_nonzero(self.pilot_mixed))

    @property
    def success_rate(self) -> np.ndarray:
        """Posterior mean success rate per prompt after the pilot."""
        return self.posterior.mean

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging (no prefix); the names shared with ``Allocation.metrics`` mean the same.

        With ``allow_skip`` also ``prompts_considered`` (every candidate had its pilot),
        ``prompts_rolled_out`` (candidates given a second round), ``prompts_skipped`` (their pilot is their
        final group) and ``skipped_*_share`` by what the pilot showed (solved: all successes, hopeless: all
        failures, mixed, unknown: nothing scored).
        """
        n, extra = self.group_sizes, self.extra_rollouts
        total = int(n.sum())
        out = decision_metrics(self, n)
        out.update(
            {
                "pilot_informative_prompts": float(self.pilot_informative),
                "second_round_rollouts": float(extra.sum()),
                "second_round_share": float(extra.sum()) / total if total else 0.0,
                "second_round_prompts": float(np.count_nonzero(extra)),
                "spare_rollouts": float(self.spare_rollouts),
            }
        )
        if self.allow_skip and self.pilot_bucket is not None:
            out.update(candidate_metrics(extra, self.pilot_bucket))
        return out


def allocate_second_round(
    allocator: KnapsackRolloutAllocator,
    prompt_ids: Sequence[str],
    pilot_successes: np.ndarray | Sequence[float],
    pilot_rollouts: int | np.ndarray | Sequence[int],
    budget: int,
    *,
    step: int = 0,
    prior_success_rate: np.ndarray | None = None,
    pilot_scored: np.ndarray | Sequence[float] | None = None,
    uniform: bool = False,
    allow_skip: bool = False,
) -> SecondRound:
    """Split ``budget`` second-round rollouts over the prompts given their pilot outcomes (counts).

    ``pilot_rollouts[i]`` (or one int for all): prompt ``i``'s pilot rollouts, part of its final group;
    ``pilot_successes[i]``: how many of them scored a success (reward above the tracker's threshold);
    ``pilot_scored[i]`` (default ``pilot_rollouts``): how many had a reward at all (``group_successes``'s
    counts; unscorable ones take a place in the group but say nothing). ``prior_success_rate`` as in
    ``allocator.allocate`` (a value head's prediction, NaN = none). ``uniform=True`` evens out the final
    groups instead, with the same diagnostics. ``allow_skip``: candidates, as in :class:`PilotRound`.

    :meth:`PilotRound.decide` is the same decision from per-rollout rewards, with its settings checked once.
    The knapsack is the posterior one whatever the allocator's ``rule``: the buckets rule has no use for a
    partly drawn group. Reads the tracker and never writes it: observe both rounds once, afterwards.
    """
    ids = [str(p) for p in prompt_ids]
    if not ids:
        raise SettingError("allocate_second_round got an empty batch: pass at least one prompt id.")
    pilot = PilotOutcomes.from_counts(pilot_successes, pilot_rollouts, pilot_scored, len(ids))
    return _decide_second_round(
        allocator,
        ids,
        pilot,
        budget,
        step=step,
        prior_success_rate=prior_success_rate,
        uniform=uniform,
        allow_skip=allow_skip,
    )


def _decide_second_round(
    allocator: KnapsackRolloutAllocator,
    ids: list[str],
    pilot: PilotOutcomes,
    budget: int,
    *,
    step: int,
    prior_success_rate: np.ndarray | None,
    uniform: bool,
    allow_skip: bool,
) -> SecondRound:
    """Beliefs after the pilot, the table of final groups' values, the knapsack, and the record."""
    cfg = allocator.config
    check_pilot_config(cfg)
    if uniform and allow_skip:
        raise ValueError(
            "the second round got uniform=True with allow_skip=True: the uniform mode evens out every "
            "prompt's group and skips none. Choose prompts (allow_skip) with a knapsack rule, or pass uniform alone."
        )
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise SettingError(
            f"second-round budget={budget!r} must be an integer >= 0 (rollouts left after the pilot)."
        )
    budget, rows, n_max = int(budget), pilot.rows, allocator.n_max_at(step)
    if rows.max() > n_max:
        raise SettingError(
            f"<pilot_rollouts>={int(rows.max())} is larger than <n_max>={n_max} at step {step}; "
            "lower <pilot_rollouts> or raise <n_max> (or its schedule's end)."
        )
    _check_second_budget(budget, rows, cfg.n_min, n_max, allow_skip)
    value_fn = get_value_function(cfg.value_function)
    post = allocator.posterior(
        ids,
        prior_success_rate,
        successes=pilot.wins,
        trials=pilot.wins + pilot.fails,
        step=step,
        allow_skip=allow_skip,
    )
    by_extra = extra_value_table(post, value_fn, pilot, n_max)
    even, _ = fill_evenly(rows, budget, n_max)
    result, spare = None, 0
    if uniform:
        sizes = even
    elif allow_skip:
        sizes, result, spare = _commit(allocator, by_extra, pilot, budget, cfg.n_min, n_max)
    else:
        sizes, result, spare = _top_up(allocator, by_extra, pilot, budget, cfg.n_min, n_max)
    extra = sizes - rows
    _check_second_round(extra, sizes, budget, cfg.n_min, n_max, allow_skip)
    return _record(post, by_extra, pilot, sizes, even, spare, result, n_max, allow_skip)


def _check_second_budget(budget: int, rows: np.ndarray, n_min: int, n_max: int, allow_skip: bool) -> None:
    """The second round can bring every group into ``[n_min, n_max]`` (candidates: every group it touches),
    or a SettingError naming the fix."""
    if allow_skip:
        k = np.unique(rows)
        if k.size == 1:  # whole groups of extra rollouts
            check_budget(budget, rows.size, max(n_min - int(k[0]), 0), n_max - int(k[0]), allow_skip=True)
        return
    lower = np.maximum(rows, n_min)
    need, room = int((lower - rows).sum()), int((n_max - rows).sum())
    if budget < need:
        raise SettingError(
            f"second-round budget {budget} cannot bring every prompt's group to <n_min>={n_min} "
            f"(that takes {need}); lower <n_min> or raise <pilot_rollouts> or <budget>."
        )
    if budget > room:
        raise SettingError(
            f"second-round budget {budget} is more than the groups can take below <n_max>={n_max} "
            f"({room}); raise <n_max> or lower <budget>."
        )


def _top_up(
    allocator: KnapsackRolloutAllocator,
    by_extra: np.ndarray,
    pilot: PilotOutcomes,
    budget: int,
    n_min: int,
    n_max: int,
) -> tuple[np.ndarray, SolverResult, int]:
    """Every prompt's final group in ``[max(k_i, n_min), n_max]``: one knapsack over final sizes."""
    rows = pilot.rows
    lower = np.maximum(rows, n_min)
    table = final_size_table(by_extra, rows, lower, n_max)
    top = np.full(rows.size, n_max, dtype=np.int64)
    result = allocator.solve_table(table, budget + int(rows.sum()), lower, top, None, None)
    sizes, spare = _spread_spare(np.asarray(result.rollouts, dtype=np.int64), table, lower, n_max)
    return sizes, result, spare


def _commit(
    allocator: KnapsackRolloutAllocator,
    by_extra: np.ndarray,
    pilot: PilotOutcomes,
    budget: int,
    n_min: int,
    n_max: int,
) -> tuple[np.ndarray, SolverResult, int]:
    """Candidates: each gets 0 more (its pilot is its final group) or enough for a group in
    ``[max(k_i, n_min), n_max]``; one knapsack over the extra rollouts."""
    rows = pilot.rows
    lower = np.maximum(n_min - rows, 0)
    upper = n_max - rows
    table = by_extra[:, : int(upper.max()) + 1]
    result = allocator.solve_table(table, budget, lower, upper, None, None, skippable=True)
    extra = np.asarray(result.rollouts, dtype=np.int64)
    # Rows worth the same whatever they get (a mixed pilot): what they got is evened out among them,
    # wherever that keeps every group whole, so the choice no longer depends on the solver.
    allowed = (np.arange(table.shape[1])[None, :] >= lower[:, None]) | (np.arange(table.shape[1]) == 0)[
        None, :
    ]
    allowed &= np.arange(table.shape[1])[None, :] <= upper[:, None]
    flat = np.where(allowed, table, -np.inf).max(axis=1) == np.where(allowed, table, np.inf).min(axis=1)
    spare = int(extra[flat].sum())
    even, _ = fill_evenly(np.zeros(int(flat.sum()), dtype=np.int64), spare, upper[flat])
    if ((even == 0) | (even >= lower[flat])).all():
        extra[flat] = even
    return rows + extra, result, spare


def _record(
    post: Posterior,
    by_extra: np.ndarray,
    pilot: PilotOutcomes,
    sizes: np.ndarray,
    even: np.ndarray,
    spare: int,
    result: SolverResult | None,
    n_max: int,
    allow_skip: bool,
) -> SecondRound:
    """The decision with its expectations under the beliefs after the pilot, and the evened-out split's."""
    at, rows = np.arange(sizes.size), pilot.rows
    mixed = final_mixed_chance(post, pilot, sizes - rows)
    mixed_even = final_mixed_chance(post, pilot, even - rows)
    return SecondRound(
        extra_rollouts=sizes - rows,
        group_sizes=sizes,
        pilot_rollouts=rows,
        pilot_mixed=pilot.mixed,
        posterior=post,
        expected_value=float(by_extra[at, sizes - rows].sum()),
        uniform_expected_value=float(by_extra[at, even - rows].sum()),
        expected_informative=float(mixed.sum()),
        uniform_expected_informative=float(mixed_even.sum()),
        spare_rollouts=spare,
        solver_result=result,
        n_max=n_max,
        expected_informative_rollouts=float(mixed @ sizes),
        uniform_expected_informative_rollouts=float(mixed_even @ even),
        allow_skip=allow_skip,
        pilot_bucket=pilot.bucket,
    )


def _check_second_round(
    extra: np.ndarray, sizes: np.ndarray, budget: int, n_min: int, n_max: int, allow_skip: bool
) -> None:
    grown = extra > 0 if allow_skip else np.ones(extra.size, dtype=bool)
    if (
        int(extra.sum()) != budget
        or (extra < 0).any()
        or (sizes[grown] < n_min).any()
        or (sizes > n_max).any()
    ):
        raise RuntimeError(
            f"the second round broke its invariants (sum {int(extra.sum())} vs budget {budget}, group sizes "
            f"[{sizes.min()}, {sizes.max()}] vs [{n_min}, {n_max}]); please report this as a bug."
        )


def _spread_spare(
    sizes: np.ndarray, table: np.ndarray, lower: np.ndarray, n_max: int
) -> tuple[np.ndarray, int]:
    """Prompts whose value is the same at every allowed size (a mixed pilot) keep only their floor from
    the solver; what the solver gave them beyond it is water-filled over their final sizes. The objective
    is unchanged, and the choice no longer depends on the solver."""
    n = np.arange(table.shape[1])
    inside = n[None, :] >= lower[:, None]
    flat = np.where(inside, table, -np.inf).max(axis=1) == np.where(inside, table, np.inf).min(axis=1)
    spare = int((sizes[flat] - lower[flat]).sum())
    out = sizes.copy()
    out[flat], _ = fill_evenly(lower[flat], spare, n_max)
    return out, spare

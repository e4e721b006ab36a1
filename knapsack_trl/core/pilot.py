"""The pilot round: allocate the rest of a generation batch on fresh evidence.

History is one or two visits old, and a prompt seen for the first time has none. With a pilot, every
prompt of the batch first gets ``k`` rollouts; their rewards update each prompt's posterior (the
allocator's population prior and the prompt's history, exactly as the posterior rule holds them, times
``p^s (1-p)^(k-s)``), and the rest of the budget goes by one knapsack on the posterior predictive value
of each prompt's *final* group, pilot included (the pilot rollouts are never thrown away).

The value of a final group is ``P(mixed) x w(p)``: ``w = 1`` for ``nonzero_gradient`` (the expected number
of informative prompts), ``w = p (1-p)^2`` for the paper's ``knapsack`` value (a callable value must
have this form; it is checked on the grid, a ValueError otherwise). Given the pilot's ``s``
successes and ``f`` failures and ``m`` more rollouts, the group ends mixed

- for certain when the pilot is already mixed (``s > 0`` and ``f > 0``),
- with chance ``1 - (1-p)^m`` after an all-fail pilot, ``1 - p^m`` after an all-success one,
- with chance ``1 - p^m - (1-p)^m`` (``m >= 2``) when the pilot has no scored outcome,

and the table is each prompt's posterior expectation of that times ``w(p)``. These rows are concave in
``m`` (mixtures of concave functions), so the greedy solver is exact from ``m = 0`` on a scored pilot.

A prompt whose pilot is mixed gains nothing from more rollouts under either value: the knapsack spends
the second round on the others, and only rollouts that no prompt's value can use (every other prompt at
``n_max``, or every pilot mixed) go to the mixed prompts, evening out their final group sizes
(water-filling, ties to the earlier prompt). Final groups always lie in ``[n_min, n_max]``: when the pilot
is smaller than ``n_min`` the second round brings every prompt up to it first.

The trainer's use, on the main process once the pilot's rewards are in::

    budget = second_round_budget(k, num_prompts, generation_batch_size, num_processes)  # at config time
    plan = allocate_second_round(allocator, prompt_ids, successes, k, budget, step=step,
                                 prior_success_rate=head_p, pilot_scored=scored)
    # broadcast plan.extra_rollouts; generate them; observe pilot + second round once, after both.

:func:`allocate_second_round` is a pure function of the tracker's state and its inputs: it never
writes to the tracker, so every process and a resumed run take the same decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.budget import fill_evenly
from knapsack_trl.core.config import AllocatorConfig
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.posterior import GRID, Posterior
from knapsack_trl.core.solvers import SolverResult
from knapsack_trl.core.values import ValueFunction, get_value_function, nonzero_gradient_probability

__all__ = [
    "SecondRound",
    "allocate_second_round",
    "check_pilot_config",
    "final_mixed_probability",
    "second_round_budget",
]

# A value function must match P(mixed | n, p) x w(p) to this relative tolerance to be used with a pilot.
_FACTOR_RTOL = 1e-9


def final_mixed_probability(
    successes: np.ndarray, failures: np.ndarray, extra: np.ndarray, success_rate: np.ndarray
) -> np.ndarray:
    """P(a group holding ``successes`` and ``failures`` has mixed outcomes after ``extra`` more rollouts
    at rate ``p``); broadcasting. With no outcome yet it is ``nonzero_gradient_probability(extra, p)``."""
    s, f, m, p = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (successes, failures, extra, success_rate))
    )
    mixed_now = (s > 0) & (f > 0)
    after_fail = 1.0 - (1.0 - p) ** m
    after_success = 1.0 - p**m
    fresh = nonzero_gradient_probability(m, p)
    return np.where(mixed_now, 1.0, np.where(s > 0, after_success, np.where(f > 0, after_fail, fresh)))


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
    a token budget, an exploration schedule, or a value that is not ``P(mixed) x w(p)``."""
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
    highest_n_max = int(np.ceil(config.budget_schedule().n_max.bounds[1]))
    _mixed_weight(get_value_function(config.value_function), GRID, highest_n_max)


@dataclass(frozen=True, eq=False)
class SecondRound:
    """The second round's rollouts per prompt, and what the decision was based on.

    ``group_sizes = pilot_rollouts + extra_rollouts`` (each prompt's final group, in ``[n_min, n_max]``).
    ``posterior``: beliefs after the pilot. ``expected_informative``: expected prompts with a mixed
    final group under it; ``uniform_expected_informative``: the same had the second round evened out
    the groups instead (with equal pilots: the uniform split of the whole batch, sharing the pilot's
    outcomes); ``expected_value`` / ``uniform_expected_value``: the same for the configured value.
    ``spare_rollouts``: rollouts no prompt's value could use, spread over the prompts mixed already.
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

    @property
    def pilot_informative(self) -> int:
        """Prompts already mixed after the pilot (known, not expected)."""
        return int(np.count_nonzero(self.pilot_mixed))

    @property
    def success_rate(self) -> np.ndarray:
        """Posterior mean success rate per prompt after the pilot."""
        return self.posterior.mean

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging (no prefix); the names shared with ``Allocation.metrics`` mean the same."""
        n, extra, res = self.group_sizes, self.extra_rollouts, self.solver_result
        total = int(n.sum())
        return {
            "rollouts_min": float(n.min()),
            "rollouts_mean": float(n.mean()),
            "rollouts_max": float(n.max()),
            "informative_prompts_expected": float(self.expected_informative),
            "informative_prompts_uniform_expected": float(self.uniform_expected_informative),
            "expected_value": float(self.expected_value),
            "uniform_expected_value": float(self.uniform_expected_value),
            "pilot_informative_prompts": float(self.pilot_informative),
            "second_round_rollouts": float(extra.sum()),
            "second_round_share": float(extra.sum()) / total if total else 0.0,
            "second_round_prompts": float(np.count_nonzero(extra)),
            "spare_rollouts": float(self.spare_rollouts),
            "solver_seconds": 0.0 if res is None else float(res.seconds),
            "solver_optimal": 1.0 if res is None else float(bool(res.optimal)),
            "n_max": float(self.n_max),
        }


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
) -> SecondRound:
    """Split ``budget`` second-round rollouts over the prompts given their pilot outcomes.

    ``pilot_rollouts[i]`` (or one int for all): prompt ``i``'s pilot rollouts, part of its final group;
    ``pilot_successes[i]``: how many of them scored a success (reward above the tracker's threshold);
    ``pilot_scored[i]`` (default ``pilot_rollouts``): how many had a reward at all (``group_successes``'s
    counts; unscorable ones take a place in the group but say nothing). ``prior_success_rate`` as in
    ``allocator.allocate`` (a value head's prediction, NaN = none). ``uniform=True`` evens out the final
    groups instead, with the same diagnostics.

    The knapsack is the posterior one whatever the allocator's ``rule``: the buckets rule has no use for a
    partly drawn group. Reads the tracker and never writes it: observe both rounds once, afterwards.
    """
    cfg = allocator.config
    ids = [str(p) for p in prompt_ids]
    m = len(ids)
    if m == 0:
        raise SettingError("allocate_second_round got an empty batch: pass at least one prompt id.")
    check_pilot_config(cfg)
    rows = _counts("pilot_rollouts", pilot_rollouts, m)
    scored = rows if pilot_scored is None else _counts("pilot_scored", pilot_scored, m)
    wins = _counts("pilot_successes", pilot_successes, m)
    if (scored > rows).any():
        raise SettingError(
            "pilot_scored exceeds pilot_rollouts for some prompt; a rollout is scored at most once."
        )
    if (wins > scored).any():
        raise SettingError("pilot_successes exceeds the scored pilot rollouts for some prompt.")
    fails = scored - wins
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise SettingError(
            f"second-round budget={budget!r} must be an integer >= 0 (rollouts left after the pilot)."
        )
    budget = int(budget)
    n_min, n_max = cfg.n_min, allocator.n_max_at(step)
    if rows.max() > n_max:
        raise SettingError(
            f"<pilot_rollouts>={int(rows.max())} is larger than <n_max>={n_max} at step {step}; "
            "lower <pilot_rollouts> or raise <n_max> (or its schedule's end)."
        )
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

    value_fn = get_value_function(cfg.value_function)
    post = allocator.posterior(ids, prior_success_rate, successes=wins, trials=scored)
    table = _table(post, value_fn, wins, fails, rows, lower, n_max)
    top = np.full(m, n_max, dtype=np.int64)
    even, _ = fill_evenly(rows, budget, n_max)
    result, spare = None, 0
    if uniform:
        sizes = even
    else:
        result = allocator.solve_table(table, budget + int(rows.sum()), lower, top, None, None)
        sizes = np.asarray(result.rollouts, dtype=np.int64)
        sizes, spare = _spread_spare(sizes, table, lower, n_max)
    extra = sizes - rows
    if int(extra.sum()) != budget or (extra < 0).any() or (sizes < lower).any() or (sizes > n_max).any():
        raise RuntimeError(
            f"the second round broke its invariants (sum {int(extra.sum())} vs budget {budget}, group sizes "
            f"[{sizes.min()}, {sizes.max()}] vs [{n_min}, {n_max}]); please report this as a bug."
        )
    at = np.arange(m)
    return SecondRound(
        extra_rollouts=extra,
        group_sizes=sizes,
        pilot_rollouts=rows,
        pilot_mixed=(wins > 0) & (fails > 0),
        posterior=post,
        expected_value=float(table[at, sizes].sum()),
        uniform_expected_value=float(table[at, even].sum()),
        expected_informative=float(_informative(post, wins, fails, extra).sum()),
        uniform_expected_informative=float(_informative(post, wins, fails, even - rows).sum()),
        spare_rollouts=spare,
        solver_result=result,
        n_max=n_max,
    )


def _counts(name: str, value: object, m: int) -> np.ndarray:
    """Whole, non-negative counts, one per prompt (a scalar is broadcast), as int64."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(m, float(arr))
    arr = arr.reshape(-1)
    if arr.size != m:
        raise SettingError(f"{name} has {arr.size} entries for {m} prompts; pass one per prompt.")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any():
        raise SettingError(f"{name} must hold whole numbers of rollouts >= 0; got {arr[:8].tolist()}.")
    return arr.astype(np.int64)


def _mixed_weight(value_fn: ValueFunction, grid: np.ndarray, n_max: int) -> np.ndarray:
    """``w(p)`` on the grid, with ``value(n, p) = P(mixed | n, p) x w(p)`` for every ``n`` in 1..n_max.

    Read off at ``n = 2`` and checked at the rest: a pilot needs the value of a group that is partly
    drawn already, which only that form defines. 0 at ``p`` of 0 and 1, where no group is ever mixed.
    """
    n = np.arange(1, max(n_max, 2) + 1, dtype=np.float64)
    values = np.broadcast_to(
        np.asarray(value_fn(n[None, :], grid[:, None]), dtype=np.float64), (grid.size, n.size)
    )
    mixed = nonzero_gradient_probability(n[None, :], grid[:, None])
    inner = mixed[:, 1] > 0
    weight = np.where(inner, values[:, 1] / np.where(inner, mixed[:, 1], 1.0), 0.0)
    error = np.abs(values - mixed * weight[:, None])
    tolerance = _FACTOR_RTOL * (float(np.abs(values).max()) + 1e-300)
    if not np.isfinite(values).all() or (error > tolerance).any():
        g, j = np.unravel_index(int(np.argmax(np.where(np.isfinite(error), error, np.inf))), error.shape)
        raise SettingError(
            f"<value_function>={getattr(value_fn, '__name__', value_fn)!r} is not of the form "
            f"P(mixed | n, p) x w(p) (it differs at n={int(n[j])}, p={grid[g]:.4g}); a pilot round needs that "
            "form to value a group already partly drawn. Use 'nonzero_gradient' or 'knapsack', or turn the "
            "pilot off (<pilot_rollouts>=0)."
        )
    return weight


def _table(
    post: Posterior,
    value_fn: ValueFunction,
    wins: np.ndarray,
    fails: np.ndarray,
    rows: np.ndarray,
    lower: np.ndarray,
    n_max: int,
) -> np.ndarray:
    """``T[i, n]``: posterior expected value of prompt ``i``'s final group of ``n`` (its pilot plus
    ``n - rows[i]``), for ``n`` in ``[lower_i, n_max]``; below ``lower_i`` a constant the solver never reads
    (it keeps rows with different floors apart, so ties are only broken between interchangeable prompts)."""
    grid, weights = post.grid, post.weights
    extra = np.arange(n_max + 1, dtype=np.float64)
    w = _mixed_weight(value_fn, grid, n_max)
    mixed = np.broadcast_to((weights @ w)[:, None], (wins.size, extra.size))
    after_fail = weights @ (w[:, None] * (1.0 - (1.0 - grid[:, None]) ** extra[None, :]))
    after_success = weights @ (w[:, None] * (1.0 - grid[:, None] ** extra[None, :]))
    fresh = post.value_table(value_fn, n_max)  # no scored outcome: exactly the posterior rule's row
    s, f = wins[:, None] > 0, fails[:, None] > 0
    by_extra = np.where(s & f, mixed, np.where(s, after_success, np.where(f, after_fail, fresh)))
    n = np.arange(n_max + 1)
    table = np.take_along_axis(by_extra, np.maximum(n[None, :] - rows[:, None], 0), axis=1)
    inside = n[None, :] >= lower[:, None]
    below = float(table[inside].min()) - 1.0
    return np.where(inside, table, below)


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


def _informative(post: Posterior, wins: np.ndarray, fails: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """P(prompt ``i``'s final group is mixed) under the posterior after the pilot."""
    chance = final_mixed_probability(wins[:, None], fails[:, None], extra[:, None], post.grid[None, :])
    return (post.weights * chance).sum(axis=1)

"""The two allocation rules, as functions of one batch's beliefs.

- ``posterior``: one knapsack over every prompt on the posterior-expected value.
- ``buckets``: the paper's rule (liziniu/KnapsackRL, ``verl/trainer/ppo/exploration_utils.py``,
  ``sampling_budget_by_knapsack``): fixed budgets for all-fail / all-success prompts, the uniform
  budget for unseen ones, the cost-based fallback, the knapsack on the mixed prompts' point estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.budget import add_evenly, cheapest_fill, drain_evenly, fill_evenly, whole_groups_below
from knapsack_trl.core.config import AllocatorConfig
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.posterior import Posterior
from knapsack_trl.core.solvers import SolverResult
from knapsack_trl.core.values import ValueFunction, value_table

# (table, budget, n_min, n_max, costs, token_budget, skippable=...) -> the configured solver's result.
Solve = Callable[..., SolverResult]


@dataclass(frozen=True)
class Batch:
    """What the rules see of one batch: buckets, beliefs and the uniform split."""

    bucket: np.ndarray
    point: np.ndarray  # the buckets rule's p (NaN: none)
    posterior: Posterior
    uniform: np.ndarray
    mean_length: np.ndarray
    table: np.ndarray | None  # the posterior rule's T[i, n] = E[v(n, p_i)]


def posterior_rule(
    batch: Batch,
    budget: int,
    n_min: int,
    n_max: int,
    solve: Solve,
    token_cost: bool,
    *,
    allow_skip: bool = False,
) -> tuple[np.ndarray, SolverResult]:
    """One knapsack over every prompt on the posterior-expected value (the uniform split's tokens
    as a cap with ``token_cost``); with ``allow_skip`` a prompt may get 0 instead of a group."""
    assert batch.table is not None
    costs = token_budget = None
    if token_cost:
        costs = token_costs(batch.mean_length)
        token_budget = float(costs @ batch.uniform)
    result = solve(batch.table, budget, n_min, n_max, costs, token_budget, skippable=allow_skip or None)
    return np.asarray(result.rollouts, dtype=np.int64), result


def buckets_rule(
    batch: Batch,
    cfg: AllocatorConfig,
    budget: int,
    bounds: tuple[int, int],
    share: float,
    value_fn: ValueFunction,
    solve: Solve,
    *,
    allow_skip: bool = False,
) -> tuple[np.ndarray, SolverResult | None, int]:
    """Fixed budgets, exploration reserve, deficit repair, the fallback, then the knapsack.

    Returns the allocation, the solver's result (None when no knapsack ran) and the rollouts the
    fallback moved off the mixed prompts.

    With ``allow_skip`` (candidates) the buckets keep their meaning: all-fail and all-success prompts get
    their fixed budgets and unseen ones the uniform share of the candidates, ``budget // M`` (so the
    budget must give every candidate ``n_min``); only the knapsack over the mixed prompts may give a
    prompt 0, so their floor is 0 and the fallback's surplus is what they do not need beyond their
    fallback costs. Rollouts the mixed prompts cannot take as whole groups go to the others, as a
    surplus does.
    """
    n_min, n_max = bounds
    p = batch.point
    zero, one, unknown = batch.bucket == "zero", batch.bucket == "one", np.isnan(p)
    knap = ~(zero | one | unknown)
    explore = zero | unknown
    n = np.zeros(p.size, dtype=np.int64)
    n[zero], n[one], n[unknown] = cfg.zero_success_budget, cfg.full_success_budget, batch.uniform[unknown]
    if share > 0 and explore.any():
        # Never reserve what the other prompts need for their floor.
        room = budget - n_min * int(np.count_nonzero(~explore))
        reserve = min(math.floor(share * budget), room)
        n[explore], _ = fill_evenly(n[explore], reserve - int(n[explore].sum()), n_max)
    if allow_skip and int(batch.uniform.min()) < n_min:
        raise SettingError(
            f"the buckets rule gives unseen candidates the uniform share of <budget>={budget} over {p.size} "
            f"candidates ({int(batch.uniform.min())}), below <n_min>={n_min}: raise <budget>, lower <n_min> or "
            "offer fewer candidates (or use the posterior rule)."
        )
    floor = 0 if allow_skip else n_min
    rest = _repair_deficit(n, ~knap, budget, floor * int(knap.sum()), n_min)
    moved = 0
    if cfg.fallback and knap.any() and (~knap).any():
        moved = _fallback(n, p, knap, explore, rest, floor, n_max, cfg.fallback_confidence)
        rest -= moved
    if allow_skip and knap.any():
        rest = _whole_groups(n, knap, (explore, one), rest, n_min, n_max)
    if rest >= n_max * int(knap.sum()):
        _spill(n, knap, (explore, one), rest, n_max)
        return n, None, moved
    table = value_table(value_fn, p[knap], n_max)
    costs = token_budget = None
    if cfg.token_cost:
        all_costs = token_costs(batch.mean_length)
        costs = all_costs[knap]
        spend = float(all_costs @ batch.uniform) - float(all_costs[~knap] @ n[~knap])
        # Never demand fewer tokens than the cheapest way to place ``rest`` rollouts.
        token_budget = max(spend, float(costs @ cheapest_fill(costs, rest, n_min, n_max)))
    result = solve(table, rest, n_min, n_max, costs, token_budget, skippable=allow_skip or None)
    n[knap] = np.asarray(result.rollouts, dtype=np.int64)
    return n, result, moved


def _whole_groups(
    n: np.ndarray, knap: np.ndarray, groups: tuple[np.ndarray, ...], rest: int, n_min: int, n_max: int
) -> int:
    """What of ``rest`` the mixed prompts can take as whole groups of ``n_min..n_max``; the remainder goes
    evenly to ``groups`` in order."""
    take = whole_groups_below(rest, int(knap.sum()), n_min, n_max)
    surplus = rest - take
    for group in groups:
        if surplus > 0 and group.any():
            n[group], surplus = add_evenly(n[group], surplus, n_max)
    if surplus:
        raise RuntimeError(f"{surplus} rollouts could not be placed under n_max={n_max}; please report this.")
    return take


def _repair_deficit(n: np.ndarray, fixed: np.ndarray, budget: int, floor_total: int, n_min: int) -> int:
    """Shrink the largest fixed budgets until the knapsack prompts get their floor; their rollouts left."""
    rest = budget - int(n[fixed].sum())
    if rest < floor_total:
        n[fixed], short = drain_evenly(n[fixed], floor_total - rest, n_min)
        if short:
            raise SettingError(
                f"<budget> {budget} cannot give every prompt <n_min>={n_min}; raise <budget> or lower <n_min>."
            )
        rest = budget - int(n[fixed].sum())
    return rest


def _fallback(
    n: np.ndarray,
    p: np.ndarray,
    knap: np.ndarray,
    explore: np.ndarray,
    rest: int,
    n_min: int,
    n_max: int,
    confidence: float,
) -> int:
    """The reference's cost-based fallback, in place: what the mixed prompts do not need for a
    ``confidence`` chance of a mixed group goes evenly to all-fail and unseen prompts (else to the
    other non-mixed ones). Returns the rollouts moved."""
    need = int(fallback_costs(p[knap], confidence, n_max).sum())
    surplus = rest - n_min * int(knap.sum()) - need
    if surplus <= 0:
        return 0
    takers = explore if explore.any() else ~knap
    n[takers], left = add_evenly(n[takers], surplus, n_max)
    return surplus - left


def _spill(n: np.ndarray, knap: np.ndarray, groups: tuple[np.ndarray, ...], rest: int, n_max: int) -> None:
    """The knapsack prompts cannot absorb ``rest``: they get ``n_max``, the surplus the groups in order."""
    n[knap] = n_max
    surplus = rest - n_max * int(knap.sum())
    for group in groups:
        if surplus > 0 and group.any():
            n[group], surplus = add_evenly(n[group], surplus, n_max)
    if surplus:
        raise RuntimeError(f"{surplus} rollouts could not be placed under n_max={n_max}; please report this.")


def fallback_costs(p: np.ndarray, confidence: float, n_max: int) -> np.ndarray:
    """Whole rollouts for a ``confidence`` chance of a mixed group, ``log(1 - c) / log(max(p, 1 - p))``,
    capped at ``n_max`` and truncated (the reference's ``int(min(max_n, cost))``)."""
    top = np.maximum(p, 1.0 - p)
    with np.errstate(divide="ignore"):
        cost = np.where(top < 1.0, math.log(1.0 - confidence) / np.log(np.where(top < 1.0, top, 0.5)), np.inf)
    return np.floor(np.minimum(cost, n_max)).astype(np.int64)


def earliest_first(
    rollouts: np.ndarray, table: np.ndarray, costs: np.ndarray | None, bounds: np.ndarray | None = None
) -> np.ndarray:
    """Among prompts with identical value rows (and costs, and ``bounds``: one row of per-prompt limits
    each, e.g. floor, cap and whether it may be skipped), the larger counts go to the earlier ones.

    Any optimum stays an optimum under that permutation; it makes the choice among equal optima
    independent of the solver, so prompts that look alike at the start get the uniform split. Prompts
    with other bounds are never swapped, so every count stays within its own prompt's limits.
    """
    parts = [table] + ([] if costs is None else [costs]) + ([] if bounds is None else [bounds])
    keys = np.column_stack([np.asarray(x, dtype=np.float64).reshape(table.shape[0], -1) for x in parts])
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.ascontiguousarray(keys)):
        groups.setdefault(row.tobytes(), []).append(i)
    out = rollouts.copy()
    for rows in groups.values():
        if len(rows) > 1:
            out[rows] = np.sort(rollouts[rows])[::-1]
    return out


def token_costs(mean_length: np.ndarray) -> np.ndarray:
    """Tokens per rollout: the tracker's mean length, unknown ones the mean of the known, else 1."""
    costs = np.asarray(mean_length, dtype=np.float64).copy()
    known = np.isfinite(costs)
    costs[~known] = costs[known].mean() if known.any() else 1.0
    return np.maximum(costs, 1.0)

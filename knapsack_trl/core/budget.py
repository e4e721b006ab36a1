"""Whole-rollout arithmetic on a budget: which budgets can be split, the uniform split, the even and
cheapest fills every rule uses."""

from __future__ import annotations

import numpy as np

from knapsack_trl.core.errors import SettingError


def uniform_allocation(budget: int, num_prompts: int) -> np.ndarray:
    """``budget // M`` each, the remainder one apiece to the first prompts (sums to ``budget``)."""
    base, rem = divmod(int(budget), int(num_prompts))
    out = np.full(int(num_prompts), base, dtype=np.int64)
    out[:rem] += 1
    return out


def fill_evenly(a: np.ndarray, extra: int, cap: int | np.ndarray) -> tuple[np.ndarray, int]:
    """Add ``extra`` units raising the lowest entries first (water-filling), none above ``cap``.

    ``cap`` is a scalar or one per entry. Returns the new entries and the units that did not fit.
    Ties go to the earliest index.
    """
    a = np.asarray(a, dtype=np.int64).copy()
    extra = int(extra)
    if extra <= 0 or a.size == 0:
        return a, max(extra, 0)
    cap = np.broadcast_to(np.asarray(cap, dtype=np.int64), a.shape)
    room = np.maximum(cap - a, 0)
    total = int(room.sum())
    if extra >= total:
        return a + room, extra - total

    def filled(level: int) -> int:
        return int(np.minimum(np.maximum(level - a, 0), room).sum())

    lo, hi = int(a.min()), int(cap.max())  # filled(lo) <= extra < filled(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if filled(mid) <= extra:
            lo = mid
        else:
            hi = mid
    new = a + np.minimum(np.maximum(lo - a, 0), room)
    left = extra - int((new - a).sum())
    new[np.flatnonzero((new == lo) & (new < cap))[:left]] += 1
    return new, 0


def add_evenly(a: np.ndarray, extra: int, cap: int | np.ndarray) -> tuple[np.ndarray, int]:
    """Add the same number of units to every entry (the remainder one apiece to the first), none
    above ``cap``; what a capped entry cannot take is shared by the others the same way.

    The reference's way of spreading a surplus (equal increments, not water-filling). Returns the
    new entries and the units that did not fit.
    """
    a = np.asarray(a, dtype=np.int64)
    added, left = fill_evenly(np.zeros_like(a), extra, np.asarray(cap, dtype=np.int64) - a)
    return a + added, left


def drain_evenly(a: np.ndarray, deficit: int, floor: int) -> tuple[np.ndarray, int]:
    """Remove ``deficit`` units lowering the highest entries first, none below ``floor``."""
    new, short = fill_evenly(-np.asarray(a, dtype=np.int64), deficit, -floor)
    return -new, short


def cheapest_fill(
    costs: np.ndarray, total: int, lower: int | np.ndarray, upper: int | np.ndarray
) -> np.ndarray:
    """Rollouts within ``[lower_i, upper_i]`` summing to ``total`` with the fewest tokens: every floor,
    then the rest on the cheapest prompts first (ties: the earlier prompt)."""
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    lower = np.broadcast_to(np.asarray(lower, dtype=np.int64), costs.shape).copy()
    upper = np.broadcast_to(np.asarray(upper, dtype=np.int64), costs.shape)
    order = np.argsort(costs, kind="stable")
    room = (upper - lower)[order]
    slack = int(total) - int(lower.sum())
    lower[order] += np.minimum(room, np.maximum(slack - (np.cumsum(room) - room), 0))
    return lower


def check_budget(budget: int, prompts: int, n_min: int, n_max: int, allow_skip: bool = False) -> None:
    """Raise unless ``n_min x prompts <= budget <= n_max x prompts``: the only budgets that can be split.

    With ``allow_skip`` a prompt may also get 0: the budget must be ``k`` whole groups for some ``k`` up to
    ``prompts``, ``k x n_min <= budget <= k x n_max``. The fewest groups that can hold it,
    ``ceil(budget / n_max)``, is the ``k`` to try: more groups only raise the floor.
    """
    if allow_skip:
        _check_whole_groups(budget, prompts, n_min, n_max)
        return
    if budget < n_min * prompts:
        raise SettingError(
            f"<budget>={budget} rollouts cannot give each of {prompts} prompts <n_min>={n_min} "
            f"(that takes {n_min * prompts}); raise <budget> or lower <n_min>."
        )
    if budget > n_max * prompts:
        raise SettingError(
            f"<budget>={budget} rollouts exceed <n_max>={n_max} x {prompts} prompts = {n_max * prompts}; "
            "raise <n_max> or lower <budget>."
        )


def whole_groups_below(budget: int, prompts: int, n_min: int, n_max: int) -> int:
    """The largest ``b <= budget`` that ``k <= prompts`` whole groups of ``n_min..n_max`` rollouts make."""
    if n_max <= 0:
        return 0
    groups = -(-int(budget) // n_max)
    if groups > prompts:
        return prompts * n_max
    return int(budget) if groups * n_min <= budget else (groups - 1) * n_max


def _check_whole_groups(budget: int, prompts: int, n_min: int, n_max: int) -> None:
    if budget > n_max * prompts:
        raise SettingError(
            f"<budget>={budget} rollouts exceed <n_max>={n_max} x {prompts} prompts = {n_max * prompts}; "
            "raise <n_max> or lower <budget>."
        )
    below = whole_groups_below(budget, prompts, n_min, n_max)
    if below == budget:
        return
    above = (-(-budget // max(n_max, 1))) * n_min
    raise SettingError(
        f"<budget>={budget} rollouts cannot be split into whole groups of <n_min>={n_min} to <n_max>={n_max} "
        f"rollouts (k groups take {n_min}k to {n_max}k; prompts skipped get 0): the nearest budgets that "
        f"split are {below} and {above}. Change <budget>, lower <n_min> or raise <n_max>."
    )

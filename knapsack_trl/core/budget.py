"""Whole-rollout arithmetic on a budget: the uniform split and the even fills every rule uses."""

from __future__ import annotations

import numpy as np


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

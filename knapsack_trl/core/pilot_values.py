"""The pilot round's values: how much a final group is worth given what its pilot showed.

The value of a final group of ``n`` is ``P(mixed) x w(p) x size(n)``: ``w = size = 1`` for
``nonzero_gradient`` (the expected number of informative prompts), ``w = p (1-p)^2`` for the paper's
``knapsack`` value, ``size(n) = n`` for ``informative_rollouts``. A callable value must have this form; it
is checked on the grid (:func:`value_factors`, a SettingError otherwise). Given the pilot's ``s``
successes and ``f`` failures and ``m`` more rollouts, the group ends mixed

- for certain when the pilot is already mixed (``s > 0`` and ``f > 0``),
- with chance ``1 - (1-p)^m`` after an all-fail pilot, ``1 - p^m`` after an all-success one,
- with chance ``1 - p^m - (1-p)^m`` (``m >= 2``) when the pilot has no scored outcome,

and a prompt's table is its posterior expectation of that times ``w(p)``, times ``size(k + m)``. With
``size = 1`` the rows are concave in ``m`` (mixtures of concave functions), so greedy is exact from
``m = 0`` on a scored pilot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.posterior import Posterior
from knapsack_trl.core.values import ValueFunction, nonzero_gradient_probability

# A value function must match P(mixed | n, p) x w(p) x size(n) to this relative tolerance to be used with a pilot.
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


@dataclass(frozen=True)
class PilotOutcomes:
    """Per prompt: the pilot's rollouts (its place in the final group), scored successes and failures."""

    rows: np.ndarray
    wins: np.ndarray
    fails: np.ndarray

    @classmethod
    def from_counts(cls, successes: object, rows: object, scored: object | None, m: int) -> PilotOutcomes:
        """From per-prompt counts (a scalar is broadcast), checked."""
        pilot = _counts("pilot_rollouts", rows, m)
        scored_rows = pilot if scored is None else _counts("pilot_scored", scored, m)
        wins = _counts("pilot_successes", successes, m)
        if (scored_rows > pilot).any():
            raise SettingError(
                "pilot_scored exceeds pilot_rollouts for some prompt; a rollout is scored at most once."
            )
        if (wins > scored_rows).any():
            raise SettingError("pilot_successes exceeds the scored pilot rollouts for some prompt.")
        return cls(pilot, wins, scored_rows - wins)

    @property
    def mixed(self) -> np.ndarray:
        return (self.wins > 0) & (self.fails > 0)

    @property
    def bucket(self) -> np.ndarray:
        """What the pilot alone says: ``unseen`` (nothing scored), ``zero``, ``one`` or ``mixed``."""
        out = np.full(self.rows.size, "unseen", dtype="<U6")
        out[(self.wins == 0) & (self.fails > 0)] = "zero"
        out[(self.wins > 0) & (self.fails == 0)] = "one"
        out[self.mixed] = "mixed"
        return out


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


def value_factors(value_fn: ValueFunction, grid: np.ndarray, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """``(w, size)``: ``w(p)`` on the grid and ``size(n)`` for ``n = 0..n_max``, with ``value(n, p) =
    P(mixed | n, p) x w(p) x size(n)`` for every ``n`` in 1..n_max (``size(0) = size(1)``: no group of 0
    or 1 is mixed).

    Read off at ``n = 2`` (``w``, with ``size(2) = 1``) and at the grid point where ``P(mixed | 2, p)`` is
    largest (``size``), then checked everywhere: a pilot needs the value of a group that is partly drawn
    already, which only that form defines. ``w`` is 0 at ``p`` of 0 and 1, where no group is ever mixed.
    """
    n = np.arange(1, max(n_max, 2) + 1, dtype=np.float64)
    values = np.broadcast_to(
        np.asarray(value_fn(n[None, :], grid[:, None]), dtype=np.float64), (grid.size, n.size)
    )
    mixed = nonzero_gradient_probability(n[None, :], grid[:, None])
    inner = mixed[:, 1] > 0
    weight = np.where(inner, values[:, 1] / np.where(inner, mixed[:, 1], 1.0), 0.0)
    anchor = int(np.argmax(mixed[:, 1]))
    usable = mixed[anchor] > 0
    if weight[anchor] != 0:
        size = np.where(usable, values[anchor] / np.where(usable, mixed[anchor] * weight[anchor], 1.0), 1.0)
    else:
        size = np.ones(n.size)
    if np.allclose(size, 1.0, rtol=0.0, atol=_FACTOR_RTOL):  # no size factor, up to rounding
        size = np.ones(n.size)
    error = np.abs(values - mixed * weight[:, None] * size[None, :])
    tolerance = _FACTOR_RTOL * (float(np.abs(values).max()) + 1e-300)
    if not np.isfinite(values).all() or (error > tolerance).any():
        g, j = np.unravel_index(int(np.argmax(np.where(np.isfinite(error), error, np.inf))), error.shape)
        raise SettingError(
            f"<value_function>={getattr(value_fn, '__name__', value_fn)!r} is not of the form "
            f"P(mixed | n, p) x w(p) x size(n) (it differs at n={int(n[j])}, p={grid[g]:.4g}); a pilot round needs "
            "that form to value a group already partly drawn. Use 'nonzero_gradient', 'informative_rollouts' or "
            "'knapsack', or turn the pilot off (<pilot_rollouts>=0)."
        )
    return weight, np.concatenate([size[:1], size])


def extra_value_table(
    post: Posterior, value_fn: ValueFunction, pilot: PilotOutcomes, n_max: int
) -> np.ndarray:
    """``T[i, m]``: posterior expected value of prompt ``i``'s final group after ``m`` more rollouts (its
    pilot plus ``m``), for ``m = 0..n_max``; columns past ``n_max - k_i`` repeat the last size's value and
    are never chosen."""
    grid, weights = post.grid, post.weights
    extra = np.arange(n_max + 1, dtype=np.float64)
    w, size = value_factors(value_fn, grid, n_max)
    mixed = np.broadcast_to((weights @ w)[:, None], (pilot.rows.size, extra.size))
    after_fail = weights @ (w[:, None] * (1.0 - (1.0 - grid[:, None]) ** extra[None, :]))
    after_success = weights @ (w[:, None] * (1.0 - grid[:, None] ** extra[None, :]))
    if (size == 1.0).all():  # no scored outcome: exactly the posterior rule's row
        fresh = post.value_table(value_fn, n_max)
    else:  # the new rollouts decide whether the group is mixed; the size factor is the final group's
        fresh = weights @ (w[:, None] * nonzero_gradient_probability(extra[None, :], grid[:, None]))
    s, f = pilot.wins[:, None] > 0, pilot.fails[:, None] > 0
    chance = np.where(s & f, mixed, np.where(s, after_success, np.where(f, after_fail, fresh)))
    final = np.minimum(pilot.rows[:, None] + extra[None, :].astype(np.int64), n_max)
    return chance * size[final]


def final_size_table(by_extra: np.ndarray, rows: np.ndarray, lower: np.ndarray, n_max: int) -> np.ndarray:
    """``T[i, n]`` over final sizes ``n = 0..n_max`` (the pilot plus ``n - rows[i]``) for ``n`` in
    ``[lower_i, n_max]``; below ``lower_i`` a constant the solver never reads (it keeps rows with different
    floors apart, so ties are only broken between interchangeable prompts)."""
    n = np.arange(n_max + 1)
    table = np.take_along_axis(by_extra, np.maximum(n[None, :] - rows[:, None], 0), axis=1)
    inside = n[None, :] >= lower[:, None]
    below = float(table[inside].min()) - 1.0
    return np.where(inside, table, below)


def final_mixed_chance(post: Posterior, pilot: PilotOutcomes, extra: np.ndarray) -> np.ndarray:
    """P(prompt ``i``'s final group is mixed) under the posterior after the pilot."""
    chance = final_mixed_probability(
        pilot.wins[:, None], pilot.fails[:, None], extra[:, None], post.grid[None, :]
    )
    return (post.weights * chance).sum(axis=1)

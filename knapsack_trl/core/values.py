"""Value of giving a prompt ``n`` rollouts when its success rate is ``p``.

The knapsack's item values. Pure numpy: the solvers only ever see the table that
:func:`value_table` builds, so any function with the :class:`ValueFunction` signature plugs in.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from knapsack_trl.core.errors import SettingError


class ValueFunction(Protocol):
    """``value(n, p)``: expected usefulness of ``n`` rollouts at success rate ``p`` (broadcasting)."""

    def __call__(self, n: np.ndarray, p: np.ndarray) -> np.ndarray: ...


def nonzero_gradient_probability(n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(a group of ``n`` binary rewards is not all equal) = 1 - p^n - (1-p)^n; 0 for n < 2."""
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    prob = 1.0 - p**n - (1.0 - p) ** n
    return np.where(n >= 2, np.clip(prob, 0.0, 1.0), 0.0)


def knapsack_value(n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Knapsack RL's value: ``(1 - p^n - (1-p)^n) * p * (1-p)^2``, with ``v(0, p) = 0``.

    The first factor is the chance the group has non-zero reward variance; ``p(1-p)^2`` is the
    paper's information gain, largest at p = 1/3. (The raw formula is negative at n = 0.)
    """
    p = np.asarray(p, dtype=np.float64)
    return nonzero_gradient_probability(n, p) * p * (1.0 - p) ** 2


def informative_rollouts(n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Expected rollouts with a non-zero advantage: ``n x P(mixed | n, p)``, 0 for n < 2.

    Weighs a group by the gradient it gives rather than by whether it gives one. With GRPO's per-group
    scaling every rollout of a mixed group carries an advantage of about unit size and none of an
    all-equal group does, so the gradient's signal grows with the rollouts in mixed groups; this counts
    them. (Without the scaling, ``E[sum (r - mean)^2] = (n - 1) p (1 - p)`` would weigh by the reward's
    variance instead; it is not of the form the pilot round needs, ``P(mixed) x w(p) x s(n)``, and this
    one is, with ``s(n) = n``.) Summed over prompts it favours piling rollouts onto prompts that are mixed
    anyway, as the paper's rollout-level ratio does: fewer prompts give a gradient, each a sharper one.
    """
    return np.asarray(n, dtype=np.float64) * nonzero_gradient_probability(n, p)


VALUE_FUNCTIONS: dict[str, ValueFunction] = {
    "knapsack": knapsack_value,
    "nonzero_gradient": nonzero_gradient_probability,
    "informative_rollouts": informative_rollouts,
}


def get_value_function(name_or_fn: str | ValueFunction) -> ValueFunction:
    """Resolve a registered name (``knapsack``, ``nonzero_gradient``, ``informative_rollouts``) or pass a
    callable through."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return VALUE_FUNCTIONS[name_or_fn]
    except KeyError:
        raise SettingError(
            f"<value_function>={name_or_fn!r} is not known; use one of {sorted(VALUE_FUNCTIONS)} "
            "or pass a callable value(n, p)."
        ) from None


def value_table(value_fn: ValueFunction, success_rate: np.ndarray, n_max: int) -> np.ndarray:
    """Table ``T[i, n] = value_fn(n, p_i)`` for ``n = 0..n_max``, with ``T[:, 0] = 0``.

    Raises if ``success_rate`` has NaN or values outside [0, 1].
    """
    p = np.asarray(success_rate, dtype=np.float64).reshape(-1)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        bad = p[np.isnan(p) | (p < 0) | (p > 1)][:5]
        raise ValueError(
            f"success_rate must lie in [0, 1] with no NaN; got {bad.tolist()}. "
            "Check the reward threshold and the tracker's prior."
        )
    n = np.arange(n_max + 1, dtype=np.float64)
    table = np.asarray(value_fn(n[None, :], p[:, None]), dtype=np.float64)
    table = np.broadcast_to(table, (p.size, n_max + 1)).copy()
    table[:, 0] = 0.0
    return table

"""Named bundles of allocation settings.

``reference`` is the Knapsack RL paper's rule as its code runs (liziniu/KnapsackRL, commit ca5d5f5:
``sampling_budget_by_knapsack`` in ``verl/trainer/ppo/exploration_utils.py``, fed by
``RLHFDataset.update_sample_state`` / ``get_sample_state`` in ``verl/utils/dataset/rl_dataset.py``). It
fixes what defines the method; the sizes the reference takes as arguments (``n_min``, ``n_max``, the
two bucket budgets, the fallback and its confidence) stay settings, at the reference run's values by
default. Where the reference is buggy the preset is exact instead (docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Settings of :class:`~knapsack_trl.core.allocator.AllocatorConfig` and of the tracker."""

    description: str
    allocator: dict[str, Any] = field(default_factory=dict)
    tracker: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "reference": Preset(
        "the Knapsack RL reference: buckets, the paper's value, the cost-based fallback, history used from "
        "8 outcomes, the last-visit estimate without a prior",
        allocator={
            "rule": "buckets",
            "value_function": "knapsack",
            "min_observations": 8,
            "exploration_schedule": None,
            "n_max_schedule": None,
            "token_cost": False,
        },
        tracker={"window": 16, "ema_decay": None, "estimate": "last_visit", "prior_strength": 0.0},
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"knapsack_preset={name!r} is not known; use one of {sorted(PRESETS)} or None."
        ) from None

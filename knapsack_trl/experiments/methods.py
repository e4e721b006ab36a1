"""The methods an experiment compares: their order, names, colours and the config fields that define them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METHOD_ORDER = ("uniform", "knapsack", "reference", "oracle")
METHOD_LABELS = {
    "uniform": "uniform GRPO",
    "knapsack": "knapsack GRPO",
    "reference": "knapsack, reference preset",
    "oracle": "knapsack, oracle p",
}
# Config fields each method sets on top of the recipe or the demo's settings (uniform: the stock trainer).
METHOD_FIELDS: dict[str, dict[str, Any]] = {
    # The uniform baseline runs the knapsack trainer's uniform mode: equal to stock TRL to the last bit
    # (tests/test_trainer_grpo.py), and measured through the same listener as every other method.
    "uniform": {"knapsack_enabled": True, "knapsack_mode": "uniform"},
    "knapsack": {"knapsack_enabled": True},
    "reference": {"knapsack_enabled": True, "knapsack_preset": "reference"},
    "oracle": {"knapsack_enabled": True},
}
METHOD_COLORS = {"uniform": "#4c72b0", "knapsack": "#dd8452", "reference": "#8172b3", "oracle": "#55a868"}


def methods_in(runs: Sequence[Any]) -> list[str]:
    """The methods present in ``runs`` (records with a ``method``), in the standard order."""
    present = {r.method for r in runs}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))

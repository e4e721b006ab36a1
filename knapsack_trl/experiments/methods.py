"""The methods an experiment compares: their order, names, colours and the config fields that define them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METHOD_ORDER = ("uniform", "knapsack", "paper_value", "reference", "pilot", "value_head", "oracle")
METHOD_LABELS = {
    "uniform": "uniform GRPO",
    "knapsack": "knapsack GRPO",
    "paper_value": "knapsack, paper's objective",
    "reference": "knapsack, reference preset",
    "pilot": "knapsack, pilot round",
    "value_head": "knapsack, value head (blend)",
    "oracle": "knapsack, oracle p",
}
# Config fields each method sets on top of the recipe or the demo's settings (uniform: the stock trainer).
METHOD_FIELDS: dict[str, dict[str, Any]] = {
    # The uniform baseline runs the knapsack trainer's uniform mode: equal to stock TRL to the last bit
    # (tests/test_trainer_grpo.py), and measured through the same listener as every other method.
    "uniform": {"knapsack_enabled": True, "knapsack_mode": "uniform"},
    "knapsack": {"knapsack_enabled": True},
    # The default posterior rule with the paper's objective p(1-p)^2 x P(mixed) instead of counting prompts.
    "paper_value": {"knapsack_enabled": True, "knapsack_value_function": "knapsack"},
    # Four rollouts per prompt first (the simulator's best k at 8 per prompt: docs/method.md), the rest
    # of the batch on what they showed.
    "pilot": {"knapsack_enabled": True, "knapsack_pilot_rollouts": 4},
    "reference": {"knapsack_enabled": True, "knapsack_preset": "reference"},
    "value_head": {"knapsack_enabled": True, "knapsack_value_estimator": "blend"},
    "oracle": {"knapsack_enabled": True},
}
METHOD_COLORS = {
    "uniform": "#4c72b0",
    "knapsack": "#dd8452",
    "paper_value": "#937860",
    "reference": "#8172b3",
    "pilot": "#c44e52",
    "value_head": "#da8bc3",
    "oracle": "#55a868",
}


def parse_methods(text: str | None, default: Sequence[str], command: str) -> tuple[str, ...]:
    """``--methods`` of an experiment command: comma-separated, ``uniform`` plus any other known method;
    ``default`` when unset. A SystemExit naming the choices otherwise."""
    if not text:
        return tuple(default)
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHOD_ORDER]
    if unknown or "uniform" not in chosen:
        raise SystemExit(
            f"knapsack-trl {command}: --methods takes uniform plus any of {', '.join(METHOD_ORDER[1:])} "
            f"(got {text!r})."
        )
    return chosen


def methods_in(runs: Sequence[Any]) -> list[str]:
    """The methods present in ``runs`` (records with a ``method``), in the standard order."""
    present = {r.method for r in runs}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))

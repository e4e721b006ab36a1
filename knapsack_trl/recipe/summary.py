"""What a parsed recipe amounts to, in words and numbers: the resolved fields, the budget, the run."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any


def resolved_recipe(parsed: Sequence[Any], keys: Sequence[str]) -> dict[str, Any]:
    """The value each set key resolved to, after the YAML, the flags and the configs' own defaults/derivation."""
    out: dict[str, Any] = {}
    for key in keys:
        if key == "dry_run":
            continue
        for obj in parsed:
            if hasattr(obj, key):
                out[key] = _plain(getattr(obj, key))
                break
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "value", None) if hasattr(value, "value") else str(value)


def budget_summary(training_args: Any) -> dict[str, Any]:
    """The rollout budget a recipe implies, in the numbers the config validated."""
    b = training_args.generation_batch_size
    g = training_args.num_generations
    p = b // g
    per_device = training_args.per_device_train_batch_size
    summary: dict[str, Any] = {
        "generation_batch_size": b,
        "num_generations": g,
        "prompts_per_batch": p,
        "per_device_train_batch_size": per_device,
        "steps_per_generation": training_args.steps_per_generation,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "world_size": training_args.world_size,
        "process_counts_that_divide_the_batch": [
            w for w in (1, 2, 4, 8, 16, 32, 64) if b % (per_device * w) == 0
        ],
    }
    if getattr(training_args, "knapsack_enabled", False):
        n_min, n_max = training_args.knapsack_n_min, training_args.knapsack_n_max
        summary.update(
            {
                "knapsack_mode": getattr(training_args, "knapsack_mode", "knapsack"),
                "knapsack_n_min": n_min,
                "knapsack_n_max": n_max,
                "feasible": f"n_min*P = {n_min * p} <= B = {b} <= n_max*P = {n_max * p}",
            }
        )
    else:
        summary["knapsack_enabled"] = False
    return summary


def describe_run(trainer_name: str, training_args: Any) -> str:
    """One line on what is about to run: trainer, processes, budget, allocation."""
    b, g = training_args.generation_batch_size, training_args.num_generations
    if not training_args.knapsack_enabled:
        allocation = "uniform (knapsack_enabled: false)"
    else:
        allocation = f"{training_args.knapsack_mode}, n in [{training_args.knapsack_n_min}, {training_args.knapsack_n_max}]"
    return (
        f"{trainer_name} on {training_args.world_size} process(es); {b} rollouts per generation batch = "
        f"{b // g} prompts x {g} on average; allocation: {allocation}"
    )

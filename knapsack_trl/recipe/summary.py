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
        factor = training_args.knapsack_candidate_factor
        summary.update(
            {
                "knapsack_mode": getattr(training_args, "knapsack_mode", "knapsack"),
                "knapsack_candidate_factor": candidate_factor_in_words(training_args),
                "knapsack_n_min": n_min,
                "knapsack_n_max": n_max,
            }
        )
        if factor > 1:
            c = training_args.knapsack_candidates_per_batch
            summary["candidates_per_batch"] = c
            summary["feasible"] = (
                f"B = {b} in whole groups of n_min..n_max = {n_min}..{n_max} over at most {c} candidates "
                f"(from {-(-b // n_max)} to {min(c, b // n_min)} of them get rollouts)"
            )
        else:
            summary["feasible"] = f"n_min*P = {n_min * p} <= B = {b} <= n_max*P = {n_max * p}"
        summary["effective_n_max"] = effective_n_max(training_args)
    else:
        summary["knapsack_enabled"] = False
    return summary


def candidate_factor_in_words(training_args: Any) -> str:
    """The candidate factor in force, and why: explicit, the default, or the default lowered by the settings."""
    from knapsack_trl.trainer.config import DEFAULT_CANDIDATE_FACTORS

    factor, default = training_args.knapsack_candidate_factor, DEFAULT_CANDIDATE_FACTORS[0]
    if not getattr(training_args, "knapsack_candidate_factor_defaulted", False):
        return f"{factor} (set)"
    if factor == default:
        return f"{default} (the default: the best arm of the benchmark, docs/benchmark.md)"
    why = "greedy is not exact with skipping" if training_args.knapsack_solver == "greedy" else "the settings"
    return f"{factor} (the default {default}, lowered by {why}; every prompt gets rollouts at 1)"


def effective_n_max(training_args: Any) -> str:
    """The most rollouts one prompt can get at step 0: the allocator's ``n_max`` (its schedule's value),
    capped by the batch, since every other prompt keeps ``n_min`` (``B - n_min * (P - 1)``); with candidates
    the others may get none, so the cap is the budget itself."""
    b, g = training_args.generation_batch_size, training_args.num_generations
    p, n_min = b // g, training_args.knapsack_n_min
    steps = training_args.max_steps if training_args.max_steps > 0 else None
    scheduled = training_args.knapsack_allocator_config(total_steps=steps).budget_schedule().n_max_at(0)
    if training_args.knapsack_candidate_factor > 1:
        return f"{min(scheduled, b)} (min of n_max {scheduled} and B = {b}: other candidates may get none)"
    room = b - n_min * (p - 1)
    return f"{min(scheduled, room)} (min of n_max {scheduled} and B - n_min*(P-1) = {b} - {n_min}*{p - 1} = {room})"


def fit_short_run(training_args: Any) -> list[str]:
    """Adjust settings a short run cannot use as written; one note per change.

    A warm-up as long as the run keeps the learning rate below its peak throughout (at 0 on step 1): it
    is lowered to a tenth of the run. Schedulers without a warm-up (``constant``) are left alone.
    """
    notes: list[str] = []
    steps, warmup = training_args.max_steps, training_args.warmup_steps
    scheduler = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
    if steps > 0 and warmup >= 1 and warmup >= steps and scheduler != "constant":
        training_args.warmup_steps = steps // 10
        notes.append(
            f"warmup_steps={warmup:g} >= max_steps={steps}: the learning rate would stay below its peak for the "
            f"whole run, so warmup_steps is lowered to {steps // 10} (a tenth of the run); set warmup_steps "
            "below max_steps to choose another."
        )
    return notes


def describe_run(trainer_name: str, training_args: Any) -> str:
    """One line on what is about to run: trainer, processes, budget, allocation."""
    b, g = training_args.generation_batch_size, training_args.num_generations
    if not training_args.knapsack_enabled:
        allocation = "uniform (knapsack_enabled: false)"
    else:
        allocation = f"{training_args.knapsack_mode}, n in [{training_args.knapsack_n_min}, {training_args.knapsack_n_max}]"
        if training_args.knapsack_candidate_factor > 1:
            allocation += (
                f", chosen among {training_args.knapsack_candidates_per_batch} candidates "
                f"(knapsack_candidate_factor {training_args.knapsack_candidate_factor}; a candidate may get 0)"
            )
    return (
        f"{trainer_name} on {training_args.world_size} process(es); {b} rollouts per generation batch = "
        f"{b // g} prompts x {g} on average; allocation: {allocation}"
    )

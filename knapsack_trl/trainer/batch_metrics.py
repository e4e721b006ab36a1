"""A generation batch's ``knapsack/*`` metrics, logged into TRL's per-step metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from knapsack_trl.core.calibration import group_mean_rewards
from knapsack_trl.trainer.advantages import AdvantageResult, nonzero_variance
from knapsack_trl.trainer.config import KnapsackConfigMixin
from knapsack_trl.trainer.trl_bridge import ZERO_STD_METRIC

# The mean over the batch's prompts of each prompt's mean reward: every prompt weighs the same, whatever
# its rollouts (TRL's ``reward`` averages rollouts, so it follows the allocation).
PROMPT_MEAN_REWARD = "knapsack/reward_prompt_mean"
# Logged at the first batch, then only in batches where the value differs from this one.
USUALLY = {"solver_optimal": 1.0}


def run_constant_metrics(args: KnapsackConfigMixin) -> frozenset[str]:
    """The allocation metrics (no prefix) this config fixes for the whole run: logged at the first batch only."""
    names = set()
    if args.knapsack_n_max_schedule is None:
        names.add("n_max")
    if args.knapsack_exploration_schedule is None:
        names.add("exploration_share")
    if args.knapsack_rule != "buckets" or not args.knapsack_fallback or args.knapsack_mode == "uniform":
        names.add("fallback_rollouts")
    if args.knapsack_solver == "dp" or args.knapsack_mode == "uniform":
        names.add("solver_optimal")
    if args.knapsack_candidate_factor > 1:
        names.add("history_half_life")
    return frozenset(names)


def log_finite(metrics: dict[str, list[float]], name: str, value: float) -> None:
    """Append ``value`` unless it is NaN or infinite: TRL logs a metric with no finite value as None."""
    value = float(value)
    if np.isfinite(value):
        metrics[name].append(value)


def log_batch_metrics(
    metrics: dict[str, list[float]],
    batch: Any,
    result: AdvantageResult,
    sizes: torch.Tensor,
    rewards: np.ndarray,
    constants: frozenset[str],
    first: bool,
) -> None:
    """The batch's metrics: finite values only, run constants at the first batch only."""
    metrics[ZERO_STD_METRIC][-1] = result.is_std_zero.float().mean().item()
    present = sizes > 0
    nonzero = nonzero_variance(result.group_reward_std)
    # Prompts whose group has mixed rewards: the ones that give a gradient (the figure that counts).
    metrics["knapsack/informative_prompts"].append(nonzero[present].float().sum().item())
    metrics["knapsack/informative_prompts_share"].append(nonzero[present].float().mean().item())
    # Rollout-level: rollouts in such groups (the paper's figure is their share; it rises whenever
    # rollouts pile onto prompts that were mixed anyway).
    informative_rollouts = nonzero[present].float().mul(sizes[present]).sum().item()
    metrics["knapsack/informative_rollouts"].append(informative_rollouts)
    metrics["knapsack/effective_ratio_rollouts"].append(informative_rollouts / int(sizes.sum()))
    prompt_means = group_mean_rewards(rewards, batch.joined.sizes)
    if not np.isnan(prompt_means).all():
        metrics[PROMPT_MEAN_REWARD].append(float(np.nanmean(prompt_means)))
    for name, value in batch.metrics.items():
        if first or (name not in constants and USUALLY.get(name) != value):
            log_finite(metrics, f"knapsack/{name}", value)

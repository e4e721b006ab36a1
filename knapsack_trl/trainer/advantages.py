"""Advantages for groups of different sizes, following TRL 1.16's own rules exactly.

TRL computes group statistics with ``rewards.view(-1, num_generations)``, which only works when every
prompt has the same number of rollouts. Here each group is laid out as one row of a NaN-padded
``(num_groups, max_size)`` matrix and TRL's own reductions (``torch.nanmean``, ``trl``'s ``nanstd``)
run over it. NaN padding is invisible to those reductions, so the statistics are the per-group ones;
and when every group has the same size the padded matrix *is* ``view(-1, num_generations)``, so the
result is bit-for-bit TRL's (the contract tests check this).

Rows are in *canonical* order: group 0's rollouts, then group 1's, and so on, with ``sizes[g]`` rows
for group ``g``. Sources mirrored (trl 1.16.0): ``GRPOTrainer._generate_and_score_completions``
(``sum_then_normalize`` / ``normalize_then_sum``, ``scale_rewards``) and
``RLOOTrainer._generate_and_score_completions`` (leave-one-out baseline, ``normalize_advantages``).
A group of one follows TRL's ``num_generations == 1`` branch: zero std, zero advantage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl.trainer.utils import nanstd

EPS = 1e-4  # TRL's epsilon in every ``/ (std + 1e-4)``


@dataclass
class GroupLayout:
    """Where each canonical row sits in the padded ``(num_groups, width)`` matrix."""

    sizes: torch.Tensor  # (G,) int64, rollouts per group (0 allowed)
    group: torch.Tensor  # (B,) int64, group of each row
    flat_index: torch.Tensor  # (B,) int64, row's position in the flattened padded matrix
    width: int

    @classmethod
    def from_sizes(
        cls, sizes: torch.Tensor | list[int], device: torch.device | str | None = None
    ) -> GroupLayout:
        """Layout for contiguous groups of the given sizes."""
        sizes = torch.as_tensor(sizes, dtype=torch.long, device=device)
        if sizes.ndim != 1 or (sizes < 0).any():
            raise ValueError(f"group sizes must be a 1-D tensor of non-negative ints, got {sizes.tolist()}")
        num_groups = sizes.numel()
        group = torch.repeat_interleave(torch.arange(num_groups, device=sizes.device), sizes)
        starts = torch.cumsum(sizes, 0) - sizes
        position = torch.arange(group.numel(), device=sizes.device) - starts[group]
        width = max(int(sizes.max().item()) if num_groups else 0, 1)
        return cls(sizes=sizes, group=group, flat_index=group * width + position, width=width)

    @property
    def num_groups(self) -> int:
        return self.sizes.numel()

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, *rest)`` rows -> ``(num_groups, width, *rest)``, NaN where a group has fewer rows."""
        rest = values.shape[1:]
        padded = values.new_full((self.num_groups * self.width, *rest), float("nan"))
        padded[self.flat_index] = values
        return padded.view(self.num_groups, self.width, *rest)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pad`: ``(num_groups, width, *rest)`` -> ``(B, *rest)``."""
        return padded.reshape(self.num_groups * self.width, *padded.shape[2:])[self.flat_index]

    def per_row(self, per_group: torch.Tensor) -> torch.Tensor:
        """Broadcast a ``(num_groups, ...)`` statistic to the rows (TRL's ``repeat_interleave``)."""
        return per_group[self.group]


@dataclass
class AdvantageResult:
    """Advantages (canonical order) and the group statistics that TRL logs or that we report."""

    #: (B,) advantages, NaN already mapped to 0.
    advantages: torch.Tensor
    #: What TRL's ``frac_reward_zero_std`` averages: per row for GRPO, per group for RLOO.
    is_std_zero: torch.Tensor
    #: (G,) nanstd of each group's aggregated reward (NaN below 2 values).
    group_reward_std: torch.Tensor
    #: RLOO only: the per-sequence KL folded into the reward (canonical order), when ``beta != 0``.
    kl: torch.Tensor | None = None


def aggregate_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """TRL's scalar reward: weighted ``nansum`` over reward functions; NaN where every function gave None."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    return rewards


def _group_std(layout: GroupLayout, grouped: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """``nanstd`` over each group; exactly 0 for groups of one (TRL's ``num_generations == 1`` branch)."""
    std = nanstd(grouped, dim=1, keepdim=keepdim)
    multi = (layout.sizes > 1).view(-1, *([1] * (std.ndim - 1)))
    return torch.where(multi, std, torch.zeros_like(std))


def grpo_advantages(
    rewards_per_func: torch.Tensor,
    sizes: torch.Tensor | list[int],
    reward_weights: torch.Tensor,
    scale_rewards: str = "group",
    multi_objective_aggregation: str = "sum_then_normalize",
) -> AdvantageResult:
    """GRPO advantages for variable groups; ``rewards_per_func`` is ``(B, F)`` in canonical order."""
    layout = GroupLayout.from_sizes(sizes, device=rewards_per_func.device)
    if layout.group.numel() != rewards_per_func.size(0):
        raise ValueError(
            f"group sizes sum to {layout.group.numel()} but there are {rewards_per_func.size(0)} rows"
        )
    weights = reward_weights.to(rewards_per_func.device)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    scalar_rewards = aggregate_rewards(rewards_per_func, weights)
    group_reward_std = nanstd(layout.pad(scalar_rewards), dim=1)

    if multi_objective_aggregation == "sum_then_normalize":
        rewards = scalar_rewards
        grouped = layout.pad(rewards)
        mean_rows = layout.per_row(torch.nanmean(grouped, dim=1))
        if scale_rewards in ("group", "none"):
            std_rows = layout.per_row(_group_std(layout, grouped))
        elif scale_rewards == "batch":
            std_rows = (
                nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
            )
        else:
            raise ValueError(f"scale_rewards={scale_rewards!r}; must be one of 'batch', 'group', 'none'.")
        advantages = rewards - mean_rows
        if scale_rewards != "none":
            advantages = advantages / (std_rows + EPS)
        is_std_zero = torch.isclose(std_rows, torch.zeros_like(std_rows))
    elif multi_objective_aggregation == "normalize_then_sum":
        grouped = layout.pad(rewards_per_func)  # (G, width, F)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = _group_std(layout, grouped, keepdim=True)
        reward_k = layout.unpad((grouped - mean_k) / (std_k + EPS))
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std_rewards + EPS)
        is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    else:
        raise ValueError(
            f"multi_objective_aggregation={multi_objective_aggregation!r}; must be 'sum_then_normalize' or "
            "'normalize_then_sum'."
        )
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return AdvantageResult(advantages=advantages, is_std_zero=is_std_zero, group_reward_std=group_reward_std)


def rloo_advantages(
    rewards_per_func: torch.Tensor,
    sizes: torch.Tensor | list[int],
    reward_weights: torch.Tensor,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    reward_clip_range: tuple[float, float] | None = None,
    normalize_advantages: bool = False,
) -> AdvantageResult:
    """RLOO advantages: reward minus the mean of the *other* scorable rollouts of the same group.

    ``kl`` is the per-sequence KL (canonical order) that RLOO subtracts from the reward when
    ``beta != 0``, exactly as ``RLOOTrainer`` does.
    """
    layout = GroupLayout.from_sizes(sizes, device=rewards_per_func.device)
    if layout.group.numel() != rewards_per_func.size(0):
        raise ValueError(
            f"group sizes sum to {layout.group.numel()} but there are {rewards_per_func.size(0)} rows"
        )
    rewards = aggregate_rewards(rewards_per_func, reward_weights)
    group_reward_std = nanstd(layout.pad(rewards), dim=1)
    if reward_clip_range:
        rewards = rewards.clamp(min=reward_clip_range[0], max=reward_clip_range[1])
    if beta != 0.0:
        if kl is None:
            raise ValueError("rloo_advantages needs the per-sequence kl when beta != 0")
        rewards = rewards - beta * kl

    grouped = layout.pad(rewards)  # (G, width)
    std_groups = _group_std(layout, grouped)
    scorable_counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped, dim=1, keepdim=True)
    baselines = layout.unpad((grouped_sum - grouped) / (scorable_counts - 1))
    advantages = rewards - baselines
    singleton = layout.per_row(layout.sizes) <= 1
    advantages = torch.where(singleton, torch.zeros_like(advantages), advantages)
    if normalize_advantages:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + EPS)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    is_std_zero = torch.isclose(std_groups, torch.zeros_like(std_groups))
    return AdvantageResult(
        advantages=advantages, is_std_zero=is_std_zero, group_reward_std=group_reward_std, kl=kl
    )


def prompt_weights(sizes: torch.Tensor | list[int], num_generations: int) -> torch.Tensor:
    """Per-row factor ``num_generations / n_i``: every prompt then carries a uniform-GRPO prompt's weight.

    Scaling the advantage by ``w > 0`` scales the clipped surrogate by ``w`` (``min(r wA, clip(r) wA)
    = w min(r A, clip(r) A)``), so this is a per-rollout loss weight; the KL term is not reweighted.
    """
    layout = GroupLayout.from_sizes(sizes)
    return float(num_generations) / layout.per_row(layout.sizes).to(torch.float32)


def nonzero_variance(group_reward_std: torch.Tensor) -> torch.Tensor:
    """Groups whose aggregated rewards are not all equal (a non-zero gradient); NaN std counts as zero."""
    return ~torch.isnan(group_reward_std) & ~torch.isclose(
        group_reward_std, torch.zeros_like(group_reward_std)
    )

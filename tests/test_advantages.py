"""Variable-group advantages: bit-for-bit TRL for equal groups, a numpy reference for any groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import numpy_grpo, numpy_rloo
from trl.trainer.utils import nanstd

from knapsack_trl.trainer.advantages import (
    GroupLayout,
    grpo_advantages,
    nonzero_variance,
    prompt_weights,
    rloo_advantages,
)
from knapsack_trl.trainer.plan import balance_rows

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


def random_rewards(rng: np.random.Generator, rows: int, funcs: int, binary: bool = False) -> torch.Tensor:
    """Rewards with some None (NaN) entries, some rows where every function gave None, some ties."""
    if binary:
        values = rng.integers(0, 2, size=(rows, funcs)).astype(np.float32)
    else:
        values = rng.choice([0.0, 0.25, 1.0, -0.5, 2.0], size=(rows, funcs)).astype(np.float32)
    values[rng.random((rows, funcs)) < 0.15] = np.nan
    values[rng.random(rows) < 0.08] = np.nan
    return torch.from_numpy(values)


def random_sizes(rng: np.random.Generator, groups: int, low: int = 0, high: int = 8) -> list[int]:
    sizes = rng.integers(low, high + 1, size=groups)
    sizes[0] = max(sizes[0], 2)  # at least one row overall
    return sizes.tolist()


# --------------------------------------------------------------------------- TRL, transcribed verbatim
def trl_grpo(rewards_per_func, num_generations, reward_weights, scale_rewards, aggregation):
    """trl 1.16.0 grpo_trainer.py, the advantage block of _generate_and_score_completions (training)."""
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    if aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
        mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
        if scale_rewards in ["group", "none"]:
            std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:
            std_rewards = nanstd(rewards).expand_as(rewards)
        advantages = rewards - mean_grouped_rewards
        if scale_rewards != "none":
            advantages = advantages / (std_rewards + 1e-4)
        is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    else:
        grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.size(1))
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True)
        reward_k = (grouped - mean_k) / (std_k + 1e-4)
        reward_k = reward_k.view(-1, rewards_per_func.size(1))
        rewards = (reward_k * reward_weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        std_rewards = nanstd(rewards).expand_as(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std_rewards + 1e-4)
        is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    return torch.nan_to_num(advantages, nan=0.0), is_std_zero


def trl_rloo(rewards_per_func, num_generations, reward_weights, kl, beta, clip, normalize):
    """trl 1.16.0 rloo_trainer.py, the advantage block of _generate_and_score_completions (training)."""
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    if clip:
        rewards = rewards.clamp(min=clip[0], max=clip[1])
    if beta != 0.0:
        rewards = rewards - beta * kl
    grouped_rewards = rewards.view(-1, num_generations)
    std_rewards = nanstd(grouped_rewards, dim=1)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = ((grouped_sum - grouped_rewards) / (scorable_counts - 1)).view(-1)
    advantages = rewards - baselines
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), torch.isclose(std_rewards, torch.zeros_like(std_rewards))


# --------------------------------------------------------------------------- independent numpy reference
# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("seed", range(5))
def test_equal_groups_are_bit_for_bit_trl(scale: str, aggregation: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    group, funcs = int(rng.integers(2, 9)), int(rng.integers(1, 4))
    rewards = random_rewards(rng, group * int(rng.integers(1, 9)), funcs, binary=seed % 2 == 0)
    weights = torch.from_numpy(rng.uniform(0.2, 2.0, funcs).astype(np.float32))
    expected, expected_zero = trl_grpo(rewards.clone(), group, weights, scale, aggregation)
    result = grpo_advantages(
        rewards.clone(), [group] * (rewards.size(0) // group), weights, scale, aggregation
    )
    assert torch.equal(result.advantages, expected)
    assert torch.equal(result.is_std_zero, expected_zero)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("seed", range(8))
def test_variable_groups_match_numpy(scale: str, aggregation: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    sizes = random_sizes(rng, int(rng.integers(1, 10)))
    funcs = int(rng.integers(1, 4))
    rewards = random_rewards(rng, sum(sizes), funcs, binary=seed % 2 == 0)
    weights = rng.uniform(0.2, 2.0, funcs).astype(np.float32)
    result = grpo_advantages(rewards, sizes, torch.from_numpy(weights), scale, aggregation)
    expected = numpy_grpo(rewards.numpy(), sizes, weights.astype(np.float64), scale, aggregation)
    np.testing.assert_allclose(result.advantages.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_group_of_one_has_zero_advantage_and_zero_std() -> None:
    rewards = torch.tensor([[1.0], [0.0], [1.0], [0.5]])
    for scale in SCALES:
        result = grpo_advantages(rewards, [1, 3], torch.ones(1), scale)
        assert result.advantages[0].item() == 0.0
        if scale != "batch":
            assert bool(result.is_std_zero[0]) and not bool(result.is_std_zero[1])
    assert rloo_advantages(rewards, [1, 3], torch.ones(1)).advantages[0].item() == 0.0


def test_unscorable_rows_get_zero_and_do_not_move_the_baseline() -> None:
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan], [nan, nan], [0.0, nan], [0.0, 1.0], [0.0, 0.0]])
    result = grpo_advantages(rewards, [3, 2], torch.ones(2), "none")
    # group 0 scorable rewards 1 and 0 -> mean 0.5; the unscorable row is 0, not a reward of 0
    assert result.advantages.tolist() == [0.5, 0.0, -0.5, 0.5, -0.5]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("seed", range(5))
def test_rloo_equal_groups_are_bit_for_bit_trl(normalize: bool, beta: float, seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    group, funcs = int(rng.integers(2, 9)), int(rng.integers(1, 3))
    rewards = random_rewards(rng, group * int(rng.integers(1, 9)), funcs)
    weights = torch.from_numpy(rng.uniform(0.2, 2.0, funcs).astype(np.float32))
    kl = torch.from_numpy(rng.normal(size=rewards.size(0)).astype(np.float32))
    clip = (-0.5, 1.5) if seed % 2 else None
    expected, expected_zero = trl_rloo(rewards.clone(), group, weights, kl, beta, clip, normalize)
    result = rloo_advantages(
        rewards.clone(), [group] * (rewards.size(0) // group), weights, kl, beta, clip, normalize
    )
    assert torch.equal(result.advantages, expected)
    assert torch.equal(result.is_std_zero, expected_zero)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_rloo_variable_groups_match_numpy(normalize: bool, seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    sizes = random_sizes(rng, int(rng.integers(1, 10)))
    funcs = int(rng.integers(1, 3))
    rewards = random_rewards(rng, sum(sizes), funcs, binary=seed % 2 == 0)
    weights = rng.uniform(0.2, 2.0, funcs).astype(np.float32)
    kl = rng.normal(size=sum(sizes)).astype(np.float32)
    beta = 0.05 * (seed % 3)
    clip = (-0.5, 1.5) if seed % 2 else None
    result = rloo_advantages(
        rewards, sizes, torch.from_numpy(weights), torch.from_numpy(kl), beta, clip, normalize
    )
    expected = numpy_rloo(
        rewards.numpy(), sizes, weights.astype(np.float64), kl.astype(np.float64), beta, clip, normalize
    )
    np.testing.assert_allclose(result.advantages.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_rloo_leave_one_out_by_hand() -> None:
    rewards = torch.tensor([[1.0], [0.0], [0.0], [1.0], [1.0]])
    result = rloo_advantages(rewards, [3, 2], torch.ones(1))
    assert result.advantages.tolist() == [1.0, -0.5, -0.5, 0.0, 0.0]
    assert result.is_std_zero.tolist() == [False, True]


def test_layout_pads_with_nan_and_round_trips() -> None:
    layout = GroupLayout.from_sizes([2, 0, 3])
    values = torch.arange(5, dtype=torch.float32)
    padded = layout.pad(values)
    assert padded.shape == (3, 3)
    assert torch.isnan(padded[1]).all() and torch.isnan(padded[0, 2])
    assert torch.equal(layout.unpad(padded), values)
    assert layout.group.tolist() == [0, 0, 2, 2, 2]


def test_prompt_weights_give_every_prompt_the_uniform_total() -> None:
    sizes = [2, 6, 4]
    weights = prompt_weights(sizes, num_generations=4)
    assert torch.equal(weights, torch.tensor([2.0, 2.0] + [4 / 6] * 6 + [1.0] * 4, dtype=torch.float32))
    per_group = [weights[:2].sum(), weights[2:8].sum(), weights[8:].sum()]
    assert torch.allclose(torch.stack(per_group), torch.full((3,), 4.0))


def test_nonzero_variance_treats_nan_and_zero_as_no_signal() -> None:
    std = torch.tensor([0.0, float("nan"), 0.5, 1e-12])
    assert nonzero_variance(std).tolist() == [False, False, True, False]


def test_balance_rows_is_an_equal_share_permutation_that_helps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        world = int(rng.integers(2, 5))
        costs = np.repeat(rng.uniform(1, 100, 12), rng.integers(1, 5, 12))[: world * 6]
        costs = costs[: (costs.size // world) * world]
        order = balance_rows(costs, world)
        assert sorted(order.tolist()) == list(range(costs.size))
        loads = costs[order].reshape(world, -1).sum(axis=1)
        assert loads.max() <= costs.reshape(world, -1).sum(axis=1).max() + 1e-9
    assert balance_rows(np.ones(8), 2).tolist() == list(range(8))

"""The pilot round as one object: its size, the second round's budget, its checks and its decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.calibration import group_successes
from knapsack_trl.core.config import AllocatorConfig
from knapsack_trl.core.pilot import (
    SecondRound,
    allocate_second_round,
    check_pilot_config,
    second_round_budget,
)


@dataclass(frozen=True)
class PilotRound:
    """``pilot_rollouts`` rollouts for each of ``num_prompts`` prompts first, then ``second_round_budget``
    more split by the knapsack on what they showed. Built (and checked) once from the settings."""

    pilot_rollouts: int
    num_prompts: int
    budget: int
    second_round_budget: int

    @classmethod
    def from_config(
        cls,
        config: AllocatorConfig,
        pilot_rollouts: int,
        num_prompts: int,
        budget: int,
        num_processes: int = 1,
    ) -> PilotRound:
        """The pilot these settings describe; a SettingError naming the setting when it cannot run."""
        check_pilot_config(config)
        second = second_round_budget(
            pilot_rollouts, num_prompts, budget, num_processes, config.budget_schedule().lowest_n_max()
        )
        return cls(int(pilot_rollouts), int(num_prompts), int(budget), second)

    def pilot_sizes(self) -> np.ndarray:
        """The pilot's rollouts per prompt."""
        return np.full(self.num_prompts, self.pilot_rollouts, dtype=np.int64)

    def decide(
        self,
        allocator: KnapsackRolloutAllocator,
        prompt_ids: Sequence[str],
        pilot_rewards: np.ndarray,
        *,
        step: int = 0,
        prior_success_rate: np.ndarray | None = None,
        uniform: bool = False,
    ) -> SecondRound:
        """The second round from the pilot's per-rollout rewards (prompt after prompt, NaN = unscorable),
        successes counted with the tracker's threshold (the one its history was recorded with)."""
        successes, scored = group_successes(
            pilot_rewards, self.pilot_sizes(), allocator.tracker.success_threshold
        )
        return allocate_second_round(
            allocator,
            prompt_ids,
            successes,
            self.pilot_rollouts,
            self.second_round_budget,
            step=step,
            prior_success_rate=prior_success_rate,
            pilot_scored=scored,
            uniform=uniform,
        )

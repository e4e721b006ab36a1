"""What a knapsack trainer tells the outside after each generation batch: the public hook for experiments.

``trainer.add_knapsack_listener(fn)`` registers ``fn(event)``; it is called on every process, after the
batch's rewards, advantages and metrics are final, with the same event everywhere. Experiments record,
evaluate or plot through it instead of overriding the trainer's private methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AllocationEvent:
    """One generation batch as the trainer saw it (canonical order: prompt after prompt)."""

    step: int  # the optimiser step the batch was generated at
    prompt_ids: list[str]  # the P prompts
    rollouts: np.ndarray  # (P,) rollouts each got
    rewards: np.ndarray  # (B,) aggregated reward per rollout (NaN: unscorable)
    completion_lengths: np.ndarray | None  # (B,) completion tokens per rollout
    allocation: Any  # the core Allocation on the main process, None on the others
    metrics: dict[str, float]  # the batch's knapsack/* metrics

    @property
    def rollout_prompt_ids(self) -> list[str]:
        """The prompt id of every rollout, aligned with :attr:`rewards`."""
        return [pid for pid, n in zip(self.prompt_ids, self.rollouts.tolist()) for _ in range(n)]


AllocationListener = Callable[[AllocationEvent], None]

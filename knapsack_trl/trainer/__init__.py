"""TRL adapters: configs and trainers that re-allocate rollouts per prompt (imports torch and trl)."""

from knapsack_trl.trainer.config import (
    KnapsackConfigMixin,
    KnapsackGRPOConfig,
    KnapsackRLOOConfig,
    check_trl_version,
)
from knapsack_trl.trainer.grpo import KnapsackGRPOTrainer
from knapsack_trl.trainer.rloo import KnapsackRLOOTrainer

__all__ = [
    "KnapsackConfigMixin",
    "KnapsackGRPOConfig",
    "KnapsackGRPOTrainer",
    "KnapsackRLOOConfig",
    "KnapsackRLOOTrainer",
    "check_trl_version",
]

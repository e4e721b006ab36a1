"""``KnapsackGRPOTrainer``: TRL's GRPOTrainer with a knapsack-allocated number of rollouts per prompt."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from trl import GRPOTrainer

from knapsack_trl.trainer.advantages import AdvantageResult, grpo_advantages
from knapsack_trl.trainer.config import KnapsackGRPOConfig
from knapsack_trl.trainer.mixin import KnapsackTrainerMixin
from knapsack_trl.trainer.startup import knapsack_args
from knapsack_trl.trainer.trl_bridge import GRPOBridge


class KnapsackGRPOTrainer(KnapsackTrainerMixin, GRPOBridge, GRPOTrainer):
    """Drop-in :class:`trl.GRPOTrainer`: same arguments, a :class:`KnapsackGRPOConfig` for ``args``.

    Each generation batch's ``generation_batch_size`` rollouts are split among its
    ``generation_batch_size // num_generations`` prompts by a knapsack over their estimated success
    rates; advantages follow GRPO's rules per (variable-size) group.
    """

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: KnapsackGRPOConfig | None = None,
        train_dataset: Any = None,
        *rest: Any,
        **kwargs: Any,
    ):
        bound = inspect.signature(GRPOTrainer.__init__).bind(
            None, model, reward_funcs, args, train_dataset, *rest, **kwargs
        )
        environment = bound.arguments.get("environment_factory")
        args = knapsack_args(
            "KnapsackGRPOTrainer", KnapsackGRPOConfig, model, args, train_dataset, environment
        )
        super().__init__(model, reward_funcs, args, train_dataset, *rest, **kwargs)
        self._knapsack_setup()

    def _knapsack_advantages(
        self, rewards_per_func: torch.Tensor, sizes: torch.Tensor, kl: torch.Tensor | None
    ) -> AdvantageResult:
        return grpo_advantages(
            rewards_per_func,
            sizes,
            self.reward_weights,
            scale_rewards=self.scale_rewards,
            multi_objective_aggregation=self.multi_objective_aggregation,
        )

"""``KnapsackGRPOTrainer``: TRL's GRPOTrainer with a knapsack-allocated number of rollouts per prompt."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from trl import GRPOTrainer

from knapsack_trl.trainer.advantages import AdvantageResult, grpo_advantages
from knapsack_trl.trainer.config import KnapsackGRPOConfig
from knapsack_trl.trainer.mixin import KnapsackTrainerMixin, knapsack_args


def _num_generations_parameter() -> inspect.Signature:
    """Signature of ``GRPOTrainer._generate_single_turn``; it must take ``num_generations``."""
    signature = inspect.signature(GRPOTrainer._generate_single_turn)
    if "num_generations" not in signature.parameters:
        raise RuntimeError(
            "GRPOTrainer._generate_single_turn has no `num_generations` parameter in this trl version "
            f"(signature {signature}); KnapsackGRPOTrainer cannot ask vLLM for one completion per rollout."
        )
    return signature


class KnapsackGRPOTrainer(KnapsackTrainerMixin, GRPOTrainer):
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
        self._knapsack_single_turn_signature = _num_generations_parameter()
        super().__init__(model, reward_funcs, args, train_dataset, *rest, **kwargs)
        self._knapsack_setup()

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        """One completion per row while re-allocating: vLLM server mode would otherwise dedupe by a fixed group."""
        if self._knapsack_active:
            bound = self._knapsack_single_turn_signature.bind(self, *args, **kwargs)
            bound.arguments["num_generations"] = 1
            return super()._generate_single_turn(*bound.args[1:], **bound.kwargs)
        return super()._generate_single_turn(*args, **kwargs)

    def _generate(self, prompts: list) -> Any:
        """TRL's generation; while re-allocating, keeps each rollout's mask of generated tokens (tool results
        and a ``rollout_func``'s ``env_mask`` 0) for the rollout's token cost. A ``rollout_func`` reads
        ``trainer.num_generations == 1`` meanwhile: its rows are the allocation's, one completion each."""
        if not self._knapsack_active:
            return super()._generate(prompts)
        group = self.num_generations
        if self.rollout_func is not None:  # the rows are already expanded: one completion per row
            self.num_generations = 1
        try:
            result = super()._generate(prompts)
        finally:
            self.num_generations = group
        self._knapsack_tool_mask = result[2]
        return result

    def _knapsack_advantages(
        self, rewards_per_func: torch.Tensor, sizes: torch.Tensor, order: torch.Tensor, output: dict[str, Any]
    ) -> AdvantageResult:
        return grpo_advantages(
            rewards_per_func,
            sizes,
            self.reward_weights,
            scale_rewards=self.scale_rewards,
            multi_objective_aggregation=self.multi_objective_aggregation,
        )

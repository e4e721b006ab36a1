"""``KnapsackRLOOTrainer``: TRL's RLOOTrainer with a knapsack-allocated number of rollouts per prompt."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import gather
from trl import RLOOTrainer

from knapsack_trl.trainer.advantages import AdvantageResult, rloo_advantages
from knapsack_trl.trainer.config import KnapsackRLOOConfig
from knapsack_trl.trainer.mixin import KnapsackTrainerMixin, knapsack_args


class KnapsackRLOOTrainer(KnapsackTrainerMixin, RLOOTrainer):
    """Drop-in :class:`trl.RLOOTrainer`: same arguments, a :class:`KnapsackRLOOConfig` for ``args``.

    The leave-one-out baseline of a rollout is the mean reward of the other scorable rollouts of its
    own (variable-size) group.
    """

    def __init__(
        self,
        model: Any,
        reward_funcs: Any,
        args: KnapsackRLOOConfig | None = None,
        train_dataset: Any = None,
        *rest: Any,
        **kwargs: Any,
    ):
        args = knapsack_args("KnapsackRLOOTrainer", KnapsackRLOOConfig, model, args, train_dataset)
        self._knapsack_logps: list[torch.Tensor] = []
        self._knapsack_kl: list[torch.Tensor] = []
        super().__init__(model, reward_funcs, args, train_dataset, *rest, **kwargs)
        self._knapsack_setup()

    def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any) -> Any:
        """One completion per row while re-allocating (RLOO reads the group size from ``self.num_generations``)."""
        if not self._knapsack_active:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields)
        group, self.num_generations = self.num_generations, 1
        try:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields)
        finally:
            self.num_generations = group

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        """Keep the policy's and the reference's log-probs: RLOO folds their KL into the reward."""
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._knapsack_active and self.beta != 0.0:
            self._knapsack_logps.append(out[0])
        return out

    def _knapsack_before_generation(self) -> None:
        self._knapsack_logps, self._knapsack_kl = [], []

    def _knapsack_after_round(self, output: dict[str, Any]) -> None:
        """Each round's sequence KL (TRL's sum of ``old - ref`` over completion tokens), this process's rows."""
        if self.beta == 0.0:
            return
        if len(self._knapsack_logps) != 2:
            raise RuntimeError(
                f"Expected the policy's and the reference model's log-probs during generation, caught "
                f"{len(self._knapsack_logps)}; this trl version computes RLOO's KL differently."
            )
        old_per_token_logps, ref_per_token_logps = self._knapsack_logps
        per_token_kl = old_per_token_logps - ref_per_token_logps
        self._knapsack_kl.append((per_token_kl * output["completion_mask"]).sum(-1))
        self._knapsack_logps = []

    def _knapsack_advantages(
        self, rewards_per_func: torch.Tensor, sizes: torch.Tensor, order: torch.Tensor, output: dict[str, Any]
    ) -> AdvantageResult:
        kl = None
        if self.beta != 0.0:
            kl = torch.cat(self._knapsack_kl)
            kl = gather(kl) if self.accelerator.num_processes > 1 else kl
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            kl = kl[inverse]
            self._knapsack_kl = []
        return rloo_advantages(
            rewards_per_func,
            sizes,
            self.reward_weights,
            kl=kl,
            beta=self.beta,
            reward_clip_range=self.reward_clip_range,
            normalize_advantages=self.normalize_advantages,
        )

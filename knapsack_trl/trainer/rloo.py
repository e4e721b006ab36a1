"""``KnapsackRLOOTrainer``: TRL's RLOOTrainer with a knapsack-allocated number of rollouts per prompt."""

from __future__ import annotations

from typing import Any

import torch
from trl import RLOOTrainer

from knapsack_trl.trainer.advantages import AdvantageResult, rloo_advantages
from knapsack_trl.trainer.config import KnapsackRLOOConfig
from knapsack_trl.trainer.mixin import KnapsackTrainerMixin
from knapsack_trl.trainer.startup import knapsack_args
from knapsack_trl.trainer.trl_bridge import Capture, RLOOBridge


class KnapsackRLOOTrainer(KnapsackTrainerMixin, RLOOBridge, RLOOTrainer):
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
        super().__init__(model, reward_funcs, args, train_dataset, *rest, **kwargs)
        self._knapsack_setup()

    def _knapsack_round_kl(self, capture: Capture, output: dict[str, Any]) -> torch.Tensor | None:
        """The round's sequence KL (TRL's sum of ``old - ref`` over completion tokens), this process's rows."""
        if self.beta == 0.0:
            return None
        if len(capture.logps) != 2:
            raise RuntimeError(
                f"Expected the policy's and the reference model's log-probs during generation, caught "
                f"{len(capture.logps)}; this trl version computes RLOO's KL differently."
            )
        old_per_token_logps, ref_per_token_logps = capture.logps
        per_token_kl = old_per_token_logps - ref_per_token_logps
        return (per_token_kl * output["completion_mask"]).sum(-1)

    def _knapsack_advantages(
        self, rewards_per_func: torch.Tensor, sizes: torch.Tensor, kl: torch.Tensor | None
    ) -> AdvantageResult:
        return rloo_advantages(
            rewards_per_func,
            sizes,
            self.reward_weights,
            kl=kl,
            beta=self.beta,
            reward_clip_range=self.reward_clip_range,
            normalize_advantages=self.normalize_advantages,
        )

"""The trainer a recipe names: one place where ``trainer_type``, the PEFT and quantization settings become a
trainer, for ``knapsack-trl train``, ``compare`` and the step-speed benchmark alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def recipe_trainer(
    script_args: Any,
    model_args: Any,
    training_args: Any,
    model: Any,
    rewards: Sequence[Any],
    train_dataset: Any,
    **trainer_kwargs: Any,
) -> Any:
    """A ``KnapsackGRPOTrainer`` or ``KnapsackRLOOTrainer`` (``script_args.trainer_type``) on ``model`` (a path or
    a loaded model) with the recipe's PEFT config, and its quantization config when TRL loads the model from a
    path. ``trainer_kwargs`` go to the trainer as they are (``eval_dataset``, ``callbacks``, ``tools``, ...)."""
    from trl import get_peft_config, get_quantization_config

    from knapsack_trl.trainer import KnapsackGRPOTrainer, KnapsackRLOOTrainer

    trainer_cls = KnapsackGRPOTrainer if script_args.trainer_type == "grpo" else KnapsackRLOOTrainer
    if isinstance(model, str):
        trainer_kwargs.setdefault("quantization_config", get_quantization_config(model_args))
    return trainer_cls(
        model=model,
        reward_funcs=list(rewards),
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
        **trainer_kwargs,
    )

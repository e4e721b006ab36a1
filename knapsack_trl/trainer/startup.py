"""The knapsack trainers' start-up checks: what must hold before TRL's own set-up runs."""

from __future__ import annotations

import warnings
from typing import Any

from trl.trainer.utils import get_config_model_id

from knapsack_trl.trainer.config import KnapsackConfigMixin
from knapsack_trl.trainer.trl_bridge import check_trl_version


def knapsack_args(
    trainer_name: str,
    config_class: type,
    model: Any,
    args: Any,
    train_dataset: Any,
    environment_factory: Any = None,
) -> Any:
    """The trainer's ``args`` (TRL's default output dir when None), checked before TRL's set-up runs."""
    check_trl_version()
    if args is None:
        model_name = model if isinstance(model, str) else get_config_model_id(model.config)
        args = config_class(f"{model_name.split('/')[-1]}-{trainer_name.removesuffix('Trainer')}")
    if not isinstance(args, config_class):
        raise TypeError(
            f"{trainer_name} needs a {config_class.__name__}, got {type(args).__name__}; build "
            f"{config_class.__name__}(...) with the same arguments (knapsack_enabled=False gives the stock trainer)."
        )
    check_train_dataset(train_dataset, args, environment_factory)
    return args


def check_train_dataset(dataset: Any, args: KnapsackConfigMixin, environment_factory: Any = None) -> None:
    """Fail at start-up when rows carry neither a stable prompt id nor prompt text to hash, or when a
    candidate pool cannot be drawn from the dataset.

    Without a dataset TRL decides: its own error, or (an environment owns the data) its placeholder rows,
    which name no task and so are allocated uniformly. Environment rows need no prompt: their id is a hash
    of the row :func:`.plan.row_task_id`.
    """
    if not args.knapsack_enabled:
        return
    if args.knapsack_candidate_factor > 1:
        note = args.lower_default_candidate_factor(len(dataset) if hasattr(dataset, "__len__") else None)
        if note:
            warnings.warn(note, stacklevel=3)
    if args.knapsack_candidate_factor > 1:
        _check_candidate_dataset(dataset, args)
    if dataset is None:
        return
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an IterableDataset without features: checked on the first batch instead
        return
    if isinstance(environment_factory, dict) and "environment" not in columns:
        raise ValueError(
            f"environment_factory is a dict of {sorted(map(str, environment_factory))}, so each training row must "
            f"name its environment in an 'environment' column; the dataset has none (columns: {columns}). Add the "
            "column, or pass a single environment factory."
        )
    if environment_factory is not None:
        return
    if args.knapsack_prompt_id_column not in columns and "prompt" not in columns:
        raise ValueError(
            f"The training dataset has neither a {args.knapsack_prompt_id_column!r} column "
            f"(knapsack_prompt_id_column) nor a 'prompt' column to hash (columns: {columns}). Knapsack allocation "
            "keys each prompt's success history on a stable id: add an id column (e.g. the row index) and point "
            "knapsack_prompt_id_column at it, or set knapsack_enabled=False."
        )


def _check_candidate_dataset(dataset: Any, args: KnapsackConfigMixin) -> None:
    """With candidates the sampler draws ``c x P`` distinct prompts per batch from a map-style dataset."""
    factor, candidates = args.knapsack_candidate_factor, args.knapsack_candidates_per_batch
    if dataset is None:
        raise ValueError(
            f"knapsack_candidate_factor={factor} chooses among the training dataset's prompts, but no "
            "train_dataset was given (an environment's placeholder rows name no task); pass a train_dataset "
            "or set knapsack_candidate_factor=1."
        )
    if not hasattr(dataset, "__len__"):
        raise ValueError(
            f"knapsack_candidate_factor={factor} needs a map-style train_dataset (an IterableDataset has no "
            "length to draw candidate pools from); load it as a Dataset or set knapsack_candidate_factor=1."
        )
    if len(dataset) < candidates:
        raise ValueError(
            f"The training dataset has {len(dataset)} prompts, fewer than one generation batch of candidates: "
            f"knapsack_candidate_factor={factor} x {args.knapsack_prompts_per_batch} prompts per batch = "
            f"{candidates}. Lower knapsack_candidate_factor or generation_batch_size, or add prompts."
        )

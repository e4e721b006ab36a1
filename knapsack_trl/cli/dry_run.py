"""``knapsack-trl train --dry-run``: check a recipe without a model and print what it resolves to.

Every key parses, the budget arithmetic holds, the rewards resolve, a ``dataset_name`` that looks like a
path exists, and a local dataset has the columns they need. The hardware is checked as the real run checks
it (:mod:`knapsack_trl.recipe.hardware`): on a machine without a GPU a bf16 / fp16 / vLLM recipe fails,
naming the field and the fix, unless ``--assume-gpu`` asks for the GPU host's view (the hardware checks
are then skipped, and the report says so).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from knapsack_trl.recipe import (
    ASSUME_GPU_FLAG,
    TINY_SCHEME,
    CommandLine,
    RecipeError,
    budget_summary,
    check_dataset_source,
    check_hardware,
    check_recipe_dataset,
    dataset_is_local,
    file_split_note,
    gguf_cache_folder,
    gguf_file,
    gpu_available,
    load_recipe_dataset,
    parse_tiny_spec,
    preflight,
    recipe_rewards,
    require_gguf,
    resolved_recipe,
    reward_columns,
    reward_name,
)


def assume_gpu_flags(cli: CommandLine) -> list[str]:
    """``--assume-gpu`` on a machine without a GPU: build the config with use_cpu, so transformers' bf16
    refusal (a statement about this machine, not the recipe) does not hide the recipe's other problems."""
    if gpu_available() or cli.setting("use_cpu") not in (None, False, "false", "False"):
        return []
    return ["--use_cpu", "true"]


def dry_run(
    script_args: Any,
    training_args: Any,
    model_args: Any,
    cli: CommandLine,
    assume_gpu: bool = False,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Everything a recipe can be checked for without a model; returns the report (raises RecipeError)."""
    notes = list(notes or [])
    check_dataset_source(script_args)  # a missing local file is an error here too, not a "skipped" hub name
    if assume_gpu:
        if not gpu_available():
            notes.append(
                f"no GPU here and {ASSUME_GPU_FLAG}: bf16, fp16, vLLM and device checks were skipped; the GPU "
                "host checks them when training starts."
            )
    else:
        check_hardware(training_args, model_args)
    spec = model_args.model_name_or_path
    gguf = gguf_file(spec)
    if gguf is not None:
        folder = gguf_cache_folder(gguf)
        done = (folder / "config.json").exists()
        if not done:  # a cached folder loads without the gguf package, as in the real run
            require_gguf(spec)
        model_note = (
            f"GGUF file {gguf}, {'dequantized in' if done else 'dequantized on first use into'} {folder}"
        )
    elif spec.startswith(TINY_SCHEME):
        parse_tiny_spec(spec)
        model_note = f"tiny model, built into {Path(training_args.output_dir) / 'tiny_init'}"
    elif Path(spec).expanduser().exists():
        model_note = "local folder"
    else:
        model_note = "hub model (not downloaded by a dry run)"
    rewards = recipe_rewards(script_args.reward_funcs)
    try:
        preflight(rewards)
    except RecipeError as exc:  # the recipe may be checked on another machine than the one that trains
        notes.append(f"{exc} (training on this machine would stop here)")
    if dataset_is_local(script_args):
        dataset_report: dict[str, Any] = check_recipe_dataset(
            load_recipe_dataset(script_args, seed=training_args.seed), rewards, training_args
        )
        split_note = file_split_note(script_args, training_args.seed)
        if split_note is not None:
            dataset_report["split"] = split_note
    else:
        needed = sorted({c for func in rewards for c in reward_columns(func)} | {"prompt"})
        dataset_report = {
            "skipped": f"hub dataset {script_args.dataset_name!r} is not downloaded by a dry run; it needs "
            f"columns {needed}, checked when training starts."
        }
    if training_args.use_vllm and importlib.util.find_spec("vllm") is None:
        notes.append(
            "use_vllm is set but vllm is not installed here: pip install 'trl[vllm]' on the GPU host (or, in "
            "your knapsack-trl clone there, pip install -e '.[vllm]')."
        )
    return {
        "dry_run": "ok",
        "recipe": cli.recipe_path,
        "trainer": f"{'KnapsackGRPOTrainer' if script_args.trainer_type == 'grpo' else 'KnapsackRLOOTrainer'}",
        "model": {"model_name_or_path": spec, "source": model_note},
        "budget": budget_summary(training_args),
        "rewards": {name: reward_name(func) for name, func in zip(script_args.reward_funcs, rewards)},
        "dataset": dataset_report,
        "notes": notes,
        "resolved": resolved_recipe((script_args, training_args, model_args), cli.set_keys()),
    }

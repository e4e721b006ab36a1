"""``knapsack-trl train``: train a policy with knapsack rollout allocation from a YAML recipe.

Single process::

    knapsack-trl train --config recipes/tiny/arithmetic-knapsack.yaml --max_steps 5

Several processes (``accelerate`` starts one Python per GPU; each runs this module)::

    accelerate launch --config_file recipes/accelerate/ddp.yaml -m knapsack_trl.train \\
        --config recipes/gsm8k/qwen2.5-0.5b-knapsack.yaml

``--dry-run`` checks a recipe without loading a model (:mod:`.dry_run`; ``--assume-gpu`` checks a GPU
recipe on a machine without one). ``--cpu-smoke`` turns any recipe into a few-step CPU run (CPU, fp32, no
vLLM, 2 steps of 2 prompts, no hub push, no trackers, output in ``<output_dir>-cpu-smoke``) and prints
what it changed (:func:`knapsack_trl.recipe.hardware.cpu_smoke_flags`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from knapsack_trl.cli.dry_run import assume_gpu_flags, dry_run
from knapsack_trl.recipe import (
    ASSUME_GPU_FLAG,
    CPU_SMOKE_FLAG,
    PROG,
    CommandLine,
    RecipeError,
    check_hardware,
    check_recipe_dataset,
    cpu_smoke_flags,
    describe_run,
    fit_short_run,
    load_recipe_dataset,
    parse_command_line,
    preflight,
    prepare_model,
    recipe_agents,
    recipe_rewards,
)
from knapsack_trl.recipe.hardware import cpu_bf16_flags
from knapsack_trl.recipe.models import recipe_model_init_kwargs
from knapsack_trl.recipe.trainers import recipe_trainer


def train(script_args: Any, training_args: Any, model_args: Any) -> Any:
    """Build the trainer from parsed arguments, train, save the model; returns the trainer."""
    rewards = recipe_rewards(script_args.reward_funcs)
    agents = recipe_agents(script_args)
    preflight(rewards)
    train_dataset = load_recipe_dataset(script_args, seed=training_args.seed)
    check_recipe_dataset(train_dataset, rewards, training_args)
    eval_dataset = None
    if str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no":
        eval_dataset = load_recipe_dataset(
            script_args, split=script_args.dataset_test_split, seed=training_args.seed
        )

    model_path = prepare_model(model_args, training_args)
    training_args.model_init_kwargs = recipe_model_init_kwargs(model_args, training_args)

    trainer = recipe_trainer(
        script_args,
        model_args,
        training_args,
        model_path,
        rewards,
        train_dataset,
        eval_dataset=eval_dataset,
        **agents,
    )
    trainer.accelerator.print(f"knapsack-trl: {describe_run(type(trainer).__name__, training_args)}")
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    # trainer_state.json keeps the full log history (knapsack/* metrics included) next to the model.
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.accelerator.print(
        f"knapsack-trl: model, metrics and log history saved to {training_args.output_dir}"
    )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.finish()
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``knapsack-trl train`` and ``python -m knapsack_trl.train``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    smoke, assume_gpu = CPU_SMOKE_FLAG in args, ASSUME_GPU_FLAG in args
    args = [a for a in args if a not in (CPU_SMOKE_FLAG, ASSUME_GPU_FLAG)]
    try:
        cli = CommandLine.read(args)
        if assume_gpu and not cli.dry_run:
            raise RecipeError(f"{ASSUME_GPU_FLAG} only goes with --dry-run (a real run uses this machine).")
        notes: list[str] = []
        if smoke:  # read again with the added flags, so the dry run's `resolved` shows them
            flags, changes = cpu_smoke_flags(cli)
            args = [*args, *flags]
            cli = CommandLine.read(args)
            notes = [f"{CPU_SMOKE_FLAG}: {change}" for change in changes]
        if not assume_gpu:  # bf16 autocast on a CPU only where it is fast
            flags, changes = cpu_bf16_flags(cli)
            if flags:
                cli = CommandLine.read([*args, *flags])
                notes += changes
        hidden = assume_gpu_flags(cli) if assume_gpu and not smoke else []  # not the GPU host's settings
        script_args, training_args, model_args = parse_command_line(cli, hidden)
        notes += fit_short_run(training_args)
        if script_args.dry_run:
            import yaml

            report = dry_run(script_args, training_args, model_args, cli, assume_gpu=assume_gpu, notes=notes)
            print(yaml.safe_dump(report, sort_keys=False, width=110), end="")
            return 0
        check_hardware(training_args, model_args)
        for note in notes:
            print(f"knapsack-trl: {note}")
        train(script_args, training_args, model_args)
    except RecipeError as exc:
        print(f"{PROG}: recipe error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

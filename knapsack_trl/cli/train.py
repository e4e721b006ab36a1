"""``knapsack-trl train``: train a policy with knapsack rollout allocation from a YAML recipe.

Single process::

    knapsack-trl train --config recipes/tiny/arithmetic-knapsack.yaml --max_steps 5

Several processes (``accelerate`` starts one Python per GPU; each runs this module)::

    accelerate launch --config_file recipes/accelerate/ddp.yaml -m knapsack_trl.train \\
        --config recipes/gsm8k/qwen2.5-0.5b-knapsack.yaml

``--dry-run`` checks a recipe without loading a model (:mod:`.dry_run`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from knapsack_trl.cli.dry_run import cpu_overrides, dry_run
from knapsack_trl.recipe import (
    PROG,
    CommandLine,
    RecipeError,
    check_recipe_dataset,
    describe_run,
    load_recipe_dataset,
    parse_command_line,
    preflight,
    prepare_model,
    recipe_agents,
    recipe_rewards,
)


def train(script_args: Any, training_args: Any, model_args: Any) -> Any:
    """Build the trainer from parsed arguments, train, save the model; returns the trainer."""
    from trl import get_peft_config, get_quantization_config

    from knapsack_trl.trainer import KnapsackGRPOTrainer, KnapsackRLOOTrainer

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
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    trainer_cls = KnapsackGRPOTrainer if script_args.trainer_type == "grpo" else KnapsackRLOOTrainer
    trainer = trainer_cls(
        model=model_path,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        **agents,
    )
    trainer.accelerator.print(f"knapsack-trl: {describe_run(trainer_cls.__name__, training_args)}")
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
    try:
        cli = CommandLine.read(sys.argv[1:] if argv is None else argv)
        extra = cpu_overrides(cli) if cli.dry_run else []
        script_args, training_args, model_args = parse_command_line(cli, extra)
        if script_args.dry_run:
            import yaml

            report = dry_run(script_args, training_args, model_args, cli, forced_cpu=bool(extra))
            print(yaml.safe_dump(report, sort_keys=False, width=110), end="")
            return 0
        train(script_args, training_args, model_args)
    except RecipeError as exc:
        print(f"{PROG}: recipe error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``knapsack-trl compare``: run a recipe both ways (uniform and knapsack) over seeds and report.

Two entry points share one harness:

- ``knapsack-trl compare --config RECIPE.yaml --seeds 3 [--oracle] [recipe flags ...]`` parses the
  recipe exactly as ``knapsack-trl train`` does and runs it with ``knapsack_enabled`` false (stock TRL,
  uniform) and with knapsack allocation, from the same starting weights and seed. Held-out numbers come from the recipe's
  test split (prompts also in the training split are removed). A ``tiny://`` model is first warmed up
  with the demo's supervised phase: from random weights there is nothing for RL to sharpen.
- ``knapsack-trl compare --seeds 3 [--oracle]`` without ``--config`` runs the demo's experiment
  (:mod:`knapsack_trl.experiments.demo`) once per seed.

The harness (:mod:`.harness`) measures every run the same way: a listener on the trainer's public hook
sees each generation batch's rewards and prompt ids, whatever the allocation, and a callback evaluates
the held-out prompts every few steps with its own RNG stream, so evaluation never changes training.

Every finished (method, seed) run is saved in ``--output-dir`` as it ends, with the protocol and the
seeds' shared starts (:mod:`.run_folder`): the same command again skips finished runs and runs the rest,
more ``--methods`` or ``--seeds`` add runs, a changed setting is refused by name, and the report is
rebuilt from every run file (``--report-only``: without running anything).

The oracle row allocates with the *true* success rates of the batch's prompts, estimated from many extra
samples of the current policy just before each step (not counted as rollouts consumed): how much of
the possible gain the history-based estimates capture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from knapsack_trl.experiments.demo import (
    DEFAULT_TASK,
    TASKS,
    DemoSettings,
    default_workers,
    demo_protocol,
    quiet_libraries,
    report_from_folder,
    run_experiment,
)
from knapsack_trl.experiments.evaluation import heldout_evaluator, load_policy, true_rates
from knapsack_trl.experiments.harness import train_method, warm_up_arithmetic
from knapsack_trl.experiments.methods import ARMS, DEFAULT_ARM, default_methods, parse_methods
from knapsack_trl.experiments.report import RunRecord, format_ratios, format_table
from knapsack_trl.experiments.run_folder import (
    RunFolder,
    add_folder_flags,
    field_defaults,
    fingerprint,
    make_protocol,
    open_folder,
    read_json,
    seeds_per_arm,
    trainer_settings,
    write_folder_report,
    write_json,
)
from knapsack_trl.recipe import (
    TINY_SCHEME,
    CommandLine,
    check_recipe_dataset,
    fit_short_run,
    load_recipe_dataset,
    parse_args,
    prepare_model,
    recipe_rewards,
)
from knapsack_trl.recipe.hardware import cpu_bf16_flags
from knapsack_trl.recipe.trainers import recipe_trainer
from knapsack_trl.tasks.arithmetic import load_tiny, make_splits, save_tiny
from knapsack_trl.trainer.plan import row_prompt_id

DEFAULT_OUTPUT_DIR = "knapsack_compare_report"
COMMAND = "knapsack-trl compare"


# --------------------------------------------------------------------------- recipes


@dataclass
class RecipePlan:
    """A recipe comparison before any run: the recipe as parsed for the first seed, the evaluation, and
    the protocol (everything that decides a run's result) checked against the output folder."""

    base: list[str]
    script_args: Any
    training_args: Any
    model_args: Any
    eval_every: int
    protocol: dict[str, Any]


@dataclass
class RecipeSeed:
    """What every method of one seed shares: the parsed recipe, data, rewards, start and measurement."""

    seed: int
    script_args: Any
    model_args: Any
    rewards: list[Callable[..., Any]]
    train_ds: Any
    model_path: str
    evaluate: Callable[[Any], dict[str, float]]
    start_eval: dict[str, float]


def _cpu_bf16_flags(config: str, recipe_flags: list[str]) -> list[str]:
    """``--bf16 false`` where the recipe asks for bf16 autocast on a CPU without AMX, as ``train`` does
    (the flag enters the protocol: such a machine's runs are not mixed with an AMX machine's)."""
    flags, notes = cpu_bf16_flags(CommandLine.read(["--config", config, *recipe_flags]))
    for note in notes:
        print(f"knapsack-trl compare: {note}", file=sys.stderr)
    return flags


def _plan_recipe(ns: argparse.Namespace, recipe_flags: list[str], work_dir: str) -> RecipePlan:
    """Parse the recipe and every arm's config (cheap: nothing is loaded), fill the evaluation flags, and
    write down what decides a run's result."""
    base = ["--config", ns.config, *recipe_flags]
    out = os.path.join(work_dir, "plan")
    script_args, training_args, model_args = parse_args([*base, "--seed", str(ns.seed), "--output_dir", out])
    _scale_eval(ns, training_args)
    if ns.warmup_steps is None:
        ns.warmup_steps = DemoSettings.for_task("control").sft_steps
    eval_every = ns.eval_every or max(1, training_args.max_steps // 8)
    tiny = model_args.model_name_or_path.startswith(TINY_SCHEME)
    configs = {m: _arm_args(base, ns.seed, m, training_args.num_generations, out)[0] for m in _methods(ns)}
    arms = {m: trainer_settings(config) for m, config in configs.items()}
    settings = {
        "recipe": {**asdict(script_args), **asdict(model_args)},
        "tiny model warm-up steps": ns.warmup_steps if tiny else None,
        "evaluation": {
            "held-out prompts (at most)": ns.eval_rows,
            "samples per held-out prompt": ns.eval_samples,
            "every steps": eval_every,
            "oracle samples": ns.oracle_samples,
        },
    }
    seeds = list(range(ns.seed, ns.seed + ns.seeds))
    return RecipePlan(
        base,
        script_args,
        training_args,
        model_args,
        eval_every,
        make_protocol(
            "recipe",
            settings,
            arms,
            seeds,
            defaults={
                "settings": {"recipe": {**field_defaults(script_args), **field_defaults(model_args)}},
                "arms": {m: field_defaults(config) for m, config in configs.items()},
            },
        ),
    )


def _run_recipe(ns: argparse.Namespace, plan: RecipePlan, folder: RunFolder, work_dir: str) -> None:
    """Every (seed, method) not yet in ``folder``, each saved as it ends; a seed whose methods have all
    finished is not even prepared."""
    methods = _methods(ns)
    for seed in range(ns.seed, ns.seed + ns.seeds):
        todo = [m for m in methods if not folder.has_run(m, seed)]
        if not todo:
            continue
        shared = _prepare_seed(ns, plan, seed, work_dir, folder)
        for method in todo:
            folder.save_run(_run_recipe_method(ns, plan, shared, method, work_dir))


def _report_settings(
    ns: argparse.Namespace, recipe_flags: list[str], plan: RecipePlan, folder: RunFolder
) -> dict[str, Any]:
    """The recipe's settings as the report states them; the data sizes from a seed's saved start."""
    args = plan.training_args
    starts = sorted(folder.start_path().glob("seed*/start.json"))
    start = read_json(starts[0]) if starts else {}
    return {
        "recipe": ns.config,
        "recipe flags": " ".join(recipe_flags) or "none",
        "trainer": plan.script_args.trainer_type,
        "model": plan.model_args.model_name_or_path,
        "rollouts per step (generation_batch_size)": args.generation_batch_size,
        "prompts per step": args.knapsack_prompts_per_batch,
        "max_steps": args.max_steps,
        "training prompts": start.get("training prompts"),
        "held-out prompts": start.get("held-out prompts"),
        "held-out samples per prompt": ns.eval_samples,
        "seeds": sorted({r.seed for r in folder.runs()}),
    }


START_FILE = "start.json"
START_MODEL = "model"


def _prepare_seed(
    ns: argparse.Namespace, plan: RecipePlan, seed: int, work_dir: str, folder: RunFolder
) -> RecipeSeed:
    """The seed's data and rewards, and its start: built, warmed up (``tiny://``) and measured on the first
    call and saved in ``folder``; read back on every later one, so each run of the seed, in whichever
    process, starts from the same weights and the same start evaluation. The data are loaded again and
    must hash as they did."""
    script_args, training_args, model_args = parse_args(
        [*plan.base, "--seed", str(seed), "--output_dir", os.path.join(work_dir, f"seed{seed}", "init")]
    )
    rewards = recipe_rewards(script_args.reward_funcs)
    train_ds = load_recipe_dataset(script_args, seed=seed)
    check_recipe_dataset(train_ds, rewards, training_args)
    eval_rows = _heldout_rows(script_args, train_ds, seed, ns.eval_rows)
    data = fingerprint([list(train_ds), eval_rows])
    start_file = folder.start_path(f"seed{seed}", START_FILE)
    model_dir = folder.start_path(f"seed{seed}", START_MODEL)
    tiny = model_args.model_name_or_path.startswith(TINY_SCHEME)
    saved = read_json(start_file)
    if saved is None or (tiny and not (model_dir / "config.json").is_file()):
        folder.refuse_lost_start(f"seed {seed}'s start (seed{seed}/{START_FILE}, {START_MODEL}/)", seed)
        saved = None
    if saved is not None and saved["data"] != data:
        raise SystemExit(
            f"knapsack-trl compare: seed {seed}'s training or held-out rows differ from those its finished runs in "
            f"{folder.path} used (data hash {saved['data']} then, {data} now): the recipe's dataset changed. Use "
            "a new --output-dir, or add --fresh to discard the folder's runs."
        )
    if saved is None:
        model_path = prepare_model(model_args, training_args)
        if tiny:
            taken = [*train_ds, *eval_rows]
            folder.build_folder(
                model_dir, lambda tmp: _tiny_start(model_path, taken, ns.warmup_steps, seed, tmp, ns.progress)
            )
            model_path = str(model_dir)
        model, tokenizer = load_policy(model_path, model_args)
        evaluate = heldout_evaluator(tokenizer, eval_rows, rewards, training_args, ns.eval_samples, seed)
        start = {
            "data": data,
            "model": model_path,
            "training prompts": len(train_ds),
            "held-out prompts": len(eval_rows),
            "start_eval": evaluate(model),
        }
        write_json(start_file, start)
        saved = read_json(start_file)
    else:
        model_path = str(model_dir) if tiny else prepare_model(model_args, training_args)
        _, tokenizer = load_policy(model_path, model_args)
        evaluate = heldout_evaluator(tokenizer, eval_rows, rewards, training_args, ns.eval_samples, seed)
    return RecipeSeed(
        seed, script_args, model_args, rewards, train_ds, model_path, evaluate, saved["start_eval"]
    )


def _arm_args(
    base: list[str], seed: int, method: str, num_generations: int, output_dir: str
) -> tuple[Any, list[str]]:
    """The trainer config of ``method`` on the recipe (its arm's fields as flags), and the notes of what a
    short run had to adjust."""
    _, args, _ = parse_args(
        [
            *base,
            "--seed",
            str(seed),
            "--output_dir",
            output_dir,
            *(_flag(name, value) for name, value in ARMS[method].config_fields(num_generations).items()),
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
    )
    return args, fit_short_run(args)


def _run_recipe_method(
    ns: argparse.Namespace, plan: RecipePlan, shared: RecipeSeed, method: str, work_dir: str
) -> RunRecord:
    """One method of one seed, from the seed's shared start."""
    args, notes = _arm_args(
        plan.base,
        shared.seed,
        method,
        plan.training_args.num_generations,
        os.path.join(work_dir, f"seed{shared.seed}", method),
    )
    for note in notes:
        print(f"knapsack-trl compare: {note}", file=sys.stderr)
    model, tokenizer = load_policy(shared.model_path, shared.model_args)
    trainer = recipe_trainer(
        shared.script_args,
        shared.model_args,
        args,
        model,
        shared.rewards,
        shared.train_ds,
        processing_class=tokenizer,
    )
    by_id = {row_prompt_id(row, args.knapsack_prompt_id_column): row for row in shared.train_ds}
    truth = true_rates(
        trainer,
        tokenizer,
        by_id,
        shared.rewards,
        k=ns.oracle_samples,
        max_new=int(args.max_completion_length),
        threshold=float(args.knapsack_success_threshold),
        seed=shared.seed,
    )
    return train_method(
        method,
        trainer,
        shared.evaluate,
        eval_every=plan.eval_every,
        seed=shared.seed,
        start_eval=shared.start_eval,
        snapshot_step=args.max_steps // 2,
        truth=truth,
        progress=ns.progress,
    )


def _scale_eval(ns: argparse.Namespace, training_args: Any) -> None:
    """Fill unset evaluation flags: 256 prompts x 16 samples on a GPU; on CPU (the demo's defaults take
    hours with a real model) about 4 training steps' rollouts per evaluation (see ``--eval-every``)."""
    cpu = bool(training_args.use_cpu) or not torch.cuda.is_available()
    batch, group = training_args.generation_batch_size, training_args.num_generations
    if ns.eval_samples is None:
        ns.eval_samples = min(16, group) if cpu else 16
    if ns.eval_rows is None:
        ns.eval_rows = max(16, 4 * batch // ns.eval_samples) if cpu else 256
    if ns.eval_every is None and cpu:
        ns.eval_every = max(1, training_args.max_steps // 2)


def _heldout_rows(script_args: Any, train_ds: Any, seed: int, limit: int) -> list[dict[str, Any]]:
    """The recipe's test split minus any prompt also in the training split, at most ``limit`` rows."""
    try:
        test = load_recipe_dataset(script_args, split=script_args.dataset_test_split, seed=seed)
    except (
        Exception
    ) as exc:  # a recipe without a test split: say so instead of evaluating on training prompts
        raise SystemExit(
            f"knapsack-trl compare: cannot load the held-out split {script_args.dataset_test_split!r} "
            f"({exc}); set dataset_test_split to a split with prompts not used for training."
        ) from exc
    seen = {str(r["prompt"]) for r in train_ds}
    rows = [dict(r) for r in test if str(r["prompt"]) not in seen]
    if not rows:
        raise SystemExit(
            f"knapsack-trl compare: every held-out prompt (split {script_args.dataset_test_split!r}) is also a "
            "training prompt. Set dataset_test_split to a split with other prompts; for a single local file, "
            "keep dataset_test_fraction > 0 so a held-out part is split off it (docs/configuration.md)."
        )
    return rows[:limit]


def _tiny_start(
    model_path: str, taken_rows: Sequence[dict[str, Any]], steps: int, seed: int, out: Path, progress: bool
) -> None:
    """Save the ``tiny://`` model a seed's runs start from into ``out``: the control task's supervised
    warm-up (to a probe success of 0.2) on problems outside the training and held-out prompts, or with
    ``steps`` 0 the freshly built model as it is."""
    if steps <= 0:
        shutil.copytree(model_path, out)
        return
    s = DemoSettings.for_task("control")
    torch.set_num_threads(s.threads)
    model, tokenizer = load_tiny(model_path)
    taken = {str(r["prompt"]) for r in taken_rows}
    splits = make_splits(seed, 0, 0)
    warm_up_arithmetic(
        model,
        tokenizer,
        [r for r in splits["sft"] if r["prompt"] not in taken],
        [r for r in splits["probe"] if r["prompt"] not in taken],
        steps=steps,
        batch_size=s.sft_batch_size,
        lr=s.sft_lr,
        target=s.sft_target,
        seed=seed,
        progress=progress,
        max_new_tokens=8,
    )
    save_tiny(out, model, tokenizer)


# --------------------------------------------------------------------------- command line


def _flag(name: str, value: Any) -> str:
    """A recipe flag as TrlParser reads it (booleans as true/false)."""
    return f"--{name}={str(value).lower() if isinstance(value, bool) else value}"


def _methods(ns: argparse.Namespace) -> tuple[str, ...]:
    return parse_methods(ns.methods, default_methods(ns.oracle), "compare")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="knapsack-trl compare",
        description="Run a recipe with uniform allocation and the library's default (or any arms) over several "
        "seeds, from the same starting weights; write a report with mean ± std. Unknown flags are passed "
        "to the recipe (e.g. --max_steps 200). Without --config, runs the demo's experiment per seed.",
    )
    p.add_argument("--config", default=None, help="recipe YAML (as for knapsack-trl train)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    p.add_argument(
        "--task",
        choices=tuple(TASKS),
        default=DEFAULT_TASK,
        help=f"without --config: the demo's task, {DEFAULT_TASK} (default) or control",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument(
        "--checkpoint-seed",
        type=int,
        default=None,
        help="without --config: the seed of the data and the warm-up, if not --seed",
    )
    p.add_argument("--oracle", action="store_true", help="add the oracle row: allocation with the true p")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated arms per seed: uniform plus any of the registry's "
        "(knapsack_trl.experiments.methods: knapsack, pilot, candidates2, uniform_half, reference, oracle, ...); "
        f"default uniform,{DEFAULT_ARM} (the library's default; +oracle with --oracle)",
    )
    p.add_argument(
        "--oracle-samples", type=int, default=64, help="samples per prompt for the true p (default 64)"
    )
    p.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"folder of the report and of every finished run (default ./{DEFAULT_OUTPUT_DIR}); the same "
        "command again carries on where it stopped",
    )
    p.add_argument(
        "--eval-rows", type=int, default=None, help="held-out prompts (recipes; default 256, on CPU scaled)"
    )
    p.add_argument(
        "--eval-samples",
        type=int,
        default=None,
        help="samples per held-out prompt (default 16, on CPU scaled)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate every N steps (default max_steps/8; on CPU max_steps/2). On CPU (use_cpu) an unset "
        "evaluation flag is scaled to the run: min(16, num_generations) samples of max(16, "
        "4*generation_batch_size/samples) prompts, about 4 training steps' rollouts per evaluation.",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="supervised warm-up steps for tiny:// models (default: the demo's); 0 trains from random weights",
    )
    p.add_argument("--quick", action="store_true", help="without --config: the demo's --quick preset")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="without --config: runs at once, a process each (default: 2 on 2 or more cores, else 1)",
    )
    p.add_argument("--steps", type=int, default=None, help="without --config: GRPO steps per run")
    p.add_argument("--target-accuracy", type=float, default=None, help="target for 'rollouts to target'")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_folder_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``knapsack-trl compare``."""
    ns, rest = _parser().parse_known_args(argv)
    if ns.seeds < 1:
        raise SystemExit("knapsack-trl compare: --seeds must be >= 1.")
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_DISABLE_TELEMETRY", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(name, value)
    quiet_libraries()
    start = time.perf_counter()
    methods = _methods(ns)
    planned = [(m, seed) for seed in range(ns.seed, ns.seed + ns.seeds) for m in methods]
    if ns.config is None:
        if rest:
            raise SystemExit(f"knapsack-trl compare: unknown arguments {rest} (recipe flags need --config).")
        settings = _demo_settings(ns)
        with open_folder(ns, demo_protocol(settings, methods, ns.oracle_samples), COMMAND) as folder:
            if not ns.report_only:
                folder.announce(planned)
                run_experiment(
                    settings,
                    methods,
                    progress=ns.progress,
                    oracle_samples=ns.oracle_samples,
                    folder=folder,
                    workers=default_workers(ns.workers),
                )
            agg, runs, _ = report_from_folder(
                folder,
                settings,
                title=f"knapsack-trl compare: the demo's {ns.task} task",
                verdict_task=f"{ns.task.capitalize()} task",
                notes=_notes(ns, folder, start),
                target=ns.target_accuracy,
                described_as={"experiment": f"the demo's {ns.task} task (knapsack_trl.experiments.demo)"},
            )
    else:
        rest = [*rest, *_cpu_bf16_flags(ns.config, rest)]
        with tempfile.TemporaryDirectory(prefix="knapsack_compare_") as work_dir:
            plan = _plan_recipe(ns, rest, work_dir)
            with open_folder(ns, plan.protocol, COMMAND) as folder:
                if not ns.report_only:
                    folder.announce(planned)
                    _run_recipe(ns, plan, folder, work_dir)
                agg, runs, _ = write_folder_report(
                    folder,
                    title=f"knapsack-trl compare: {Path(ns.config).name}",
                    settings=_report_settings(ns, rest, plan, folder),
                    notes=_notes(ns, folder, start),
                    verdict_task=Path(ns.config).stem,
                    target=ns.target_accuracy,
                )
    print()
    print(agg["verdict"])
    print()
    print(format_table(agg))
    print()
    print(format_ratios(agg))
    print(f"\nSeeds: {seeds_per_arm(runs)}")
    print(f"\nReport: {Path(ns.output_dir).resolve() / 'report.md'}")
    return 0


def _notes(ns: argparse.Namespace, folder: RunFolder, start: float) -> list[str]:
    """The report's notes on the oracle row and on time."""
    notes = []
    if any(ARMS[r.method].oracle for r in folder.runs() if r.method in ARMS):
        notes.append(
            f"Oracle: the same allocator fed the true success rate of each step's prompts, from {ns.oracle_samples} "
            "extra samples of the current policy (not counted as rollouts consumed)."
        )
    notes.append(
        "Wall time excludes held-out evaluation; this invocation of the comparison took "
        f"{time.perf_counter() - start:.0f} s."
    )
    return notes


def _demo_settings(ns: argparse.Namespace) -> DemoSettings:
    """The demo's experiment (``--task``) as the flags set it: one checkpoint, every method per GRPO seed."""
    overrides: dict[str, Any] = {"seed": ns.seed, "seeds": ns.seeds}
    if ns.checkpoint_seed is not None:
        overrides["checkpoint_seed"] = ns.checkpoint_seed
    if ns.steps is not None:
        overrides["steps"] = ns.steps
    return DemoSettings.for_task(ns.task, ns.quick, **overrides)


if __name__ == "__main__":
    sys.exit(main())

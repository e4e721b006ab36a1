"""``knapsack-trl demo``: uniform vs knapsack GRPO on a tiny offline policy, on a laptop CPU, in minutes.

The experiment, end to end and offline:

1. draw the task's problems at graded difficulty levels in equal shares (``tasks.arithmetic.LEVELS``):
   the levels task (default) takes additions at four levels, ``easy`` (a one-digit number plus a number
   below 100), ``medium``, ``hard`` and ``beyond`` (four digits, never shown in the warm-up), a pool of
   2,000 for GRPO and a held-out set from the same levels; nothing is selected by the policy;
2. build a character-level Llama from a config and warm it up on other problems at the first three levels,
   stopping at the first check where a probe set reaches a fixed success at temperature 1. The model learns
   shorter additions first, so at that point the short levels are mostly mixed, ``hard`` mostly fails and
   ``beyond`` always fails: the regime rollout allocation is for follows from the structure;
3. measure the checkpoint on the held-out set (greedy accuracy, success of ``k`` samples at temperature 1,
   per level) and the pool's regime (shares at all-fail, mixed and all-success on fresh samples);
4. train every arm (:data:`.methods.ARMS`) from that same checkpoint once per GRPO seed, each seed's arms
   with the same prompt order and the same rollout budget per step (``generation_batch_size``), for
   several epochs of the pool so the success-rate history can help;
5. print the verdict (the best arm against the best uniform group size, paired by seed, with bootstrap
   intervals), the table, and write the report folder (markdown, ``results.json``, PNG plots).

Every run is measured by the same harness (:mod:`.harness`: a listener on the trainer's public hook that
sees each generation batch's rewards and prompt ids, a callback that evaluates on its own RNG stream, a
clock for each step's parts), so every arm is measured identically. A run is deterministic for a given
seed and thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from knapsack_trl.experiments.evaluation import heldout_metrics, success_rates
from knapsack_trl.experiments.harness import StepClock, train_method, warm_up_arithmetic
from knapsack_trl.experiments.methods import ARMS, DEFAULT_ARM, default_methods, parse_methods
from knapsack_trl.experiments.report import (
    RunRecord,
    format_ratios,
    format_table,
)
from knapsack_trl.experiments.run_folder import (
    RunFolder,
    add_folder_flags,
    field_defaults,
    make_protocol,
    open_folder,
    read_json,
    seeds_per_arm,
    trainer_settings,
    write_folder_report,
    write_json,
)
from knapsack_trl.tasks.arithmetic import (
    arithmetic_reward,
    build_model,
    build_tokenizer,
    load_tiny,
    make_splits,
    save_tiny,
)
from knapsack_trl.trainer import KnapsackGRPOConfig, KnapsackGRPOTrainer

DEFAULT_OUTPUT_DIR = "knapsack_demo_report"


@dataclass
class DemoSettings:
    """Every knob of the demo experiment. The defaults are the levels task of docs/benchmark_protocol.md
    (2026-12-06); :meth:`for_task` gives a task's preset, and its ``--quick`` variant for CI."""

    task: str = "levels"
    seed: int = 0
    seeds: int = 5
    # The warm-up's seed when it differs from the first GRPO seed (None: ``seed``).
    checkpoint_seed: int | None = None
    hidden_size: int = 128
    num_layers: int = 4
    # The warm-up stops at the first check (every 50 steps) where 96 probe problems at its levels reach
    # ``sft_target`` success at T=1, after at most ``sft_steps`` steps.
    sft_steps: int = 3000
    sft_target: float = 0.2
    sft_batch_size: int = 128
    sft_lr: float = 3e-3
    pool_size: int = 2000
    heldout_size: int = 384
    # The fixed part of the pool measured for "training pool accuracy" (0: the whole pool).
    train_eval_size: int = 256
    levels: tuple[str, ...] = ("easy", "medium", "hard", "beyond")
    # The warm-up's levels (None: ``levels``): the levels task never shows the "beyond" level.
    sft_levels: tuple[str, ...] | None = ("easy", "medium", "hard")
    steps: int = 160
    prompts_per_step: int = 32
    num_generations: int = 8
    learning_rate: float = 5e-4
    warmup_steps: int = 10
    max_completion_length: int = 5
    eval_every: int = 16
    eval_samples: int = 8
    # Samples per pool prompt for the start-of-run regime (shares at p = 0, 0 < p < 1, p = 1).
    regime_samples: int = 8
    allocation_snapshot_step: int = 80
    knapsack: dict[str, Any] = field(default_factory=dict)
    threads: int = 1

    @property
    def budget(self) -> int:
        """Rollouts per GRPO step, for every run (``generation_batch_size``)."""
        return self.prompts_per_step * self.num_generations

    @property
    def run_seeds(self) -> list[int]:
        """The GRPO seeds: every method runs once per seed from the one checkpoint."""
        return list(range(self.seed, self.seed + self.seeds))

    @classmethod
    def for_task(cls, task: str, quick: bool = False, **overrides: Any) -> DemoSettings:
        """The preset of ``task`` (:data:`TASKS`), optionally its ``--quick`` variant for CI."""
        if task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)} (got {task!r}).")
        base = dict(TASKS[task])
        if quick:
            base.update(QUICK[task])
        base.update(overrides)
        return cls(task=task, **base)


DEFAULT_TASK = "levels"
# The demo's GRPO seeds on the levels task: sized to finish under 10 minutes on 2 idle cores (the
# benchmark's comparison runs the same task with 5, `knapsack-trl compare --task levels`).
DEMO_SEEDS = 3
# The levels task (docs/benchmark_protocol.md, 2026-12-06): the defaults above.
# The control task: the random pool of the earlier demo (docs/benchmark.md), 100 steps as pre-registered in
# 2026-12-01, with its probe-stopped warm-up and the three named levels.
CONTROL = {
    "sft_steps": 2500,
    "pool_size": 384,
    "heldout_size": 192,
    "train_eval_size": 0,
    "levels": ("easy", "medium", "hard"),
    "sft_levels": None,
    "steps": 100,
    "prompts_per_step": 32,
    "eval_every": 20,
    "eval_samples": 16,
    "allocation_snapshot_step": 50,
}
TASKS: dict[str, dict[str, Any]] = {"levels": {}, "control": CONTROL}
# --quick: the same pipeline at a fraction of the work; its numbers only keep the path working.
QUICK: dict[str, dict[str, Any]] = {
    "levels": {
        "sft_steps": 1500,  # a cap: the warm-up stops at the probe target (650-1,000 steps for seeds 0-2)
        "pool_size": 256,
        "heldout_size": 64,
        "train_eval_size": 32,
        "seeds": 3,
        "steps": 8,
        "prompts_per_step": 8,
        "eval_every": 4,
        "eval_samples": 4,
        "allocation_snapshot_step": 4,
    },
    "control": {
        "sft_steps": 300,
        "sft_target": 0.25,
        "pool_size": 48,
        "heldout_size": 64,
        "seeds": 1,
        "steps": 24,
        "prompts_per_step": 8,
        "eval_every": 8,
        "eval_samples": 8,
        "allocation_snapshot_step": 12,
    },
}


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- the experiment


def _evaluate_fn(
    tokenizer: Any,
    rows: Sequence[dict[str, str]],
    s: DemoSettings,
    train_rows: Sequence[dict[str, str]] | None = None,
    eval_seed: int | None = None,
) -> Callable[[Any], dict[str, float]]:
    """Held-out greedy accuracy and success at T=1 from ``eval_samples`` samples, on a fixed RNG stream
    (``eval_seed``, default ``s.seed + 1000``: the same for every run of an experiment, so paired runs
    are measured with the same sampling noise).

    With ``train_rows``, also the mean success at T=1 on the GRPO prompts themselves (``train_reward``):
    the RL objective, measured the same way for every allocation, on the pool's first
    ``train_eval_size`` rows (levels interleaved; 0: all of them).
    """
    if train_rows and s.train_eval_size:
        train_rows = list(train_rows)[: s.train_eval_size]

    def evaluate(model: Any) -> dict[str, float]:
        seed = s.seed + 1000 if eval_seed is None else eval_seed
        common = {"max_new_tokens": s.max_completion_length, "seed": seed, "batch_prompts": 256}
        greedy = success_rates(model, tokenizer, rows, [arithmetic_reward], greedy=True, **common)
        sampled = success_rates(model, tokenizer, rows, [arithmetic_reward], k=s.eval_samples, **common)
        out = heldout_metrics(greedy, sampled)
        for level in s.levels:
            mask = np.array([r.get("level") == level for r in rows])
            if mask.any():
                out[f"reward_{level}"] = float(sampled[mask].mean())
        if train_rows:
            train = success_rates(
                model, tokenizer, train_rows, [arithmetic_reward], k=s.eval_samples, **common
            )
            out["train_reward"] = float(train.mean())
        return out

    return evaluate


def grpo_config(method: str, settings: DemoSettings, output_dir: str) -> Any:
    """The GRPO config shared by every arm; only the arm's fields (:data:`.methods.ARMS`) differ."""
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "per_device_train_batch_size": settings.budget,
        "num_generations": settings.num_generations,
        "max_completion_length": settings.max_completion_length,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": settings.warmup_steps,
        "max_steps": settings.steps,
        "beta": 0.0,
        "temperature": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "disable_tqdm": True,
        "seed": settings.seed,
        "data_seed": settings.seed,
        "dataloader_num_workers": 0,
        "knapsack_solver": "greedy",
        **settings.knapsack,
        **ARMS[method].config_fields(settings.num_generations),
    }
    return KnapsackGRPOConfig(**kwargs)


def pool_regime(
    model: Any, tokenizer: Any, rows: Sequence[dict[str, str]], settings: DemoSettings, seed: int
) -> dict[str, Any]:
    """The start-of-run regime of ``rows``: with ``regime_samples`` fresh samples per prompt at T=1 (on an
    RNG stream of its own), the shares at all-fail, all-success and mixed, overall and per level, and the
    mean success rate."""
    p = success_rates(
        model,
        tokenizer,
        rows,
        [arithmetic_reward],
        k=settings.regime_samples,
        max_new_tokens=settings.max_completion_length,
        seed=seed,
        batch_prompts=256,
    )

    def shares(q: np.ndarray) -> dict[str, float]:
        return {
            "all_fail": round(float(np.mean(q == 0)), 4),
            "all_success": round(float(np.mean(q == 1)), 4),
            "mixed": round(float(np.mean((q > 0) & (q < 1))), 4),
            "mean_p": round(float(q.mean()), 4),
        }

    levels = [r.get("level") for r in rows]
    by_level = {lv: shares(p[[x == lv for x in levels]]) for lv in settings.levels if lv in levels}
    return {**shares(p), "samples": settings.regime_samples, "prompts": len(rows), "by_level": by_level}


def prepare_checkpoint(settings: DemoSettings, folder: str, progress: bool = True) -> dict[str, Any]:
    """Build, warm up and save the tiny policy; return the data splits and the checkpoint's measurements.

    The data are drawn at the task's levels in equal shares, nothing selected by the policy; the warm-up
    stops at a probe target (:func:`.harness.warm_up_arithmetic`). The start is measured on the held-out set
    and on the pool (:func:`pool_regime`).
    """
    torch.set_num_threads(settings.threads)
    splits = make_splits(
        settings.seed,
        settings.pool_size,
        settings.heldout_size,
        settings.levels,
        sft_levels=settings.sft_levels,
    )
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, settings.hidden_size, settings.num_layers, seed=settings.seed)

    start = time.perf_counter()
    sft = warm_up_arithmetic(
        model,
        tokenizer,
        splits["sft"],
        splits["probe"],
        steps=settings.sft_steps,
        batch_size=settings.sft_batch_size,
        lr=settings.sft_lr,
        target=settings.sft_target,
        seed=settings.seed,
        progress=progress,
        max_new_tokens=settings.max_completion_length,
    )
    sft_seconds = time.perf_counter() - start
    save_tiny(folder, model, tokenizer)
    pool, heldout = splits["pool"], splits["heldout"]
    eval_seed = settings.seed + 1000
    start_eval = _evaluate_fn(tokenizer, heldout, settings, pool, eval_seed)(model)
    regime = pool_regime(model, tokenizer, pool, settings, seed=settings.seed + 5)
    return {
        "eval_seed": eval_seed,
        "pool": pool,
        "heldout": heldout,
        "start_eval": start_eval,
        "sft_seconds": sft_seconds,
        "sft_steps": sft["steps"],
        "sft_probe": sft["probe"],
        "sft_final_loss": float(np.mean(sft["losses"][-20:])) if sft["losses"] else math.nan,
        "regime": regime,
        "pool_frac_mid": regime["mixed"],
        "pool_mean_p": regime["mean_p"],
        "pool_p_by_level": {lv: round(v["mean_p"], 3) for lv, v in regime["by_level"].items()},
        "params": int(sum(p.numel() for p in model.parameters())),
    }


def start_of_run(settings: DemoSettings, folder: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Build the task and the checkpoint (seed ``checkpoint_seed``, default ``seed``; kept in ``folder``
    when given) and return what the start measured: the pool's regime per level, the held-out start, the
    warm-up's steps and seconds, the thread count."""
    start = settings if settings.checkpoint_seed is None else replace(settings, seed=settings.checkpoint_seed)
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="knapsack_start_"))
        prep = prepare_checkpoint(start, os.path.join(folder, "checkpoint"), progress)
    return {
        "task": settings.task,
        "seed": start.seed,
        "threads": settings.threads,
        "sft_steps": prep["sft_steps"],
        "sft_seconds": round(prep["sft_seconds"], 1),
        "regime": prep["regime"],
        "heldout_start": {k: round(v, 4) for k, v in prep["start_eval"].items()},
    }


def run_demo_method(
    method: str,
    checkpoint: str,
    prep: dict[str, Any],
    settings: DemoSettings,
    work_dir: str,
    progress: bool = True,
    oracle_samples: int = 64,
) -> RunRecord:
    """One GRPO run (an arm of :data:`.methods.ARMS`) from the warmed-up checkpoint."""
    torch.set_num_threads(settings.threads)
    model, tokenizer = load_tiny(checkpoint)
    by_id = {r["prompt_id"]: r for r in prep["pool"]}
    clock = StepClock()
    trainer = KnapsackGRPOTrainer(
        model=model,
        reward_funcs=[clock.timed(arithmetic_reward)],
        args=grpo_config(method, settings, os.path.join(work_dir, f"{method}_seed{settings.seed}")),
        train_dataset=Dataset.from_list(list(prep["pool"])),
        processing_class=tokenizer,
    )

    def truth(prompt_ids: list[str]) -> np.ndarray:
        return success_rates(
            trainer.model,
            tokenizer,
            [by_id[p] for p in prompt_ids],
            [arithmetic_reward],
            k=oracle_samples,
            max_new_tokens=settings.max_completion_length,
            seed=settings.seed + 7919 * (trainer.state.global_step + 1),
            batch_prompts=256,
        )

    return train_method(
        method,
        trainer,
        _evaluate_fn(tokenizer, prep["heldout"], settings, prep["pool"], prep["eval_seed"]),
        eval_every=settings.eval_every,
        seed=settings.seed,
        start_eval=prep["start_eval"],
        snapshot_step=settings.allocation_snapshot_step,
        truth=truth,
        progress=progress,
        clock=clock,
    )


def run_experiment(
    settings: DemoSettings,
    methods: Sequence[str] = ("uniform", "knapsack"),
    work_dir: str | None = None,
    progress: bool = True,
    oracle_samples: int = 64,
    folder: RunFolder | None = None,
    workers: int = 1,
) -> tuple[list[RunRecord], dict[str, Any]]:
    """Warm up once (seed ``checkpoint_seed``, default ``seed``), then train every method once per GRPO seed from that same
    checkpoint; the runs (seed by seed, methods in order) and the warm-up facts.

    With ``folder`` (:class:`.run_folder.RunFolder`): the checkpoint and its measurements are saved there
    (or reused when saved), each run's file is written as the run ends, and runs already there are read back
    instead of run; the runs returned are as their files hold them. ``workers`` > 1: that many runs at once,
    each in a process of its own (the tiny model trains on one thread; a run's numbers do not depend on
    which process made it)."""
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="knapsack_demo_"))
        start = replace(settings, seed=checkpoint_seed(settings))
        if folder is None:
            checkpoint = os.path.join(work_dir, f"warmup_seed{start.seed}")
            prep = prepare_checkpoint(start, checkpoint, progress)
        else:
            checkpoint, prep = saved_checkpoint(folder, start, progress)
        done: dict[tuple[str, int], RunRecord] = {}
        todo = []
        for seed in settings.run_seeds:
            for m in methods:
                run = None if folder is None else folder.finished(m, seed)
                if run is None:
                    todo.append((m, checkpoint, prep, replace(settings, seed=seed), work_dir))
                else:
                    done[(m, seed)] = run
        for run in _run_all(todo, workers, progress, oracle_samples):
            done[(run.method, run.seed)] = run if folder is None else folder.save_run(run)
    runs = [done[(m, seed)] for seed in settings.run_seeds for m in methods]
    return runs, checkpoint_facts(prep)


def _run_all(
    jobs: Sequence[tuple[str, str, dict[str, Any], DemoSettings, str]],
    workers: int,
    progress: bool,
    oracle_samples: int,
) -> Iterator[RunRecord]:
    """Each job's :func:`run_demo_method`, as it finishes: in this process, or ``workers`` at a time in
    processes of their own (spawned, without progress bars; a line per finished run instead)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_demo_method(*job, progress, oracle_samples)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=context, initializer=quiet_libraries
    ) as pool:
        futures = [pool.submit(run_demo_method, *job, False, oracle_samples) for job in jobs]
        for n, future in enumerate(as_completed(futures), 1):
            run = future.result()
            if progress:
                print(
                    f"  run {n}/{len(jobs)} done: {run.method} seed {run.seed}", file=sys.stderr, flush=True
                )
            yield run


def checkpoint_seed(settings: DemoSettings) -> int:
    """The seed the checkpoint (data, model, warm-up) is built with."""
    return settings.seed if settings.checkpoint_seed is None else settings.checkpoint_seed


CHECKPOINT = "checkpoint"
CHECKPOINT_FACTS = "checkpoint.json"


def saved_checkpoint(folder: RunFolder, start: DemoSettings, progress: bool) -> tuple[str, dict[str, Any]]:
    """The checkpoint in ``folder`` and its measurements (pool, held-out rows, start evaluation, warm-up
    facts): built and saved on the first call, read back after. Every run, the first included, uses the
    saved copy, so a run made in a later process starts from the same weights and numbers."""
    model, facts = folder.start_path(CHECKPOINT), folder.start_path(CHECKPOINT_FACTS)
    if not facts.is_file() or not (model / "config.json").is_file():
        folder.refuse_lost_start(f"the checkpoint ({CHECKPOINT}/, {CHECKPOINT_FACTS})")
        prep = folder.build_folder(model, lambda tmp: prepare_checkpoint(start, str(tmp), progress))
        write_json(facts, prep)
    return str(model), read_json(facts)


def checkpoint_facts(prep: dict[str, Any]) -> dict[str, Any]:
    """The warm-up facts :func:`experiment_notes` reports, from :func:`prepare_checkpoint`'s result."""
    info = {k: v for k, v in prep.items() if k not in ("pool", "heldout", "start_eval")}
    info["start_accuracy"] = prep["start_eval"]["accuracy"]
    info["start_reward"] = prep["start_eval"]["reward"]
    info["start_frac_mid"] = prep["start_eval"]["frac_mid"]
    return info


def demo_protocol(settings: DemoSettings, methods: Sequence[str], oracle_samples: int = 64) -> dict[str, Any]:
    """What decides the result of a run of this experiment (:func:`.run_folder.make_protocol`): every setting
    but the seeds asked for, the checkpoint's seed, the oracle's samples and each arm's trainer config."""
    shared = settings_dict(settings)
    for key in ("seed", "seeds", "run_seeds"):
        del shared[key]
    shared["checkpoint_seed"] = checkpoint_seed(settings)
    shared["oracle_samples"] = oracle_samples
    arms = {m: trainer_settings(grpo_config(m, settings, "unused")) for m in methods}
    defaults = {
        "settings": field_defaults(DemoSettings),
        "arms": dict.fromkeys(methods, field_defaults(KnapsackGRPOConfig)),
    }
    return make_protocol("demo", shared, arms, settings.run_seeds, defaults)


def report_from_folder(
    folder: RunFolder,
    settings: DemoSettings,
    *,
    title: str,
    verdict_task: str,
    notes: Sequence[str] = (),
    target: float | None = None,
    described_as: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[RunRecord], list[str]]:
    """The report of every run in ``folder`` (this experiment's), its settings and notes stating the seeds
    the folder holds; returns the aggregate, the runs and the notes (:func:`.run_folder.write_folder_report`)."""
    facts = read_json(folder.start_path(CHECKPOINT_FACTS))
    runs = folder.runs()
    if facts is None or not runs:
        raise SystemExit(f"{folder.command}: no finished run in {folder.path} yet; nothing to report.")
    seeds = sorted({r.seed for r in runs})
    shown = replace(settings, seed=seeds[0], seeds=len(seeds), checkpoint_seed=checkpoint_seed(settings))
    shown_dict = {**(described_as or {}), **settings_dict(shown), "run_seeds": seeds}
    return write_folder_report(
        folder,
        title=title,
        settings=shown_dict,
        notes=[*experiment_notes(shown, checkpoint_facts(facts), runs), *notes],
        verdict_task=verdict_task,
        target=target,
    )


# --------------------------------------------------------------------------- command line


def settings_dict(settings: DemoSettings) -> dict[str, Any]:
    """Settings as plain values, with the derived budget, for the report."""
    d = asdict(settings)
    d["levels"] = list(settings.levels)
    d["sft_levels"] = None if settings.sft_levels is None else list(settings.sft_levels)
    d["run_seeds"] = settings.run_seeds
    d["rollouts_per_step"] = settings.budget
    return d


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="knapsack-trl demo",
        description="Train a tiny policy offline on CPU, then uniform GRPO and the default knapsack arm from the "
        "same checkpoint with the same rollout budget; print the verdict and the table, write a report folder.",
    )
    p.add_argument("--quick", action="store_true", help="a short run for CI (3 seeds, a few minutes)")
    p.add_argument(
        "--task",
        choices=tuple(TASKS),
        default=DEFAULT_TASK,
        help="levels (default: a pool of 2,000 additions at four graded levels after a warm-up stopped at a "
        "probe success of 0.2, so some levels are mixed and some fail) or control (the earlier random pool)",
    )
    p.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"folder of the report and of every finished run (default ./{DEFAULT_OUTPUT_DIR}); the same "
        "command again carries on where it stopped",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the data, model and warm-up, and the first GRPO seed (default 0)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="GRPO seeds per method from the one checkpoint (default 3 on the levels task: under 10 minutes on 2 idle "
        "cores; the benchmark runs 5)",
    )
    p.add_argument(
        "--checkpoint-seed", type=int, default=None, help="seed of the data and the warm-up, if not --seed"
    )
    p.add_argument("--steps", type=int, default=None, help="GRPO steps per run")
    p.add_argument(
        "--sft-steps",
        type=int,
        default=None,
        help="supervised warm-up steps (the control task stops earlier once a probe set reaches its target)",
    )
    p.add_argument("--prompts-per-step", type=int, default=None, help="distinct prompts per GRPO step")
    p.add_argument("--num-generations", type=int, default=None, help="average rollouts per prompt")
    p.add_argument("--pool-size", type=int, default=None, help="GRPO training prompts (they recur)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation every N steps")
    p.add_argument(
        "--oracle", action="store_true", help="also run the oracle allocation (true p from many samples)"
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated arms: uniform plus any of the registry's (knapsack_trl.experiments.methods: "
        "knapsack, pilot, paper_value, value_head, reference, oracle, uniform_half, uniform_quarter, ...); "
        f"default uniform,{DEFAULT_ARM} (the library's default; +oracle with --oracle)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default 1: on a busy machine more threads spin-wait and run slower)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs at once, each in a process of its own (default: 2 on a machine with 2 or more cores, else 1; "
        "the numbers do not depend on it)",
    )
    p.add_argument(
        "--start-only",
        action="store_true",
        help="build the task and warm the policy up, print the start-of-run regime (JSON; also "
        "OUTPUT_DIR/start.json, the checkpoint in OUTPUT_DIR/checkpoint) and stop",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_folder_flags(p)
    return p


def default_workers(asked: int | None) -> int:
    """``--workers``: as asked, else one run per core up to 2 (a process each; the tiny model trains on
    one thread)."""
    if asked is not None:
        if asked < 1:
            raise SystemExit(f"--workers must be at least 1 (got {asked}).")
        return asked
    return max(1, min(2, os.cpu_count() or 1))


def parse_settings(ns: argparse.Namespace) -> DemoSettings:
    """Settings from parsed arguments: the task's preset (or its ``--quick`` variant), then explicit
    overrides."""
    names = {f.name for f in fields(DemoSettings)} - {"task"}
    overrides = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    if not ns.quick and ns.task == DEFAULT_TASK:
        overrides.setdefault("seeds", DEMO_SEEDS)
    if overrides.get("seeds", 1) < 1:
        raise SystemExit("knapsack-trl demo: --seeds must be >= 1.")
    return DemoSettings.for_task(ns.task, ns.quick, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``knapsack-trl demo``."""
    ns = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = parse_settings(ns)
    methods = parse_methods(ns.methods, default_methods(ns.oracle), "demo")
    t0 = time.perf_counter()
    quiet_libraries()
    if ns.start_only:
        out = Path(ns.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        start = start_of_run(settings, str(out), progress=not ns.no_progress)
        (out / "start.json").write_text(json.dumps(start, indent=1))
        print(json.dumps(start, indent=1))
        return 0
    with open_folder(ns, demo_protocol(settings, methods), "knapsack-trl demo") as folder:
        if not ns.report_only:
            folder.announce([(m, seed) for seed in settings.run_seeds for m in methods])
            run_experiment(
                settings,
                methods,
                progress=not ns.no_progress,
                folder=folder,
                workers=default_workers(ns.workers),
            )
        quick = " (--quick)" if ns.quick else ""
        agg, runs, notes = report_from_folder(
            folder,
            settings,
            title=f"knapsack-trl demo: {', '.join(methods)}, {settings.task} task{quick}",
            verdict_task=f"{settings.task.capitalize()} task{quick}",
            notes=[
                "Wall time excludes held-out evaluation; this invocation of the demo took "
                f"{time.perf_counter() - t0:.0f} s."
            ],
        )
    print()
    print(agg["verdict"])
    print()
    print(format_table(agg))
    print()
    print(format_ratios(agg))
    print(f"\nSeeds: {seeds_per_arm(runs)}")
    print()
    for n in notes:
        print(n)
    print(f"\nReport: {Path(ns.output_dir).resolve() / 'report.md'}")
    return 0


def experiment_notes(settings: DemoSettings, info: dict[str, Any], runs: Sequence[RunRecord]) -> list[str]:
    """What the report should say about the starting point (the pool's regime per level), the task and the
    seeds."""
    regime = info["regime"]
    levels = "; ".join(
        f"{lv}: mean p {v['mean_p']:.2f}, {v['all_fail']:.0%} / {v['mixed']:.0%} / {v['all_success']:.0%}"
        for lv, v in regime["by_level"].items()
    )
    seeds = settings.run_seeds
    checkpoint_seed = settings.checkpoint_seed if settings.checkpoint_seed is not None else settings.seed
    warm = f"{info['sft_steps']} supervised steps (stopped at a probe success of {settings.sft_target})"
    return [
        f"Tiny Llama ({info['params']:,} parameters, character tokenizer), warmed up with {warm} "
        f"({info['sft_seconds']:.0f} s). At the start of GRPO: held-out accuracy {info['start_reward']:.3f} at "
        f"T=1 (greedy {info['start_accuracy']:.3f}).",
        f"The pool at the start ({regime['prompts']} prompts, {regime['samples']} fresh samples each): "
        f"{regime['all_fail']:.0%} all-fail, {regime['mixed']:.0%} mixed, {regime['all_success']:.0%} "
        f"all-success, mean p {regime['mean_p']:.2f}. Per level (all-fail / mixed / all-success): {levels}.",
        f"Every run starts from that checkpoint (seed {checkpoint_seed}); GRPO seeds {seeds[0]}-{seeds[-1]}, "
        f"each arm of a seed with the same prompt order and {settings.budget} rollouts per step "
        f"({settings.prompts_per_step} prompts x {settings.num_generations} on average; {settings.pool_size} "
        f"GRPO prompts, {settings.steps * settings.prompts_per_step / settings.pool_size:.1f} epochs); only the "
        "split of each step's rollouts (and, for the group-size arms, the group size) differs.",
    ]


def quiet_libraries() -> None:
    """Keep the terminal to progress bars and the table: silence info logs and known warnings."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())

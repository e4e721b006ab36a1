"""Step-time overhead of KnapsackGRPOTrainer over the stock GRPOTrainer, on the same tiny model and data.

Both trainers run in one process, alternating short ``train()`` calls (the order flips every round) so
that drift in machine load hits both alike. Completions are forced to ``max_completion_length`` tokens
(``min_new_tokens``), so the compute per step does not depend on which prompts got the rollouts: what
remains is the knapsack trainer's own work (gather, allocate, expand, advantages, tracker, metrics).
Step time is wall time from ``on_step_begin`` to ``on_step_end`` (generation, scoring, forward,
backward, optimizer). The target is a median ratio of at most 1.05.

``--pilot K`` adds the knapsack trainer with a pilot round of ``K`` rollouts per prompt to the same
rounds and reports its step time over the one-round knapsack trainer's: a second generation round costs
latency, not rollouts, and that ratio is the figure (not a pass/fail).

Run: ``python -m knapsack_trl.benchmarks.trainer_overhead [--pilot K] [--json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from knapsack_trl.tasks.arithmetic import arithmetic_dataset, build_model, build_tokenizer
from knapsack_trl.trainer import KnapsackGRPOConfig, KnapsackGRPOTrainer

TARGET_RATIO = 1.05


def coin_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A deterministic coin per completion: mixed groups, so the knapsack has real work to do."""
    return [float(hashlib.sha1(str(c).encode()).digest()[0] % 2) for c in completions]


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step; the first step of every ``train()`` call is dropped."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.overhead: list[float] = []
        self._start = 0.0
        self._first = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._first = True

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        elapsed = time.perf_counter() - self._start
        if not self._first:
            self.times.append(elapsed)
        self._first = False

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and logs.get("knapsack/overhead_seconds") is not None:
            self.overhead.append(float(logs["knapsack/overhead_seconds"]))


def run(
    steps: int = 4,
    rounds: int = 20,
    per_device_batch: int = 16,
    num_generations: int = 4,
    gradient_accumulation_steps: int = 2,
    max_completion_length: int = 32,
    mode: str = "knapsack",
    solver: str = "cpsat",
    threads: int | None = 1,
    pilot: int = 0,
) -> dict[str, Any]:
    """Time the trainers side by side and return medians, ratios and settings.

    ``pilot > 0`` adds a third trainer, the knapsack trainer with a pilot round of ``pilot`` rollouts per
    prompt, timed in the same rounds: its ratio to the one-round knapsack trainer is the pilot's cost.
    """
    if threads:
        torch.set_num_threads(threads)
    common: dict[str, Any] = dict(
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        generation_kwargs={"min_new_tokens": max_completion_length},
        max_steps=steps,
        logging_steps=steps,
        save_strategy="no",
        learning_rate=1e-4,
        seed=0,
        disable_tqdm=True,
    )
    knapsack_fields = {
        "knapsack_enabled": mode != "disabled",
        "knapsack_mode": "knapsack" if mode == "disabled" else mode,
        "knapsack_solver": solver,
        "knapsack_n_max": 4 * num_generations,
    }
    variants: dict[str, dict[str, Any] | None] = {"stock": None, "knapsack": knapsack_fields}
    if pilot:
        variants["pilot"] = {**knapsack_fields, "knapsack_pilot_rollouts": pilot}
    timers = {name: StepTimer() for name in variants}
    trainers = _trainers(common, variants, timers)
    paired = _alternate(trainers, timers, rounds)
    settings = {
        "steps_per_round": steps,
        "rounds": rounds,
        "generation_batch_size": trainers["knapsack"].args.generation_batch_size,
        "num_generations": num_generations,
        "max_completion_length": max_completion_length,
        "mode": mode,
        "solver": solver,
        "pilot_rollouts": pilot,
        "torch_threads": torch.get_num_threads(),
    }
    return _summary(trainers, timers, paired, settings)


def _summary(
    trainers: dict[str, Any], timers: dict[str, Any], paired: list[dict[str, float]], settings: dict[str, Any]
) -> dict[str, Any]:
    """Medians, whole-run and paired ratios, the last allocations, and the settings."""
    medians = {name: statistics.median(timer.times) for name, timer in timers.items()}
    result = {
        "median_step_seconds": medians,
        "ratio": medians["knapsack"] / medians["stock"],
        # robust to machine-load drift: each round's ratio uses steps run back to back
        "median_paired_ratio": _paired_ratio(paired, "knapsack", "stock"),
        "target_ratio": TARGET_RATIO,
        "steps_timed": {name: len(timer.times) for name, timer in timers.items()},
        "last_allocation": _last_allocation(trainers["knapsack"]),
        # the knapsack trainer's own measurement of its work per generation batch (averaged per log)
        "median_knapsack_work_seconds": statistics.median(timers["knapsack"].overhead or [0.0]),
        "settings": settings,
    }
    if "pilot" in trainers:
        result["pilot"] = {
            "ratio_to_knapsack": medians["pilot"] / medians["knapsack"],
            "median_paired_ratio_to_knapsack": _paired_ratio(paired, "pilot", "knapsack"),
            "ratio_to_stock": medians["pilot"] / medians["stock"],
            "last_allocation": _last_allocation(trainers["pilot"]),
        }
    return result


def _last_allocation(trainer: Any) -> list[int] | None:
    return trainer.knapsack_history[-1]["rollouts"] if trainer.knapsack_history else None


def _paired_ratio(paired: list[dict[str, float]], name: str, base: str) -> float:
    return statistics.median(medians[name] / medians[base] for medians in paired)


def _trainers(
    common: dict[str, Any], variants: dict[str, dict[str, Any] | None], timers: dict[str, Any]
) -> dict[str, Any]:
    """One trainer per variant on the same tiny model, data and settings, each with its timer: the stock
    GRPOTrainer for ``None``, else a KnapsackGRPOTrainer with those knapsack fields."""
    tokenizer = build_tokenizer()
    dataset = arithmetic_dataset(64, digits=(1, 2, 3))
    out = tempfile.mkdtemp(prefix="knapsack-overhead-")
    trainers = {}
    for name, fields in variants.items():
        output_dir = os.path.join(out, name)
        trainer_cls, args = (
            (GRPOTrainer, GRPOConfig(output_dir=output_dir, **common))
            if fields is None
            else (KnapsackGRPOTrainer, KnapsackGRPOConfig(output_dir=output_dir, **fields, **common))
        )
        trainers[name] = trainer_cls(
            model=build_model(tokenizer, seed=0),
            reward_funcs=coin_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timers[name]],
        )
        trainers[name].remove_callback(PrinterCallback)  # keep stdout for the result
    return trainers


def _alternate(trainers: dict[str, Any], timers: dict[str, Any], rounds: int) -> list[dict[str, float]]:
    """A warm-up round (not timed), then ``rounds`` rounds rotating which trainer goes first; each
    round's median step time per trainer."""
    for trainer in trainers.values():
        trainer.train()
    for timer in timers.values():
        timer.times.clear()
        timer.overhead.clear()
    names = list(trainers)
    paired: list[dict[str, float]] = []
    for r in range(rounds):
        marks = {name: len(timer.times) for name, timer in timers.items()}
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            trainers[name].train()
        paired.append({name: statistics.median(timer.times[marks[name] :]) for name, timer in timers.items()})
    return paired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per train() call")
    parser.add_argument(
        "--rounds", type=int, default=20, help="alternating rounds (each trains both trainers)"
    )
    parser.add_argument("--per-device-batch", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=2)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument(
        "--mode",
        choices=["knapsack", "uniform", "disabled"],
        default="knapsack",
        help="knapsack allocation, uniform allocation through the same pipeline, or knapsack_enabled=False "
        "(an A/A run: measures the benchmark's own noise)",
    )
    parser.add_argument("--solver", choices=["cpsat", "dp", "greedy"], default="cpsat")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    parser.add_argument(
        "--pilot",
        type=int,
        default=0,
        help="also time the knapsack trainer with a pilot round of this many rollouts per prompt (0 = not)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ns = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    result = run(
        steps=ns.steps,
        rounds=ns.rounds,
        per_device_batch=ns.per_device_batch,
        num_generations=ns.num_generations,
        gradient_accumulation_steps=ns.gradient_accumulation_steps,
        max_completion_length=ns.max_completion_length,
        mode=ns.mode,
        solver=ns.solver,
        threads=ns.threads or None,
        pilot=ns.pilot,
    )
    if ns.json:
        print(json.dumps(result))
        return 0
    med = result["median_step_seconds"]
    print(f"settings: {result['settings']}")
    print(f"steps timed: {result['steps_timed']}")
    print(f"median step time  stock GRPOTrainer:    {1000 * med['stock']:.1f} ms")
    print(f"median step time  KnapsackGRPOTrainer:  {1000 * med['knapsack']:.1f} ms")
    verdict = "within" if result["ratio"] <= TARGET_RATIO else "ABOVE"
    print(
        f"ratio of median step times, knapsack / stock: {result['ratio']:.3f} ({verdict} the {TARGET_RATIO} target)"
    )
    print(f"median of per-round paired ratios: {result['median_paired_ratio']:.3f}")
    print(
        f"knapsack trainer's own work per generation batch: {1000 * result['median_knapsack_work_seconds']:.2f} ms"
    )
    print(f"last allocation: {result['last_allocation']}")
    if ns.pilot:
        pilot = result["pilot"]
        print(f"median step time  with a pilot of {ns.pilot}:  {1000 * med['pilot']:.1f} ms")
        print(
            f"pilot / one-round knapsack: {pilot['ratio_to_knapsack']:.3f} (paired "
            f"{pilot['median_paired_ratio_to_knapsack']:.3f}); pilot / stock: {pilot['ratio_to_stock']:.3f}"
        )
        print(f"last allocation with the pilot: {pilot['last_allocation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of a real model's GRPO step on CPU, per phase, under named speed settings, side by side.

Each (round, setting) trains the recipe in its own Python process (torch's thread pools are fixed per
process), for one warm-up step that is not timed and then ``--steps`` timed steps; every round runs
every setting and rotates their order, so drift in the load of a shared machine hits each alike. The
first setting named is the reference: the report gives each setting's step time (min / median / max
over all timed steps), its per-phase medians, and the median over rounds of its step time divided by
the reference's in the same round.

Phases, timed from outside TRL: ``generation`` (the policy's ``generate``), ``reward`` (the reward
functions), ``scoring_forward`` (forward passes without gradients outside generation: TRL's old and
reference log-probabilities), ``loss`` (``compute_loss``: the forward with gradients and the loss),
``backward`` (``accelerator.backward``), ``optimizer`` (between the ``on_pre_optimizer_step`` and
``on_optimizer_step`` callbacks), ``allocation`` (the knapsack trainer's own ``knapsack/overhead_seconds``)
and ``other`` (the rest of the step: tokenizing, decoding, gradient clipping, logging).

Results are compared too: each process first scores a fixed set of chat-formatted prompts and answers
under its setting (teacher-forced per-token log-probabilities, with the trainer's autocast), and the
report gives the largest and mean absolute difference from the reference setting's, with the loss,
gradient norm and reward of training step 1 (the warm-up: the same start, seed and prompts in every
setting). Settings that sample differently give different completions after the first token that
differs, so later steps are only comparable in distribution. Each record also says what the setting did
to the model: attention implementation, autocast, the dtype the first linear layer computes in per
phase, torch's thread count.

Run (about 2 minutes per process with one thread; docs/own_model_cpu.md#speed has the figures)::

    python -m knapsack_trl.benchmarks.step_speed --config recipes/tiny/smollm2-chat-arithmetic-uniform.yaml \\
        --settings today,recipe --threads 1 --rounds 3 --json speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PHASES = (
    "generation",
    "reward",
    "scoring_forward",
    "loss",
    "backward",
    "optimizer",
    "allocation",
    "other",
)
# Thread variables the parent's shell may set; a setting's process sees only the setting's own.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
RESULT_FIELDS = ("loss", "grad_norm", "reward", "mean_length")
CHECK_QUESTIONS = ("What is 23 + 45?", "What is 91 - 7?", "What is 8 - 4?", "What is 56 + 38?")
CHECK_ANSWERS = ("Answer: 68", "Answer: 84", "Answer: 4", "The answer is 94.")


@dataclass(frozen=True)
class SpeedSetting:
    """What one benchmarked configuration adds to the recipe: flags, environment variables, and whether
    each ``generate`` call runs inside one autocast context (the trainer change proposed in
    docs/own_model_cpu.md#speed: the weights are cast to bf16 once per call, not once per token)."""

    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    generate_autocast: bool = False
    help: str = ""


# The smollm2 recipes before the speed defaults: fp32, SDPA attention (the model's default), 8 x 4 batches,
# gradient checkpointing (TRL's GRPOConfig default), TRL's fused LM head over every position.
FULL_LOGPS = ("--knapsack_completion_logps_only", "false")
TODAY = ("--bf16", "false", "--attn_implementation", "sdpa", "--gradient_checkpointing", "true")
TODAY += ("--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4", *FULL_LOGPS)
LORA = ("--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32")
SETTINGS: dict[str, SpeedSetting] = {
    "today": SpeedSetting(
        TODAY, help="the recipes before the speed defaults: fp32, SDPA, 8 x 4 micro-batches"
    ),
    "recipe": SpeedSetting(help="the recipe as it is, nothing added"),
    "recipe_full_logps": SpeedSetting(
        FULL_LOGPS,
        help="the recipe with TRL's log-probabilities (its fused LM head over every position, prompt included)",
    ),
    "recipe_generate_autocast": SpeedSetting(
        generate_autocast=True, help="the recipe, generation in one autocast context (a trainer change)"
    ),
    "today_threads1": SpeedSetting(TODAY, env={"OMP_NUM_THREADS": "1"}, help="today, one intra-op thread"),
    "recipe_threads1": SpeedSetting(env={"OMP_NUM_THREADS": "1"}, help="the recipe, one intra-op thread"),
    "today_bf16": SpeedSetting((*TODAY, "--bf16", "true"), help="today plus bf16 autocast"),
    "today_bf16_eager": SpeedSetting(
        (*TODAY, "--bf16", "true", "--attn_implementation", "eager"),
        help="today plus bf16 and eager attention",
    ),
    "today_one_batch": SpeedSetting(
        (*TODAY, "--per_device_train_batch_size", "32", "--gradient_accumulation_steps", "1"),
        help="today (fp32) with the generation batch in one micro-batch",
    ),
    "recipe_one_batch": SpeedSetting(
        ("--per_device_train_batch_size", "32", "--gradient_accumulation_steps", "1"),
        help="the recipe with the generation batch in one micro-batch of 32 (more memory)",
    ),
    "recipe_checkpointing": SpeedSetting(
        ("--gradient_checkpointing", "true"), help="the recipe with gradient checkpointing (TRL's default)"
    ),
    "recipe_fp32": SpeedSetting(("--bf16", "false"), help="the recipe with bf16 off (the opt-out)"),
    "recipe_sdpa": SpeedSetting(("--attn_implementation", "sdpa"), help="the recipe with SDPA attention"),
    "recipe_static_cache": SpeedSetting(
        ("--cache_implementation", "static"), help="the recipe with a static KV cache"
    ),
    "recipe_compile": SpeedSetting(("--torch_compile", "true"), help="the recipe with torch.compile"),
    "today_lora": SpeedSetting((*TODAY, *LORA), help="today with LoRA r=16 (changes what is trained)"),
    "recipe_lora": SpeedSetting(LORA, help="the recipe with LoRA r=16 (changes what is trained)"),
}


# --------------------------------------------------------------------------- arithmetic of the report


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of ``values``."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def other_seconds(step_seconds: float, phases: dict[str, float]) -> float:
    """The part of a step no named phase accounts for (never below 0: phases are timed inside the step)."""
    return max(0.0, step_seconds - sum(v for k, v in phases.items() if k != "other"))


def paired_ratios(runs: Sequence[dict[str, Any]], name: str, reference: str) -> list[float]:
    """Per round, ``name``'s median step time over ``reference``'s (rounds lacking either are skipped)."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        times = [s["step_seconds"] for s in run["steps"]]
        if times:
            by_round.setdefault(run["round"], {})[run["setting"]] = statistics.median(times)
    return [r[name] / r[reference] for _, r in sorted(by_round.items()) if name in r and reference in r]


def logp_difference(
    logps: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]
) -> dict[str, float]:
    """Largest and mean absolute difference between two sets of per-token log-probabilities."""
    diffs = [
        abs(a - b) for row, ref in zip(logps, reference, strict=True) for a, b in zip(row, ref, strict=True)
    ]
    return {"max_abs": max(diffs), "mean_abs": sum(diffs) / len(diffs)}


def summarize(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per setting: step seconds, per-phase medians, paired ratio to ``names[0]``, log-prob difference."""
    reference = names[0]
    ref_logps = next((r["check_logps"] for r in runs if r["setting"] == reference), None)
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["setting"] == name]
        steps = [s for r in mine for s in r["steps"]]
        if not steps:
            continue
        ratios = paired_ratios(runs, name, reference)
        entry: dict[str, Any] = {
            "step_seconds": spread([s["step_seconds"] for s in steps]),
            "cpu_seconds": spread([s["cpu_seconds"] for s in steps]),
            "phases_median": {p: statistics.median(s["phases"].get(p, 0.0) for s in steps) for p in PHASES},
            "paired_ratio": spread(ratios) if ratios else None,
            "steps_timed": len(steps),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            # training step 1 (the untimed warm-up): the same start, seed and prompts in every setting
            "first_step": {k: mine[0]["warmup_step"].get(k) for k in RESULT_FIELDS},
            "model": mine[0]["model"],
        }
        if ref_logps is not None:
            entry["logp_vs_reference"] = logp_difference(mine[0]["check_logps"], ref_logps)
        out[name] = entry
    return out


# --------------------------------------------------------------------------- one setting, one process


class _PhaseClock:
    """Seconds per phase of the current step, and one record per finished step."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.steps: list[dict[str, Any]] = []
        self.in_generation = False
        self.matmul_dtype: dict[str, str] = {}  # phase -> dtype of the first linear layer's output

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - start)

        return wrapper


def _callback(clock: _PhaseClock) -> Any:
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.phases = {}
            self._wall, self._cpu = time.perf_counter(), time.process_time()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._optimizer = time.perf_counter()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.add("optimizer", time.perf_counter() - self._optimizer)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
            clock.steps.append({"step_seconds": wall, "cpu_seconds": cpu, "phases": dict(clock.phases)})

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or not clock.steps or "loss" not in logs:
                return
            step = clock.steps[-1]
            step["phases"]["allocation"] = float(logs.get("knapsack/overhead_seconds", 0.0))
            step["phases"]["other"] = other_seconds(step["step_seconds"], step["phases"])
            step.update(
                loss=float(logs["loss"]),
                reward=float(logs.get("reward", float("nan"))),
                grad_norm=float(logs.get("grad_norm", float("nan"))),
                mean_length=float(logs.get("completions/mean_length", float("nan"))),
            )

    return StepClock()


def _instrument(trainer: Any, clock: _PhaseClock, generate_autocast: bool = False) -> None:
    """Time generation, forwards, the loss and backward from outside TRL (public methods and hooks only);
    ``generate_autocast`` runs each ``generate`` call inside the trainer's autocast context."""
    import contextlib

    import torch

    model = trainer.model
    generate = model.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        clock.in_generation = True
        start = time.perf_counter()
        try:
            with trainer.accelerator.autocast() if generate_autocast else contextlib.nullcontext():
                return generate(*args, **kwargs)
        finally:
            clock.in_generation = False
            clock.add("generation", time.perf_counter() - start)

    model.generate = timed_generate
    starts: list[float] = []

    def before(module: Any, args: Any) -> None:
        starts.append(time.perf_counter())

    def after(module: Any, args: Any, output: Any) -> None:
        start = starts.pop()
        if not clock.in_generation and not torch.is_grad_enabled():
            clock.add("scoring_forward", time.perf_counter() - start)

    for scorer in (model, getattr(trainer, "ref_model", None)):  # the reference model when beta > 0
        if scorer is not None:
            scorer.register_forward_pre_hook(before)
            scorer.register_forward_hook(after)

    def matmul_dtype(module: Any, args: Any, output: Any) -> None:
        phase = "generation" if clock.in_generation else "loss" if torch.is_grad_enabled() else "scoring"
        clock.matmul_dtype.setdefault(phase, str(output.dtype))

    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(matmul_dtype)
    trainer.compute_loss = clock.timed("loss", trainer.compute_loss)
    trainer.accelerator.backward = clock.timed("backward", trainer.accelerator.backward)


def check_logps(model: Any, tokenizer: Any, autocast: Callable[[], Any]) -> list[list[float]]:
    """Teacher-forced log-probabilities of fixed chat answers (:data:`CHECK_ANSWERS`), one row per answer;
    ``autocast()`` opens the precision context the trainer computes in."""
    import torch

    rows = []
    for question, answer in zip(CHECK_QUESTIONS, CHECK_ANSWERS, strict=True):
        chat = [{"role": "user", "content": f"{question} Reply with the number only, as 'Answer: <number>'."}]
        prompt = (
            tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            if getattr(tokenizer, "chat_template", None)
            else question  # a base model's tokenizer (the tiny test models) has no chat template
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad(), autocast():
            logits = model(input_ids=ids).logits.float()
        logps = torch.log_softmax(logits[0, len(prompt_ids) - 1 : -1], dim=-1)
        rows.append(logps.gather(1, torch.tensor(answer_ids)[:, None])[:, 0].tolist())
    return rows


def worker(config: str, setting: str, steps: int, output_dir: str, extra: Sequence[str]) -> dict[str, Any]:
    """Train ``config`` under ``setting`` for one warm-up step and ``steps`` timed steps; the record."""
    import torch

    from knapsack_trl.recipe import (
        CommandLine,
        load_recipe_dataset,
        parse_command_line,
        prepare_model,
        recipe_rewards,
    )
    from knapsack_trl.recipe.hardware import cpu_bf16_flags
    from knapsack_trl.recipe.models import recipe_model_init_kwargs
    from knapsack_trl.recipe.trainers import recipe_trainer

    argv = ["--config", config, *SETTINGS[setting].flags, *extra]
    argv += ["--max_steps", str(steps + 1), "--output_dir", output_dir, "--logging_steps", "1"]
    argv += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    cli = CommandLine.read(argv)
    script_args, training_args, model_args = parse_command_line(cli, cpu_bf16_flags(cli)[0])
    clock = _PhaseClock()
    rewards = [clock.timed("reward", fn) for fn in recipe_rewards(script_args.reward_funcs)]
    dataset = load_recipe_dataset(script_args, seed=training_args.seed)
    model_path = prepare_model(model_args, training_args)
    training_args.model_init_kwargs = recipe_model_init_kwargs(model_args, training_args)
    trainer = recipe_trainer(
        script_args, model_args, training_args, model_path, rewards, dataset, callbacks=[_callback(clock)]
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    logps = check_logps(trainer.model, trainer.processing_class, trainer.accelerator.autocast)
    _instrument(trainer, clock, SETTINGS[setting].generate_autocast)
    trainer.train()
    config_model = getattr(trainer.model, "config", None)
    return {
        "setting": setting,
        "steps": clock.steps[1:],
        "warmup_step": clock.steps[0] if clock.steps else None,
        "check_logps": logps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model": {
            "attn_implementation": getattr(config_model, "_attn_implementation", None),
            "dtype": str(next(trainer.model.parameters()).dtype),
            "mixed_precision": trainer.accelerator.mixed_precision,
            "torch_threads": torch.get_num_threads(),
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "matmul_dtype": clock.matmul_dtype,
        },
    }


# --------------------------------------------------------------------------- rounds of processes


def _child_env(setting: str, threads: int | None = None) -> dict[str, str]:
    """The parent's environment without its thread variables, then ``threads`` (if given), then the
    setting's own variables."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(SETTINGS[setting].env)
    return env


def run(
    config: str,
    names: Sequence[str],
    rounds: int = 3,
    steps: int = 2,
    extra: Sequence[str] = (),
    timeout: float = 1800,
    progress: Callable[[str], None] | None = None,
    json_path: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every setting once per round, in rotated order, each in a fresh process; the summary and raw runs
    (also written to ``json_path`` after every process, so an interrupted run keeps what it measured).
    ``threads`` sets ``OMP_NUM_THREADS`` for every setting that does not set its own (None: torch's
    default, one thread per core)."""
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="knapsack-step-speed-") as tmp:
        for r in range(rounds):
            order = list(names[r % len(names) :]) + list(names[: r % len(names)])
            for name in order:
                out = Path(tmp) / f"{r}-{name}.json"
                cmd = [sys.executable, "-m", __name__, "--worker", name, "--config", config]
                cmd += [
                    "--steps",
                    str(steps),
                    "--worker-output",
                    str(out),
                    *(["--", *list(extra)] if extra else []),
                ]
                start = time.perf_counter()
                subprocess.run(
                    cmd, env=_child_env(name, threads), check=True, timeout=timeout, stdout=subprocess.DEVNULL
                )
                record = json.loads(out.read_text())
                record["round"] = r
                record["process_seconds"] = time.perf_counter() - start
                runs.append(record)
                if json_path:
                    Path(json_path).write_text(
                        json.dumps(_result(runs, names, config, rounds, steps, threads), indent=1)
                    )
                if progress:
                    times = ", ".join(f"{s['step_seconds']:.1f}" for s in record["steps"])
                    progress(f"round {r} {name}: steps {times} s")
    return _result(runs, names, config, rounds, steps, threads)


def _result(
    runs: list[dict[str, Any]],
    names: Sequence[str],
    config: str,
    rounds: int,
    steps: int,
    threads: int | None,
) -> dict[str, Any]:
    settings = {
        "config": config,
        "settings": list(names),
        "rounds": rounds,
        "steps": steps,
        "threads": threads,
    }
    return {"summary": summarize(runs, names), "runs": runs, "settings": settings}


def format_summary(summary: dict[str, Any], reference: str) -> str:
    """A markdown table: step seconds, paired ratio, per-phase medians, log-prob difference, peak RSS."""
    header = ["setting", "step s min / median / max", f"ratio to {reference} (median of rounds)"]
    header += [f"{p} s" for p in PHASES] + ["max abs dlogp", "peak RSS MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, e in summary.items():
        s, ratio = e["step_seconds"], e["paired_ratio"]
        cells = [name, f"{s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f}"]
        cells.append(f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "-")
        cells += [f"{e['phases_median'][p]:.2f}" for p in PHASES]
        dlogp = e.get("logp_vs_reference")
        cells += [f"{dlogp['max_abs']:.3g}" if dlogp else "-", f"{e['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/tiny/smollm2-chat-arithmetic-uniform.yaml")
    parser.add_argument(
        "--settings",
        default="today,recipe",
        help=f"comma-separated, the first is the reference; known: {', '.join(SETTINGS)}",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, default=2, help="timed steps per process (after one warm-up step)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="OMP_NUM_THREADS for settings that set none (default: torch's, one per core)",
    )
    parser.add_argument("--json", help="also write the summary and every run to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="recipe flags added to every setting (after --)")
    ns = parser.parse_args(argv)
    if ns.worker:
        with tempfile.TemporaryDirectory(prefix="knapsack-step-speed-run-") as out:
            record = worker(ns.config, ns.worker, ns.steps, out, ns.extra)
        Path(ns.worker_output).write_text(json.dumps(record))
        return 0
    names = [n.strip() for n in ns.settings.split(",") if n.strip()]
    result = run(
        ns.config,
        names,
        ns.rounds,
        ns.steps,
        ns.extra,
        progress=lambda line: print(line, flush=True),
        json_path=ns.json,
        threads=ns.threads,
    )
    print(format_summary(result["summary"], names[0]))
    for name, e in result["summary"].items():
        print(f"{name}: {SETTINGS[name].help}; model {e['model']}; first step {e['first_step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

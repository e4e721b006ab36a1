"""``knapsack-trl compare``: run a recipe both ways (uniform and knapsack) over seeds and report.

Two entry points share one harness:

- ``knapsack-trl compare --config RECIPE.yaml --seeds 3 [--oracle] [recipe flags ...]`` parses the
  recipe exactly as ``knapsack-trl train`` does and runs it with ``knapsack_enabled`` false (stock TRL,
  uniform) and true, from the same starting weights and seed. Held-out numbers come from the recipe's
  test split (prompts also in the training split are removed). A ``tiny://`` model is first warmed up
  with the demo's supervised phase: from random weights there is nothing for RL to sharpen.
- ``knapsack-trl compare --seeds 3 [--oracle]`` without ``--config`` runs the demo's experiment
  (:mod:`knapsack_trl.demo`) once per seed.

The harness measures every run the same way: a trainer subclass sees each generation batch's gathered
rewards and prompt ids (``_calculate_rewards``), whatever the allocation, and a callback evaluates the
held-out prompts every few steps with its own RNG stream, so evaluation never changes training.

The oracle row allocates with the *true* success rates of the batch's prompts, estimated from many extra
samples of the current policy just before each step (not counted as rollouts consumed): how much of
the possible gain the history-based estimates capture.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from knapsack_trl.report import (
    METHOD_FIELDS,
    RunRecord,
    format_ratios,
    format_table,
    group_stats,
    write_report,
)

DEFAULT_OUTPUT_DIR = "knapsack_compare_report"
METHODS = ("uniform", "knapsack", "oracle")
EXTRA_METHODS = ("reference",)


# --------------------------------------------------------------------------- held-out evaluation


def _prompt_text(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _columns(rows: Sequence[dict[str, Any]], repeat: int) -> dict[str, list[Any]]:
    keys = [k for k in rows[0] if k not in ("prompt", "completion")]
    return {k: [r[k] for r in rows for _ in range(repeat)] for k in keys}


def success_rates(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    reward_funcs: Sequence[Callable[..., Any]],
    *,
    k: int = 16,
    greedy: bool = False,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    threshold: float = 0.5,
    reward_weights: Sequence[float] | None = None,
    seed: int = 0,
    batch_prompts: int = 64,
) -> np.ndarray:
    """Per-prompt success rate: share of ``k`` samples (or the one greedy answer) scoring above ``threshold``.

    Scores with the recipe's own reward functions, weighted and summed as TRL does. Sampling uses a
    forked, seeded RNG stream, so calling this during training leaves training's randomness untouched.
    """
    import torch

    weights = (
        np.ones(len(reward_funcs)) if reward_weights is None else np.asarray(reward_weights, dtype=float)
    )
    reps = 1 if greedy else k
    out = np.zeros(len(rows))
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(rows), batch_prompts):
                chunk = list(rows[start : start + batch_prompts])
                texts = [_prompt_text(tokenizer, r["prompt"]) for r in chunk]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=not greedy,
                    num_return_sequences=reps,
                    pad_token_id=tokenizer.pad_token_id,
                    **sampling,
                )
                ids = gen[:, enc["input_ids"].shape[1] :]
                decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
                conversational = not isinstance(chunk[0]["prompt"], str)
                completions: list[Any] = (
                    [[{"role": "assistant", "content": t}] for t in decoded] if conversational else decoded
                )
                prompts = [r["prompt"] for r in chunk for _ in range(reps)]
                total = np.zeros(len(decoded))
                for w, fn in zip(weights, reward_funcs):
                    scores = fn(
                        prompts=prompts,
                        completions=completions,
                        completion_ids=ids.tolist(),
                        **_columns(chunk, reps),
                    )
                    total += w * np.array([np.nan if s is None else float(s) for s in scores])
                ok = np.nan_to_num(total, nan=-np.inf) > threshold
                out[start : start + len(chunk)] = ok.reshape(len(chunk), reps).mean(axis=1)
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return out


def heldout_metrics(p_greedy: np.ndarray, p_sampled: np.ndarray) -> dict[str, float]:
    """Greedy accuracy, mean sampled success (the held-out reward) and the shares of p = 0, 0<p<1, p = 1."""
    return {
        "accuracy": float(p_greedy.mean()),
        "reward": float(p_sampled.mean()),
        "frac_mid": float(np.mean((p_sampled > 0) & (p_sampled < 1))),
        "frac_zero": float(np.mean(p_sampled == 0)),
        "frac_one": float(np.mean(p_sampled == 1)),
    }


# --------------------------------------------------------------------------- recording trainer


class RecordingMixin:
    """Put before a knapsack trainer class: records each generation batch and one allocation snapshot.

    ``record_steps`` gets one :func:`knapsack_trl.report.group_stats` dict per generation batch (any
    allocation, stock uniform included). With ``oracle_p`` set, allocations use the true success rates
    (``KnapsackRolloutAllocator.allocate_known``).
    """

    record_threshold: float = 0.5
    record_snapshot_step: int | None = None
    oracle_p: Callable[[list[str]], np.ndarray] | None = None
    true_p: Callable[[list[str]], np.ndarray] | None = None

    def _record_init(self) -> None:
        self.record_steps: list[dict[str, float]] = []
        self.record_consumed = 0
        self.record_allocation: dict[str, Any] | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[no-untyped-def]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # type: ignore[misc]
        if self.model.training:  # type: ignore[attr-defined]
            from accelerate.utils import gather_object

            from knapsack_trl.trainer.advantages import aggregate_rewards

            ids = [self._record_id(row) for row in inputs]
            if self.accelerator.num_processes > 1:  # type: ignore[attr-defined]
                ids = gather_object(ids)
            rewards = aggregate_rewards(rewards_per_func, self.reward_weights).tolist()  # type: ignore[attr-defined]
            stats = group_stats(ids, rewards, self.record_threshold)
            self.record_consumed += int(stats["rollouts"])
            stats["step"] = float(len(self.record_steps) + 1)
            stats["rollouts_consumed"] = float(self.record_consumed)
            self.record_steps.append(stats)
        return rewards_per_func

    def _record_id(self, row: dict[str, Any]) -> str:
        from knapsack_trl.core.tracker import prompt_id

        value = row.get(self.args.knapsack_prompt_id_column)  # type: ignore[attr-defined]
        return str(value) if value is not None else prompt_id(row["prompt"])

    def _knapsack_allocate(self, prompt_ids: list[str], budget: int, step: int) -> Any:
        if self.oracle_p is None:
            allocation = super()._knapsack_allocate(prompt_ids, budget, step)  # type: ignore[misc]
        else:
            p = np.clip(np.nan_to_num(self.oracle_p(prompt_ids), nan=0.5), 0.0, 1.0)
            allocation = self.knapsack_allocator.allocate_known(p, budget, step=step)  # type: ignore[attr-defined]
        self._record_snapshot(prompt_ids, budget, step, allocation)
        return allocation

    def _record_snapshot(self, prompt_ids: list[str], budget: int, step: int, allocation: Any) -> None:
        snap = self.record_snapshot_step
        if snap is None or step < snap or self.record_allocation is not None:
            return
        truth_fn = self.true_p or self.oracle_p
        p_true = None if truth_fn is None else [float(x) for x in truth_fn(prompt_ids)]
        p_est = np.asarray(allocation.success_rate, dtype=float)
        self.record_allocation = {
            "step": int(step),
            "prompt_ids": list(prompt_ids),
            # Prompts with no estimate (never seen) are drawn just left of 0.
            "p_estimate": np.where(np.isnan(p_est), -0.02, p_est).tolist(),
            "bucket": [str(b) for b in allocation.bucket],
            "n": [int(x) for x in allocation.rollouts_per_prompt],
            "p_true": p_true,
            "uniform_n": budget / len(prompt_ids),
        }


def recording_trainer_class(trainer_type: str = "grpo") -> type:
    """``RecordingMixin`` over the knapsack GRPO or RLOO trainer."""
    from knapsack_trl.trainer import KnapsackGRPOTrainer, KnapsackRLOOTrainer

    base = {"grpo": KnapsackGRPOTrainer, "rloo": KnapsackRLOOTrainer}[trainer_type]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._record_init()
        base.__init__(self, *args, **kwargs)

    return type(f"Recording{base.__name__}", (RecordingMixin, base), {"__init__": __init__})


class EvalCallback:
    """Held-out evaluation every ``eval_every`` steps (and at the end), plus a tqdm bar with live numbers."""

    def __init__(
        self,
        evaluate: Callable[[Any], dict[str, float]],
        eval_every: int,
        total_steps: int,
        desc: str,
        progress: bool = True,
    ) -> None:
        from transformers import TrainerCallback

        self.evaluate = evaluate
        self.eval_every = max(1, int(eval_every))
        self.total_steps = total_steps
        self.desc = desc
        self.progress = progress
        self.evals: list[dict[str, float]] = []
        self.eval_seconds = 0.0
        self.trainer: Any = None
        self._bar: Any = None
        outer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                from tqdm.auto import tqdm

                outer._bar = tqdm(
                    total=outer.total_steps, desc=outer.desc, disable=not outer.progress, dynamic_ncols=True
                )

            def on_step_end(
                self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
            ) -> None:
                outer.on_step(state.global_step, model)

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if outer._bar is not None:
                    outer._bar.close()

        self.callback = _Callback()

    def consumed(self) -> float:
        return float(getattr(self.trainer, "record_consumed", 0))

    def run(self, model: Any, step: int) -> None:
        """Evaluate now and record the point against the rollouts consumed so far."""
        start = time.perf_counter()
        result = dict(self.evaluate(model))
        self.eval_seconds += time.perf_counter() - start
        result["step"] = float(step)
        result["rollouts_consumed"] = self.consumed()
        self.evals.append(result)

    def on_step(self, step: int, model: Any) -> None:
        if step % self.eval_every == 0 or step == self.total_steps:
            self.run(model, step)
        if self._bar is None:
            return
        self._bar.update(1)
        recent = getattr(self.trainer, "record_steps", [])[-20:]
        if recent:
            informative = np.mean([s["useful_groups"] for s in recent])
            post = {
                "reward": f"{np.mean([s['reward_mean'] for s in recent]):.2f}",
                "informative prompts": f"{informative:.1f}/{recent[-1]['groups']:.0f}",
            }
            if self.evals:
                post["held-out acc"] = f"{self.evals[-1]['reward']:.3f}"
            self._bar.set_postfix(post, refresh=False)


def run_method(
    method: str,
    *,
    model: Any,
    args: Any,
    train_dataset: Any,
    reward_funcs: Sequence[Callable[..., Any]],
    evaluate: Callable[[Any], dict[str, float]],
    eval_every: int,
    seed: int,
    trainer_type: str = "grpo",
    processing_class: Any = None,
    start_eval: dict[str, float] | None = None,
    snapshot_step: int | None = None,
    true_p_factory: Callable[[Any], Callable[[list[str]], np.ndarray]] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> RunRecord:
    """Train one method and return its record. ``args`` already has ``knapsack_enabled`` set for it.

    ``true_p_factory(trainer)`` builds the true-success-rate function (many samples of the current
    policy): the oracle allocates with it; the knapsack run uses it once, for the snapshot plot.
    ``start_eval`` (the shared checkpoint's evaluation) is step 0 of the curve, measured once for all.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    cls = recording_trainer_class(trainer_type)
    evaluator = EvalCallback(evaluate, eval_every, args.max_steps, f"{method:>8} seed {seed}", progress)
    trainer = cls(
        model=model,
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        callbacks=[evaluator.callback],
        **(trainer_kwargs or {}),
    )
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    trainer.record_threshold = float(args.knapsack_success_threshold)
    evaluator.trainer = trainer
    if method != "uniform":
        trainer.record_snapshot_step = snapshot_step
        if true_p_factory is not None:
            truth = true_p_factory(trainer)
            trainer.true_p = truth
            if method == "oracle":
                trainer.oracle_p = truth
    if start_eval is not None:
        evaluator.evals.append({**start_eval, "step": 0.0, "rollouts_consumed": 0.0})
    else:
        evaluator.run(trainer.model, 0)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return RunRecord(
        method=method,
        seed=seed,
        steps=trainer.record_steps,
        evals=evaluator.evals,
        allocation=trainer.record_allocation,
        wall_time_s=wall - evaluator.eval_seconds,
        extra={"eval_seconds": evaluator.eval_seconds, "train_seconds_with_eval": wall},
    )


# --------------------------------------------------------------------------- recipes


def _recipe_runs(
    ns: argparse.Namespace, recipe_flags: list[str], work_dir: str
) -> tuple[list[RunRecord], dict[str, Any]]:
    """Every (seed, method) of a recipe; returns the runs and the settings for the report."""
    from knapsack_trl import train as train_mod

    methods = _methods(ns)
    runs: list[RunRecord] = []
    settings: dict[str, Any] = {"recipe": ns.config, "recipe flags": " ".join(recipe_flags) or "none"}
    for seed in range(ns.seed, ns.seed + ns.seeds):
        base = ["--config", ns.config, *recipe_flags, "--seed", str(seed)]
        script_args, training_args, model_args = train_mod.parse_args(
            [*base, "--output_dir", os.path.join(work_dir, f"seed{seed}", "init")]
        )
        rewards = train_mod.resolve_rewards(script_args.reward_funcs)
        train_ds = train_mod.load_train_dataset(script_args, seed=seed)
        train_mod.check_dataset(train_ds, rewards, training_args)
        eval_rows = _heldout_rows(train_mod, script_args, train_ds, seed, ns.eval_rows)
        model_path = train_mod.prepare_model(model_args, training_args)
        if model_args.model_name_or_path.startswith(train_mod.TINY_SCHEME) and ns.warmup_steps > 0:
            model_path = _warm_up_tiny(
                model_path, train_ds, eval_rows, ns.warmup_steps, seed, work_dir, ns.progress
            )
        model_obj, tokenizer = _load(model_path, model_args)
        threshold = float(training_args.knapsack_success_threshold)
        max_new = int(training_args.max_completion_length)
        evaluate = _make_evaluate(tokenizer, eval_rows, rewards, training_args, ns.eval_samples, seed)
        start_eval = evaluate(model_obj)
        del model_obj
        by_id = {_row_id(training_args, row): row for row in train_ds}
        for method in methods:
            _, args, _ = train_mod.parse_args(
                [
                    *base,
                    "--output_dir",
                    os.path.join(work_dir, f"seed{seed}", method),
                    *(_flag(name, value) for name, value in METHOD_FIELDS[method].items()),
                    "--save_strategy",
                    "no",
                    "--report_to",
                    "none",
                    "--disable_tqdm",
                    "true",
                ]
            )
            model_obj, tokenizer = _load(model_path, model_args)

            factory = functools.partial(
                _true_p,
                tokenizer=tokenizer,
                by_id=by_id,
                rewards=rewards,
                k=ns.oracle_samples,
                max_new=max_new,
                threshold=threshold,
                seed=seed,
            )
            runs.append(
                run_method(
                    method,
                    model=model_obj,
                    args=args,
                    train_dataset=train_ds,
                    reward_funcs=rewards,
                    evaluate=evaluate,
                    eval_every=ns.eval_every or max(1, args.max_steps // 8),
                    seed=seed,
                    trainer_type=script_args.trainer_type,
                    processing_class=tokenizer,
                    start_eval=start_eval,
                    snapshot_step=args.max_steps // 2,
                    true_p_factory=factory,
                    trainer_kwargs={"peft_config": _peft(model_args)},
                    progress=ns.progress,
                )
            )
        settings.update(
            {
                "trainer": script_args.trainer_type,
                "model": model_args.model_name_or_path,
                "rollouts per step (generation_batch_size)": training_args.generation_batch_size,
                "prompts per step": training_args.generation_batch_size // training_args.num_generations,
                "max_steps": training_args.max_steps,
                "training prompts": len(train_ds),
                "held-out prompts": len(eval_rows),
                "held-out samples per prompt": ns.eval_samples,
            }
        )
    return runs, settings


def _heldout_rows(
    train_mod: Any, script_args: Any, train_ds: Any, seed: int, limit: int
) -> list[dict[str, Any]]:
    """The recipe's test split minus any prompt also in the training split, at most ``limit`` rows."""
    try:
        test = train_mod.load_train_dataset(script_args, split=script_args.dataset_test_split, seed=seed)
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
        raise SystemExit("knapsack-trl compare: every held-out prompt is also a training prompt.")
    return rows[:limit]


def _warm_up_tiny(
    model_path: str,
    train_ds: Any,
    eval_rows: Sequence[dict[str, Any]],
    steps: int,
    seed: int,
    work_dir: str,
    progress: bool,
) -> str:
    """The demo's supervised warm-up on problems outside the training and held-out prompts."""
    import torch

    from knapsack_trl.demo import DemoSettings, make_splits, warm_up
    from knapsack_trl.tiny import arithmetic_reward, load_tiny, save_tiny

    s = DemoSettings()
    model, tokenizer = load_tiny(model_path)
    taken = {str(r["prompt"]) for r in train_ds} | {str(r["prompt"]) for r in eval_rows}
    splits = make_splits(seed, 0, 0)
    sft = [r for r in splits["sft"] if r["prompt"] not in taken]
    probe_rows = [r for r in splits["probe"] if r["prompt"] not in taken]
    torch.set_num_threads(s.threads)

    def probe(m: Any) -> float:
        return float(
            success_rates(m, tokenizer, probe_rows, [arithmetic_reward], k=8, max_new_tokens=8).mean()
        )

    warm_up(
        model,
        tokenizer,
        sft,
        steps,
        s.sft_batch_size,
        s.sft_lr,
        seed,
        progress,
        probe=probe,
        target=s.sft_target,
    )
    folder = os.path.join(work_dir, f"seed{seed}", "warmup")
    save_tiny(folder, model, tokenizer)
    return folder


def _load(model_path: str, model_args: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if getattr(model_args, "dtype", None) not in (None, "auto"):
        import torch

        kwargs["dtype"] = getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _peft(model_args: Any) -> Any:
    from trl import get_peft_config

    return get_peft_config(model_args)


def _row_id(args: Any, row: dict[str, Any]) -> str:
    from knapsack_trl.core.tracker import prompt_id

    value = row.get(args.knapsack_prompt_id_column)
    return str(value) if value is not None else prompt_id(row["prompt"])


def _make_evaluate(
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    rewards: Sequence[Callable[..., Any]],
    args: Any,
    k: int,
    seed: int,
) -> Callable[[Any], dict[str, float]]:
    def evaluate(model: Any) -> dict[str, float]:
        common = {
            "max_new_tokens": int(args.max_completion_length),
            "threshold": float(args.knapsack_success_threshold),
            "reward_weights": args.reward_weights,
            "seed": seed + 1000,
        }
        greedy = success_rates(model, tokenizer, rows, rewards, greedy=True, **common)
        sampled = success_rates(
            model, tokenizer, rows, rewards, k=k, temperature=float(args.temperature), **common
        )
        return heldout_metrics(greedy, sampled)

    return evaluate


def _true_p(
    trainer: Any,
    tokenizer: Any,
    by_id: dict[str, dict[str, Any]],
    rewards: Sequence[Callable[..., Any]],
    k: int,
    max_new: int,
    threshold: float,
    seed: int,
) -> Callable[[list[str]], np.ndarray]:
    def fn(prompt_ids: list[str]) -> np.ndarray:
        return success_rates(
            trainer.model,
            tokenizer,
            [by_id[p] for p in prompt_ids],
            rewards,
            k=k,
            max_new_tokens=max_new,
            threshold=threshold,
            reward_weights=trainer.args.reward_weights,
            seed=seed + 7919 * (trainer.state.global_step + 1),
        )

    return fn


# --------------------------------------------------------------------------- command line


def _flag(name: str, value: Any) -> str:
    """A recipe flag as TrlParser reads it (booleans as true/false)."""
    return f"--{name}={str(value).lower() if isinstance(value, bool) else value}"


def _methods(ns: argparse.Namespace) -> tuple[str, ...]:
    if ns.methods:
        chosen = tuple(m.strip() for m in ns.methods.split(",") if m.strip())
        unknown = [m for m in chosen if m not in METHODS + EXTRA_METHODS]
        if unknown or "uniform" not in chosen:
            raise SystemExit(
                f"knapsack-trl compare: --methods takes uniform plus any of "
                f"{', '.join(METHODS[1:] + EXTRA_METHODS)} (got {ns.methods!r})."
            )
        return chosen
    return METHODS if ns.oracle else METHODS[:2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="knapsack-trl compare",
        description="Run a recipe with uniform and knapsack allocation (and optionally the oracle) over several "
        "seeds, from the same starting weights; write a report with mean ± std. Unknown flags are passed "
        "to the recipe (e.g. --max_steps 200). Without --config, runs the demo's experiment per seed.",
    )
    p.add_argument("--config", default=None, help="recipe YAML (as for knapsack-trl train)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--oracle", action="store_true", help="add the oracle row: allocation with the true p")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated runs per seed: uniform, knapsack (the defaults), reference (knapsack_preset="
        "'reference': the paper's rule), oracle (the true p); default uniform,knapsack (+oracle with --oracle)",
    )
    p.add_argument(
        "--oracle-samples", type=int, default=64, help="samples per prompt for the true p (default 64)"
    )
    p.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"report folder (default ./{DEFAULT_OUTPUT_DIR})"
    )
    p.add_argument("--eval-rows", type=int, default=256, help="held-out prompts (recipes; default 256)")
    p.add_argument("--eval-samples", type=int, default=16, help="samples per held-out prompt (default 16)")
    p.add_argument(
        "--eval-every", type=int, default=None, help="evaluate every N steps (default max_steps/8)"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="supervised warm-up steps for tiny:// models (default: the demo's); 0 trains from random weights",
    )
    p.add_argument("--quick", action="store_true", help="without --config: the demo's --quick preset")
    p.add_argument("--steps", type=int, default=None, help="without --config: GRPO steps per run")
    p.add_argument("--target-accuracy", type=float, default=None, help="target for 'rollouts to target'")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``knapsack-trl compare``."""
    ns, rest = _parser().parse_known_args(argv)
    if ns.seeds < 1:
        raise SystemExit("knapsack-trl compare: --seeds must be >= 1.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from knapsack_trl import demo

    demo.quiet_libraries()
    start = time.perf_counter()
    notes: list[str] = []
    if ns.config is None:
        if rest:
            raise SystemExit(f"knapsack-trl compare: unknown arguments {rest} (recipe flags need --config).")
        settings = demo.DemoSettings.quick() if ns.quick else demo.DemoSettings()
        if ns.steps is not None:
            settings.steps = ns.steps
        runs: list[RunRecord] = []
        infos = []
        for seed in range(ns.seed, ns.seed + ns.seeds):
            settings.seed = seed
            seed_runs, info = demo.run_experiment(
                settings, _methods(ns), progress=ns.progress, oracle_samples=ns.oracle_samples
            )
            runs += seed_runs
            infos.append(info)
        report_settings = {"experiment": "the demo's (knapsack_trl.demo)", **demo.settings_dict(settings)}
        report_settings["seeds"] = list(range(ns.seed, ns.seed + ns.seeds))
        notes.append(
            "Warm-up: held-out greedy accuracy "
            + ", ".join(f"{i['start_accuracy']:.3f}" for i in infos)
            + "; share of GRPO prompts with 0<p<1: "
            + ", ".join(f"{i['pool_frac_mid']:.0%}" for i in infos)
            + " (per seed)."
        )
        title = "knapsack-trl compare: the demo's experiment"
    else:
        if ns.warmup_steps is None:
            ns.warmup_steps = demo.DemoSettings().sft_steps
        with tempfile.TemporaryDirectory(prefix="knapsack_compare_") as work_dir:
            runs, report_settings = _recipe_runs(ns, rest, work_dir)
        report_settings["seeds"] = list(range(ns.seed, ns.seed + ns.seeds))
        title = f"knapsack-trl compare: {Path(ns.config).name}"
    if "oracle" in _methods(ns):
        notes.append(
            f"Oracle: the same allocator fed the true success rate of each step's prompts, from {ns.oracle_samples} "
            "extra samples of the current policy (not counted as rollouts consumed)."
        )
    notes.append(
        f"Wall time excludes held-out evaluation; the comparison took {time.perf_counter() - start:.0f} s."
    )
    agg = write_report(
        runs, ns.output_dir, title=title, settings=report_settings, target=ns.target_accuracy, notes=notes
    )
    print()
    print(format_table(agg))
    print()
    print(format_ratios(agg))
    print(f"\nReport: {Path(ns.output_dir).resolve() / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

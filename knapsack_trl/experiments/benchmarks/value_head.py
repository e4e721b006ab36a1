"""Does the value head help in the first epoch, and what does it cost? One run on the tiny task.

1. Policy: the tiny Llama (``knapsack_trl.tasks.arithmetic``) fine-tuned briefly (300 steps) on mixed 1-3 digit
   addition, so success rates differ between prompts and difficulty (operand length) shows in the text.
2. Per-prompt success rates: 16 real completions per prompt at temperature 1, for 288 prompts
   (192 for the epoch, 96 held out).
3. Brier score on the 96 prompts the head never trained on, against their real outcomes: constant
   0.5 (the tracker's default prior), the epoch's mean success rate, and the head.
4. First epoch, *simulated*: 12 batches of 16 unseen prompts x 8 rollouts. ``uniform``: 8 each, no
   allocator. ``history`` and ``blend`` go through the core allocator (greedy, n_min 2, n_max 32);
   ``history`` has no prior, so it is uniform too. ``blend``: the head's prediction as the prior, the
   head trained online on the batches before. Outcomes are drawn from the measured rates; the policy
   is frozen during the simulated epoch. Reported: the effective gradient ratio (share of rollouts in
   groups with both outcomes) and the informative prompts per batch (prompts whose group has both
   outcomes, counted by :func:`~knapsack_trl.experiments.report.group_stats`), each with its
   expectation, and blend / history for the latter.
   The same comparison through the real trainer follows: the demo's warmed-up policy, one epoch
   of GRPO in which every prompt is new (256 prompts, 16 per step, 8 rollouts on average), run
   stock uniform, knapsack with ``history`` and knapsack with ``blend`` from the same checkpoint;
   both figures as :func:`~knapsack_trl.experiments.report.summarize_run` gives them.
5. Step-time cost: the head's work per step (tokenize the batch's unique prompts, one no-grad
   forward, predict, update) against the same step of ``KnapsackGRPOTrainer`` on the same policy, both
   timed inside one training loop, with completions of 8 tokens (the task's natural cap) and 32
   (as ``benchmarks.trainer_overhead``); CPU and wall time. Target: at most 5% of a step.

Run: ``python -m knapsack_trl.benchmarks.value_head [--json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback

from knapsack_trl.core.allocator import AllocatorConfig, KnapsackRolloutAllocator
from knapsack_trl.core.calibration import calibration_metrics
from knapsack_trl.core.values import nonzero_gradient_probability
from knapsack_trl.experiments.demo import DemoSettings, prepare_checkpoint, run_demo_method
from knapsack_trl.experiments.report import group_stats, summarize_run
from knapsack_trl.tasks.arithmetic import (
    arithmetic_reward,
    arithmetic_rows,
    build_model,
    build_tokenizer,
    random_problems,
)
from knapsack_trl.trainer import KnapsackGRPOConfig, KnapsackGRPOTrainer
from knapsack_trl.trainer.prompt_features import tokenize_prompts
from knapsack_trl.trainer.value_head import ValueHeadConfig, ValueHeadEstimator, estimator_prior

TARGET_COST = 0.05


def fine_tune(model: Any, tokenizer: Any, steps: int, batch: int, seed: int) -> float:
    """Supervised warm start on the answers (loss on answer tokens only); returns the last loss."""

    rows = random_problems(20_000, seed + 1)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        chosen = [rows[i] for i in rng.choice(len(rows), batch, replace=False)]
        seqs, starts = [], []
        for row in chosen:
            p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            a = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            seqs.append(p + a)
            starts.append(len(p))
        width = max(map(len, seqs))
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (s, start) in enumerate(zip(seqs, starts)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, start : len(s)] = torch.tensor(s[start:])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return float(loss.detach())


def sample_outcomes(model: Any, tokenizer: Any, rows: list[dict[str, str]], samples: int) -> np.ndarray:
    """``(len(rows), samples)`` binary rewards of real completions at temperature 1."""

    enc = tokenizer([r["prompt"] for r in rows], padding=True, return_tensors="pt", add_special_tokens=False)
    ids = enc["input_ids"].repeat_interleave(samples, 0)
    mask = enc["attention_mask"].repeat_interleave(samples, 0)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=6,
        )
    completions = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    answers = [r["answer"] for r in rows for _ in range(samples)]
    return np.asarray(arithmetic_reward(completions, answers)).reshape(len(rows), samples)


def simulate_epoch(
    mode: str,
    features: Any,
    rates: np.ndarray,
    prompt_ids: list[str],
    prompts_per_batch: int,
    rollouts_per_prompt: int,
    n_max: int,
    seed: int,
    head_config: Any = None,
) -> dict[str, Any]:
    """One epoch over unseen prompts; outcomes drawn from ``rates``.

    ``uniform``: every prompt gets ``rollouts_per_prompt``, no allocator. ``history`` / ``blend``: the
    core allocator with that estimator mode. ``batches`` keeps each batch's sizes and successes.
    """

    rng = np.random.default_rng(seed)
    allocator = KnapsackRolloutAllocator(AllocatorConfig(n_min=2, n_max=n_max, solver="greedy"))
    head = ValueHeadEstimator(int(features.shape[1]), head_config or ValueHeadConfig(seed=0))
    useful = expected = expected_informative = 0.0
    total = 0
    informative: list[float] = []
    batches: list[dict[str, list[int]]] = []
    online_brier, online_brier_constant = [], []
    for start in range(0, len(prompt_ids), prompts_per_batch):
        ids = prompt_ids[start : start + prompts_per_batch]
        feats = features[start : start + prompts_per_batch]
        p_true = rates[start : start + prompts_per_batch]
        sizes = _batch_sizes(mode, allocator, head, ids, feats, rollouts_per_prompt)
        successes = rng.binomial(sizes, p_true)
        rewards = np.concatenate([np.r_[np.ones(s), np.zeros(n - s)] for s, n in zip(successes, sizes)])
        rollout_ids = np.repeat(ids, sizes).tolist()
        stats = group_stats(rollout_ids, rewards.tolist())
        useful += stats["useful_rollouts"]
        informative.append(stats["useful_groups"])
        p_mixed = nonzero_gradient_probability(sizes, p_true)
        expected += float((sizes * p_mixed).sum())
        expected_informative += float(p_mixed.sum())
        total += int(sizes.sum())
        batches.append({"sizes": sizes.tolist(), "successes": successes.tolist()})
        allocator.observe(rollout_ids, rewards.tolist())
        if mode != "blend":
            continue
        metrics = head.update(feats, successes, sizes)
        if head.num_updates > 1:
            online_brier.append(metrics["knapsack/value_head/brier"])
            online_brier_constant.append(metrics["knapsack/value_head/brier_constant"])
    return {
        "effective_ratio": useful / total,
        "expected_effective_ratio": expected / total,
        "informative_prompts": float(np.mean(informative)),
        "expected_informative_prompts": expected_informative / len(informative),
        "online_brier": float(np.mean(online_brier)) if online_brier else float("nan"),
        "online_brier_constant": float(np.mean(online_brier_constant))
        if online_brier_constant
        else float("nan"),
        "batches": batches,
        "head": head,
    }


def _batch_sizes(
    mode: str,
    allocator: KnapsackRolloutAllocator,
    head: ValueHeadEstimator,
    ids: list[str],
    feats: Any,
    rollouts_per_prompt: int,
) -> np.ndarray:
    """One batch's rollouts per prompt: the plain uniform split, or the allocator in ``mode``."""

    if mode == "uniform":
        return np.full(len(ids), rollouts_per_prompt)
    head_p = head.predict_or_none(feats) if mode == "blend" else None
    prior = estimator_prior(mode, head_p, allocator.tracker.stats(ids).num_observations)
    return np.asarray(
        allocator.allocate(ids, len(ids) * rollouts_per_prompt, prior_success_rate=prior).rollouts_per_prompt
    )


class HeadTimer(TrainerCallback):
    """Step time (begin -> end), then the head's work for one batch of unique prompts.

    Wall and process CPU time both: on a shared machine wall time swings with other users' load,
    while CPU time counts only this process's work.
    """

    def __init__(
        self,
        estimator: Any,
        model: Any,
        tokenizer: Any,
        prompts: list[str],
        prompts_per_batch: int,
        num_generations: int,
    ) -> None:
        self.estimator, self.model, self.tokenizer, self.prompts = estimator, model, tokenizer, prompts
        self.prompts_per_batch, self.num_generations = prompts_per_batch, num_generations
        self.rng = np.random.default_rng(0)
        self.steps: list[tuple[float, float]] = []
        self.head: list[tuple[float, float]] = []
        self._t = (0.0, 0.0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.steps.append((time.perf_counter() - self._t[0], time.process_time() - self._t[1]))
        start = (time.perf_counter(), time.process_time())
        per = self.prompts_per_batch
        first = state.global_step * per
        batch = [self.prompts[(first + i) % len(self.prompts)] for i in range(per)]
        ids, mask = tokenize_prompts(self.tokenizer, batch)
        feats = self.estimator.features(self.model, ids, mask, shared_inputs=True)
        self.estimator.predict(feats)
        outcomes = self.rng.integers(0, self.num_generations + 1, per)
        self.estimator.update(feats, outcomes, [self.num_generations] * per)
        self.head.append((time.perf_counter() - start[0], time.process_time() - start[1]))


def step_cost(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    steps: int,
    prompts_per_batch: int,
    num_generations: int,
    completion_length: int,
) -> dict[str, Any]:
    """Head work per step vs a KnapsackGRPOTrainer step, both timed inside the same training loop.

    Completions are forced to ``completion_length`` tokens: 8 is the tiny task's natural cap (answers
    are at most 5 tokens); 32 matches ``benchmarks.trainer_overhead``. The head's cost does not grow
    with completion length, a step's does.
    """

    estimator = ValueHeadEstimator.from_model(model, ValueHeadConfig(seed=0))
    timer = HeadTimer(estimator, model, tokenizer, prompts, prompts_per_batch, num_generations)
    data = Dataset.from_list(
        [{"prompt": p["prompt"], "answer": p["answer"]} for p in random_problems(512, 99)]
    )
    trainer = KnapsackGRPOTrainer(
        model=model,
        reward_funcs=arithmetic_reward,
        args=KnapsackGRPOConfig(
            output_dir=tempfile.mkdtemp(prefix="knapsack-value-head-"),
            use_cpu=True,
            bf16=False,
            report_to="none",
            per_device_train_batch_size=prompts_per_batch * num_generations,
            num_generations=num_generations,
            max_completion_length=completion_length,
            generation_kwargs={"min_new_tokens": completion_length},
            max_steps=steps + 1,
            logging_steps=steps + 1,
            save_strategy="no",
            learning_rate=1e-5,
            seed=0,
            disable_tqdm=True,
            knapsack_solver="greedy",
            knapsack_n_max=4 * num_generations,
        ),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    steps_t, head_t = timer.steps[1:], timer.head[1:]  # the first step warms up
    out: dict[str, Any] = {
        "steps_timed": len(steps_t),
        "trainer": "KnapsackGRPOTrainer",
        "completion_tokens": completion_length,
        "rollouts_per_step": prompts_per_batch * num_generations,
    }
    for k, clock in enumerate(("wall", "cpu")):
        out[clock] = {
            "median_step_seconds": statistics.median(s[k] for s in steps_t),
            "median_head_seconds": statistics.median(h[k] for h in head_t),
            "median_cost_ratio": statistics.median(h[k] / s[k] for h, s in zip(head_t, steps_t)),
        }
    return out


def run(
    seed: int = 0,
    sft_steps: int = 300,
    samples: int = 16,
    prompts_per_batch: int = 16,
    rollouts_per_prompt: int = 8,
    repeats: int = 20,
    timing_steps: int = 20,
    completion_lengths: tuple[int, ...] = (8, 32),
    threads: int = 1,
) -> dict[str, Any]:
    """The whole benchmark; returns plain numbers.

    One torch thread by default: on a shared 2-core machine the tiny model's ops ran up to 40x
    slower with 2 threads (``benchmarks.trainer_overhead`` also uses one).
    """

    if threads:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed)
    sft_loss = fine_tune(model, tokenizer, sft_steps, 128, seed)
    phases = {"fine_tune": time.perf_counter() - t0}

    rows = arithmetic_rows(288, digits=(1, 2, 3), seed=seed + 7)  # 96 per operand length, distinct
    epoch_rows, held_rows = rows[:192], rows[192:]
    outcomes = sample_outcomes(model, tokenizer, rows, samples)
    rates = outcomes.mean(axis=1)
    probe = ValueHeadEstimator.from_model(model)
    enc = tokenizer([r["prompt"] for r in rows], padding=True, return_tensors="pt", add_special_tokens=False)
    features = probe.features(model, enc["input_ids"], enc["attention_mask"])
    phases["sample_and_features"] = time.perf_counter() - t0 - sum(phases.values())
    epoch_ids = [r["prompt_id"] for r in epoch_rows]
    n_epoch = len(epoch_rows)

    arms = _first_epoch_arms(
        features[:n_epoch], rates[:n_epoch], epoch_ids, prompts_per_batch, rollouts_per_prompt, repeats, seed
    )
    phases["simulate"] = time.perf_counter() - t0 - sum(phases.values())
    head: ValueHeadEstimator = arms["blend"][0]["head"]
    brier, head_held = _held_out_brier(head, features[n_epoch:], outcomes[n_epoch:], rates[:n_epoch], samples)

    cost = {
        f"completion_{length}": step_cost(
            model,
            tokenizer,
            [r["prompt"] for r in rows],
            timing_steps,
            prompts_per_batch,
            rollouts_per_prompt,
            length,
        )
        for length in completion_lengths
    }
    phases["step_cost"] = time.perf_counter() - t0 - sum(phases.values())
    by_digits = {str(d): float(rates[d - 1 :: 3].mean()) for d in (1, 2, 3)}  # rows cycle 1, 2, 3 digits
    return {
        "brier_unseen_prompts": brier,
        "held_out_calibration": {k: head_held[k] for k in ("mean_pred", "mean_obs", "ece")},
        **_arm_summaries(arms, repeats),
        "step_cost": {**cost, "target_ratio": TARGET_COST, "torch_threads": torch.get_num_threads()},
        "task": {
            "sft_steps": sft_steps,
            "sft_final_loss": sft_loss,
            "epoch_prompts": n_epoch,
            "held_out_prompts": len(held_rows),
            "samples_per_prompt": samples,
            "mean_success_rate": float(rates.mean()),
            "share_mixed_prompts": float(((rates > 0) & (rates < 1)).mean()),
            "success_rate_by_operand_digits": by_digits,
            "prompts_per_batch": prompts_per_batch,
            "rollouts_per_prompt": rollouts_per_prompt,
        },
        "seconds": time.perf_counter() - t0,
        "phase_seconds": phases,
    }


def _arm_summaries(arms: dict[str, list[dict[str, Any]]], repeats: int) -> dict[str, Any]:
    """Mean and spread over the simulated epochs of each arm's ratios, informative prompts per batch
    and online Brier scores."""

    def summary(mode: str, key: str) -> dict[str, float]:
        values = [a[key] for a in arms[mode]]
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    def per_arm(key: str) -> dict[str, Any]:
        out: dict[str, Any] = {mode: summary(mode, key) for mode in arms}
        out.update({f"{mode}_expected": summary(mode, f"expected_{key}") for mode in arms})
        return out

    informative = per_arm("informative_prompts")
    return {
        "first_epoch_effective_ratio": {**per_arm("effective_ratio"), "simulated": True, "repeats": repeats},
        "first_epoch_informative_prompts": {
            **informative,
            "blend_over_history": _ratio(informative["blend"]["mean"], informative["history"]["mean"]),
            "prompts_per_batch": len(arms["history"][0]["batches"][0]["sizes"]),
            "batches": len(arms["history"][0]["batches"]),
            "simulated": True,
            "repeats": repeats,
        },
        "online_brier_first_epoch": {
            "head": summary("blend", "online_brier")["mean"],
            "running_mean": summary("blend", "online_brier_constant")["mean"],
        },
    }


def _first_epoch_arms(
    features: Any,
    rates: np.ndarray,
    ids: list[str],
    prompts_per_batch: int,
    rollouts_per_prompt: int,
    repeats: int,
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """``repeats`` simulated first epochs per arm: uniform, history only, and the head's blend.

    Each arm's epoch ``r`` draws from its own generator seeded ``seed * 1000 + r``, so adding an arm
    leaves the others' numbers unchanged."""
    arms: dict[str, list[dict[str, Any]]] = {"uniform": [], "history": [], "blend": []}
    for r in range(repeats):
        for mode in arms:
            arms[mode].append(
                simulate_epoch(
                    mode,
                    features,
                    rates,
                    ids,
                    prompts_per_batch,
                    rollouts_per_prompt,
                    n_max=4 * rollouts_per_prompt,
                    seed=seed * 1000 + r,
                )
            )
    return arms


def _held_out_brier(
    head: ValueHeadEstimator, features: Any, outcomes: np.ndarray, epoch_rates: np.ndarray, samples: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Brier scores on the held-out prompts (constant 0.5, the epoch's mean, the head) and the head's
    calibration there."""
    held_s = outcomes.sum(axis=1)
    held_n = np.full(held_s.size, samples)
    epoch_mean = float(epoch_rates.mean())
    head_held = calibration_metrics(head.predict(features), held_s, held_n)
    brier = {
        "constant_0.5": calibration_metrics(np.full(held_s.size, 0.5), held_s, held_n)["brier"],
        "constant_epoch_mean": calibration_metrics(np.full(held_s.size, epoch_mean), held_s, held_n)["brier"],
        "head": head_held["brier"],
    }
    return brier, head_held


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def trainer_settings(seed: int = 0) -> DemoSettings:
    """The demo's random-pool (control) task at its ``--quick`` size, one epoch of 256 new prompts.

    The same settings as the removed ``DemoSettings.quick`` preset these figures were first run with."""
    return DemoSettings.for_task(
        "control", quick=True, seed=seed, pool_size=256, prompts_per_step=16, steps=16, eval_every=10**6
    )


def trainer_first_epoch(seed: int = 0) -> dict[str, dict[str, float]]:
    """One all-new epoch of real GRPO training per arm: ``effective_ratio``, the share of rollouts in
    groups with both outcomes, and ``informative_prompts``, such groups per generation batch (both as
    :func:`~knapsack_trl.experiments.report.summarize_run` counts them from the recorder's steps)."""

    settings = trainer_settings(seed)
    arms = {
        "uniform": ("uniform", "history"),
        "history": ("knapsack", "history"),
        "blend": ("knapsack", "blend"),
    }
    ratios: dict[str, float] = {}
    informative: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        prep = prepare_checkpoint(settings, os.path.join(work, "checkpoint"), progress=False)
        for name, (method, estimator) in arms.items():
            arm = dataclasses.replace(settings, knapsack={"knapsack_value_estimator": estimator})
            record = run_demo_method(
                method, os.path.join(work, "checkpoint"), prep, arm, os.path.join(work, name), progress=False
            )
            summary = summarize_run(record)
            ratios[name] = float(summary["egr_rollouts"])
            informative[name] = float(summary["informative_prompts"])
            informative[f"{name}_batches"] = float(len(record.steps))
    informative["blend_over_history"] = _ratio(informative["blend"], informative["history"])
    informative["prompts_per_batch"] = float(settings.prompts_per_step)
    return {"effective_ratio": ratios, "informative_prompts": informative}


def _print_first_epoch(result: dict[str, Any]) -> None:
    """The first-epoch sections: simulated, then through the real trainer when it ran."""

    e, inf = result["first_epoch_effective_ratio"], result["first_epoch_informative_prompts"]
    print(
        f"First-epoch effective gradient ratio (SIMULATED with the core allocator, {e['repeats']} repeats; "
        "share of rollouts in groups with both outcomes)"
    )
    for mode in ("uniform", "history", "blend"):
        s, x = e[mode], e[f"{mode}_expected"]
        print(f"  {mode:<8} {s['mean']:.3f} +- {s['std']:.3f}   (expected {x['mean']:.3f})")
    o = result["online_brier_first_epoch"]
    print(
        f"  online Brier in that epoch (each batch scored before the head trains on it, from batch 2): "
        f"head {o['head']:.4f} vs running mean {o['running_mean']:.4f}"
    )
    print(
        f"First-epoch informative prompts per batch (SIMULATED; prompts whose group has both outcomes, "
        f"of {inf['prompts_per_batch']} per batch, {inf['batches']} batches)"
    )
    for mode in ("uniform", "history", "blend"):
        s, x = inf[mode], inf[f"{mode}_expected"]
        print(f"  {mode:<8} {s['mean']:.2f} +- {s['std']:.2f}   (expected {x['mean']:.2f})")
    print(f"  blend / history {inf['blend_over_history']:.3f}")
    real, real_inf = result.get("first_epoch_trainer"), result.get("first_epoch_trainer_informative_prompts")
    if real and real_inf:
        print(
            "First-epoch effective gradient ratio and informative prompts per batch through "
            f"KnapsackGRPOTrainer (real training, every prompt new, {real_inf['prompts_per_batch']:.0f} per batch)"
        )
        for name, value in real.items():
            batches = real_inf[f"{name}_batches"]
            print(f"  {name:<8} {value:.3f}   {real_inf[name]:.2f} per batch ({batches:.0f} batches)")
        print(f"  informative prompts, blend / history {real_inf['blend_over_history']:.3f}")


def _print(result: dict[str, Any]) -> None:
    b = result["brier_unseen_prompts"]
    c = result["step_cost"]
    t = result["task"]
    print(
        f"tiny task: {t['epoch_prompts']} epoch + {t['held_out_prompts']} held-out prompts, "
        f"{t['samples_per_prompt']} real samples each; mean p {t['mean_success_rate']:.3f}, "
        f"mixed {t['share_mixed_prompts']:.2f}"
    )
    print("Brier on unseen prompts (real outcomes; lower is better)")
    for name, value in b.items():
        print(f"  {name:<22} {value:.4f}")
    cal = result["held_out_calibration"]
    print(
        f"  head: mean predicted {cal['mean_pred']:.3f} vs observed {cal['mean_obs']:.3f}, ECE {cal['ece']:.3f}"
    )
    _print_first_epoch(result)
    print(
        f"Step cost of the head per KnapsackGRPOTrainer step (target <= {100 * c['target_ratio']:.0f}%; {c['torch_threads']} torch thread(s))"
    )
    for name, run_cost in c.items():
        if not name.startswith("completion_"):
            continue
        for clock in ("cpu", "wall"):
            x = run_cost[clock]
            print(
                f"  {run_cost['rollouts_per_step']} rollouts x {run_cost['completion_tokens']:>2} tokens, {clock:<4}: "
                f"head {x['median_head_seconds'] * 1e3:5.1f} ms vs step {x['median_step_seconds'] * 1e3:6.1f} ms"
                f" -> {100 * x['median_cost_ratio']:.1f}% (median of {run_cost['steps_timed']} steps)"
            )
    phases = ", ".join(f"{k} {v:.1f}" for k, v in result["phase_seconds"].items())
    print(f"total {result['seconds']:.1f} s ({phases})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20, help="simulated epochs per arm")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--no-trainer-epoch", action="store_true", help="skip the first epoch through the real trainer"
    )
    ns = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    result = run(seed=ns.seed, sft_steps=ns.sft_steps, repeats=ns.repeats, threads=ns.threads)
    if not ns.no_trainer_epoch:
        real = trainer_first_epoch(ns.seed)
        result["first_epoch_trainer"] = real["effective_ratio"]
        result["first_epoch_trainer_informative_prompts"] = real["informative_prompts"]
    if ns.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

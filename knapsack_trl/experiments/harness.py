"""The harness every experiment measures runs with: a recorder on the trainer's public hook, the oracle
allocator, held-out evaluation during training, and the supervised warm-up of the tiny world.

Runs are measured the same way whatever the allocation: the uniform baseline is the knapsack trainer in
``knapsack_mode: uniform``, which the contract tests show equal to stock TRL to the last bit, so every run
reports through :meth:`KnapsackTrainerMixin.add_knapsack_listener`.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.experiments.evaluation import success_rates
from knapsack_trl.experiments.methods import ARMS
from knapsack_trl.experiments.report import RunRecord, group_stats
from knapsack_trl.tasks.arithmetic import arithmetic_reward
from knapsack_trl.trainer.hooks import AllocationEvent


class Recorder:
    """A knapsack listener: one :func:`group_stats` row per generation batch, and one allocation snapshot.

    ``truth(prompt_ids)`` (optional) gives the true success rates for the snapshot plot.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        snapshot_step: int | None = None,
        truth: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        self.threshold = threshold
        self.snapshot_step = snapshot_step
        self.truth = truth
        self.steps: list[dict[str, float]] = []
        self.consumed = 0
        self.allocation: dict[str, Any] | None = None

    def __call__(self, event: AllocationEvent) -> None:
        stats = group_stats(event.rollout_prompt_ids, event.rewards.tolist(), self.threshold)
        self.consumed += int(stats["rollouts"])
        stats["step"] = float(len(self.steps) + 1)
        stats["rollouts_consumed"] = float(self.consumed)
        self.steps.append(stats)
        self._snapshot(event)

    def _snapshot(self, event: AllocationEvent) -> None:
        snap = self.snapshot_step
        if snap is None or event.step < snap or self.allocation is not None or event.allocation is None:
            return
        p_true = None if self.truth is None else [float(x) for x in self.truth(event.prompt_ids)]
        p_est = np.asarray(event.allocation.success_rate, dtype=float)
        self.allocation = {
            "step": int(event.step),
            "prompt_ids": list(event.prompt_ids),
            # Prompts with no estimate (never seen) are drawn just left of 0.
            "p_estimate": np.where(np.isnan(p_est), -0.02, p_est).tolist(),
            # a pilot's second round has no buckets: every prompt is valued by its posterior
            "bucket": [
                str(b) for b in getattr(event.allocation, "bucket", ["posterior"] * len(event.prompt_ids))
            ],
            "n": [int(x) for x in event.rollouts],
            "p_true": p_true,
            "uniform_n": float(event.rollouts.sum()) / len(event.prompt_ids),
        }


class StepClock:
    """Wall-clock parts of every optimiser step, from public hooks only: a TrainerCallback's step
    boundaries, the knapsack listener's call, a timed reward function and the trainer's logged
    ``knapsack/overhead_seconds``.

    Rows (one per step): ``seconds_step``; ``seconds_generation`` (generation, with TRL's own work around
    it); ``seconds_scoring`` (the reward functions, when wrapped by :meth:`timed`); ``seconds_allocation``
    (the knapsack's decision); ``seconds_optimisation`` (loss, backward and optimiser step). The listener
    runs once the batch's rewards and advantages are final, so everything before it is generation, scoring
    and allocation, everything after it the update. Callbacks added after this one (evaluation) are not
    counted.
    """

    def __init__(self) -> None:
        from transformers import TrainerCallback

        self.rows: list[dict[str, float]] = []
        self._scoring = 0.0
        self._begin = 0.0
        self._event: float | None = None
        outer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                outer._begin, outer._scoring, outer._event = time.perf_counter(), 0.0, None

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                outer._end(time.perf_counter())

        self.callback = _Callback()

    def __call__(self, event: AllocationEvent) -> None:
        """The knapsack listener: generation and scoring of this step's batch are over."""
        self._event = time.perf_counter()

    def timed(self, reward: Callable[..., Any]) -> Callable[..., Any]:
        """``reward`` with its calls added to the step's scoring time (its name, which TRL logs, kept)."""

        @functools.wraps(reward)
        def scored(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return reward(*args, **kwargs)
            finally:
                self._scoring += time.perf_counter() - start

        return scored

    def _end(self, now: float) -> None:
        if self._event is None:
            return
        self.rows.append(
            {
                "seconds_step": now - self._begin,
                "seconds_scoring": self._scoring,
                "seconds_optimisation": now - self._event,
                "seconds_generation": max(0.0, self._event - self._begin - self._scoring),
            }
        )

    def step_seconds(self, log_history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        """The rows, one per step in order, with the trainer's logged ``knapsack/overhead_seconds`` of each
        step (``log_history``, logging every step) moved from generation to allocation."""
        overhead = [
            float(entry["knapsack/overhead_seconds"])
            for entry in log_history
            if "knapsack/overhead_seconds" in entry
        ]
        rows = [dict(r) for r in self.rows]
        if len(overhead) == len(rows):
            for row, seconds in zip(rows, overhead):
                row["seconds_allocation"] = seconds
                row["seconds_generation"] = max(0.0, row["seconds_generation"] - seconds)
        return rows


class OracleAllocator(KnapsackRolloutAllocator):
    """Allocates with the *true* success rates (``truth(prompt_ids)``, e.g. from many extra samples of the
    current policy): what the allocation could do with perfect estimates. Keeps the tracker observing."""

    def __init__(self, base: KnapsackRolloutAllocator, truth: Callable[[list[str]], np.ndarray]) -> None:
        super().__init__(base.config, base.tracker)
        self.truth = truth

    def allocate(self, prompt_ids: Sequence[str], budget: int, *, step: int = 0, **_: Any) -> Any:
        p = np.clip(np.nan_to_num(self.truth(list(prompt_ids)), nan=0.5), 0.0, 1.0)
        return self.allocate_known(p, budget, step=step)


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
        # Training seconds (evaluations excluded) at each evaluation, aligned with ``evals``.
        self.train_seconds: list[float] = []
        self.eval_seconds = 0.0
        self.recorder: Recorder | None = None
        self._bar: Any = None
        self._train_start: float | None = None
        outer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                from tqdm.auto import tqdm

                outer._train_start = time.perf_counter()
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
        return float(self.recorder.consumed) if self.recorder is not None else 0.0

    def run(self, model: Any, step: int) -> None:
        """Evaluate now and record the point against the rollouts consumed so far, and the training time so
        far (evaluations excluded) in :attr:`train_seconds`."""
        start = time.perf_counter()
        trained = 0.0 if self._train_start is None else start - self._train_start - self.eval_seconds
        result = dict(self.evaluate(model))
        self.eval_seconds += time.perf_counter() - start
        result["step"] = float(step)
        result["rollouts_consumed"] = self.consumed()
        self.evals.append(result)
        self.train_seconds.append(trained)

    def on_step(self, step: int, model: Any) -> None:
        if step % self.eval_every == 0 or step == self.total_steps:
            self.run(model, step)
        if self._bar is None:
            return
        self._bar.update(1)
        recent = self.recorder.steps[-20:] if self.recorder is not None else []
        if recent:
            informative = np.mean([s["useful_groups"] for s in recent])
            post = {
                "reward": f"{np.mean([s['reward_mean'] for s in recent]):.2f}",
                "informative prompts": f"{informative:.1f}/{recent[-1]['groups']:.0f}",
            }
            if self.evals:
                post["held-out acc"] = f"{self.evals[-1]['reward']:.3f}"
            self._bar.set_postfix(post, refresh=False)


def train_method(
    method: str,
    trainer: Any,
    evaluate: Callable[[Any], dict[str, float]],
    *,
    eval_every: int,
    seed: int,
    start_eval: dict[str, float] | None = None,
    snapshot_step: int | None = None,
    truth: Callable[[list[str]], np.ndarray] | None = None,
    progress: bool = True,
    clock: StepClock | None = None,
) -> RunRecord:
    """Train one method's trainer (built with that method's config) and return its record.

    ``truth`` (the true success rates, from many samples of the current policy): the oracle allocates with
    it; other methods use it once, for the snapshot plot. ``start_eval`` (the shared checkpoint's
    evaluation) is step 0 of the curve, measured once for all methods. ``clock``: each step's wall-clock
    parts go into the record's ``extra["step_seconds"]`` (give the trainer ``clock.timed(reward)`` to
    separate scoring), the training time at each evaluation into ``extra["eval_train_seconds"]``.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    recorder = Recorder(float(trainer.args.knapsack_success_threshold))
    if method != "uniform":
        recorder.snapshot_step, recorder.truth = snapshot_step, truth
    if ARMS[method].oracle and truth is not None:
        trainer.knapsack_allocator = OracleAllocator(trainer.knapsack_allocator, truth)
    clock = clock or StepClock()
    # The recorder first: its allocation snapshot (extra samples of the policy) then falls inside the
    # trainer's logged overhead and before the clock's mark, so the step's parts still add up to the step.
    trainer.add_knapsack_listener(recorder)
    trainer.add_knapsack_listener(clock)
    trainer.add_callback(clock.callback)
    evaluator = EvalCallback(
        evaluate, eval_every, trainer.args.max_steps, f"{method:>8} seed {seed}", progress
    )
    evaluator.recorder = recorder
    trainer.add_callback(evaluator.callback)
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    if start_eval is not None:
        evaluator.evals.append({**start_eval, "step": 0.0, "rollouts_consumed": 0.0})
        evaluator.train_seconds.append(0.0)
    else:
        evaluator.run(trainer.model, 0)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return RunRecord(
        method=method,
        seed=seed,
        steps=recorder.steps,
        evals=evaluator.evals,
        allocation=recorder.allocation,
        wall_time_s=wall - evaluator.eval_seconds,
        extra={
            "eval_seconds": evaluator.eval_seconds,
            "train_seconds_with_eval": wall,
            # Times are not deterministic: they live here, beside the run's measurements.
            "step_seconds": clock.step_seconds(trainer.state.log_history),
            "eval_train_seconds": evaluator.train_seconds,
        },
    )


# --------------------------------------------------------------------------- the tiny world's warm-up


def sft_batch(tokenizer: Any, rows: Sequence[dict[str, str]]) -> tuple[Any, Any, Any]:
    """Left-padded ``prompt + answer + eos`` with the loss on the answer tokens only."""
    import torch

    ids, labels = [], []
    for row in rows:
        p = tokenizer(row["prompt"]).input_ids
        a = [*tokenizer(row["answer"]).input_ids, tokenizer.eos_token_id]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(x) for x in ids)
    x = torch.full((len(ids), width), tokenizer.pad_token_id)
    y = torch.full((len(ids), width), -100)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (a, b) in enumerate(zip(ids, labels)):
        x[i, width - len(a) :] = torch.tensor(a)
        y[i, width - len(b) :] = torch.tensor(b)
        mask[i, width - len(a) :] = 1
    return x, y, mask


def warm_up(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, str]],
    max_steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    probe: Callable[[Any], float] | None = None,
    target: float | None = None,
    check_every: int = 50,
) -> dict[str, Any]:
    """Supervised warm-up (AdamW, short linear warm-up, then constant); stops early at ``target``.

    Stopped while the policy is still unreliable, so GRPO starts with many prompts strictly between
    always-solved and always-failed. When the supervised phase ends varies a lot between seeds (the
    model learns addition in jumps), so with ``probe`` (mean success on problems outside every other
    split) it stops at the first check where the probe reaches ``target``: every seed starts GRPO
    from a comparable policy. Returns ``steps``, ``losses`` and the last ``probe`` value.
    """
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = 20
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    model.train()
    losses: list[float] = []
    probe_value = math.nan
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = tqdm(total=max_steps, desc="warm-up (supervised)", disable=not progress, dynamic_ncols=True)
        for step in range(1, max_steps + 1):
            x, y, mask = sft_batch(tokenizer, rng.sample(list(rows), min(batch_size, len(rows))))
            loss = model(input_ids=x, attention_mask=mask, labels=y).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            bar.update(1)
            if probe is not None and target is not None and step % check_every == 0:
                probe_value = probe(model)
                model.train()
                bar.set_postfix(loss=f"{losses[-1]:.3f}", probe=f"{probe_value:.2f}", refresh=False)
                if probe_value >= target:
                    break
        bar.close()
    model.eval()
    return {"steps": len(losses), "losses": losses, "probe": probe_value}


def warm_up_arithmetic(
    model: Any,
    tokenizer: Any,
    sft_rows: Sequence[dict[str, str]],
    probe_rows: Sequence[dict[str, str]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    target: float,
    seed: int,
    progress: bool = True,
    max_new_tokens: int = 8,
) -> dict[str, Any]:
    """The tiny world's warm-up: :func:`warm_up` until the probe rows' mean success (8 samples) reaches
    ``target``, so every seed starts GRPO from a comparable policy."""

    def probe(m: Any) -> float:
        rates = success_rates(
            m, tokenizer, probe_rows, [arithmetic_reward], k=8, max_new_tokens=max_new_tokens
        )
        return float(rates.mean())

    return warm_up(
        model,
        tokenizer,
        sft_rows,
        steps,
        batch_size,
        lr,
        seed,
        progress,
        probe=probe,
        target=target,
    )

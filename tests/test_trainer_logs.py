"""What a knapsack run writes down: the per-prompt mean reward, clean per-step logs, the allocation log.

Real short runs of the tiny model on prompts that come back (so from the second visit on the allocation
depends on history and group sizes vary): 4 prompts, one batch each epoch, or 8 prompts twice in one epoch
(for resuming, which stock TRL replays exactly only within an epoch).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from datasets import concatenate_datasets
from helpers import difficulty_reward
from transformers import TrainerCallback

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer, KnapsackRLOOConfig, KnapsackRLOOTrainer
from knapsack_trl.trainer.allocation_log import ALLOCATIONS_FILE, FINAL_STATE_FILE, read_allocations
from knapsack_trl.trainer.batch_metrics import PROMPT_MEAN_REWARD
from knapsack_trl.trainer.mixin import STATE_FILE

TRAINERS = {
    "grpo": (KnapsackGRPOTrainer, KnapsackGRPOConfig),
    "rloo": (KnapsackRLOOTrainer, KnapsackRLOOConfig),
}
# Fixed by the default config for the whole run (no schedules, posterior rule): logged at the first step only.
RUN_CONSTANTS = ("knapsack/n_max", "knapsack/exploration_share", "knapsack/fallback_rollouts")


@pytest.fixture
def four_prompts(train_dataset) -> Any:
    """1-, 2- and 3-digit sums (always, sometimes, never solved), each batch all four, distinct."""
    return train_dataset.select(range(4))


@pytest.fixture
def repeated_dataset(train_dataset) -> Any:
    base = train_dataset.select(range(8))
    return concatenate_datasets([base, base])  # 8 prompts twice: 4 steps of 4 prompts


def make_trainer(kind, tiny_model, tokenizer, dataset, tiny_args, reward, **overrides) -> Any:
    trainer_cls, config_cls = TRAINERS[kind]
    settings = dict(max_steps=4, knapsack_n_max=10)
    settings.update(overrides)
    return trainer_cls(
        model=tiny_model(),
        reward_funcs=reward,
        args=tiny_args(config_cls, **settings),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


class RewardRecorder:
    """The difficulty reward, keeping every (prompt, reward) it gave; batches cut where the listener says."""

    __name__ = "difficulty"

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.cuts: list[int] = [0]

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        rewards = difficulty_reward(prompts, completions)
        self.calls.extend(zip(prompts, rewards, strict=True))
        return rewards

    def batches(self) -> list[list[tuple[str, float]]]:
        return [self.calls[a:b] for a, b in zip(self.cuts, self.cuts[1:])]


def numpy_prompt_mean(batch: list[tuple[str, float]]) -> float:
    """Independent of the trainer's bookkeeping: group the reward calls by prompt text."""
    groups: dict[str, list[float]] = {}
    for prompt, reward in batch:
        groups.setdefault(prompt, []).append(reward)
    return float(np.mean([np.mean(g) for g in groups.values()]))


def step_logs(trainer: Any) -> list[dict[str, Any]]:
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize(
    "kind,mode,pilot",
    [
        ("grpo", "knapsack", 0),
        ("rloo", "knapsack", 0),
        ("grpo", "uniform", 0),
        ("rloo", "uniform", 0),
        ("grpo", "knapsack", 2),
    ],
)
def test_prompt_mean_reward_matches_numpy(
    kind, mode, pilot, tiny_model, tiny_tokenizer, four_prompts, tiny_args
) -> None:
    reward = RewardRecorder()
    trainer = make_trainer(
        kind,
        tiny_model,
        tiny_tokenizer,
        four_prompts,
        tiny_args,
        reward,
        knapsack_mode=mode,
        knapsack_pilot_rollouts=pilot,
    )
    sizes: list[list[int]] = []
    trainer.add_knapsack_listener(
        lambda event: (reward.cuts.append(len(reward.calls)), sizes.append(event.rollouts))
    )
    trainer.train()
    logs = step_logs(trainer)
    batches = reward.batches()
    assert len(logs) == len(batches) == 4
    if mode == "uniform":
        assert all(list(s) == [4, 4, 4, 4] for s in sizes)
    else:
        assert any(list(s) != [4, 4, 4, 4] for s in sizes)  # the two means differ only with unequal groups
    for log, batch in zip(logs, batches, strict=True):
        assert log[PROMPT_MEAN_REWARD] == pytest.approx(numpy_prompt_mean(batch), abs=1e-12)
        assert log["reward"] == pytest.approx(np.mean([r for _, r in batch]), abs=1e-6)
        if mode == "uniform":
            assert log[PROMPT_MEAN_REWARD] == log["reward"]  # equal groups: the same number, exactly
    if mode != "uniform":
        assert any(abs(log[PROMPT_MEAN_REWARD] - log["reward"]) > 1e-3 for log in logs)


def unscorable_second_batch() -> Any:
    """The difficulty reward, but None for every rollout of the second generation batch."""
    calls = []

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        calls.append(len(prompts))
        values = difficulty_reward(prompts, completions)
        return [None] * len(values) if len(calls) == 2 else values

    return reward


@pytest.mark.parametrize("estimator", ["history", "value_head"])
def test_step_logs_have_no_none_and_constants_once(
    estimator, tiny_model, tiny_tokenizer, repeated_dataset, tiny_args
) -> None:
    trainer = make_trainer(
        "grpo",
        tiny_model,
        tiny_tokenizer,
        repeated_dataset,
        tiny_args,
        unscorable_second_batch(),
        knapsack_value_estimator=estimator,
    )
    trainer.train()
    logs = step_logs(trainer)
    assert len(logs) == 4
    first, later = logs[0], logs[1:]
    for name in (*RUN_CONSTANTS, "knapsack/solver_optimal"):
        assert first[name] is not None
        assert all(name not in log for log in later)
    for log in logs:
        # TRL's own reward metrics are None for the wholly unscorable batch; none of ours is.
        assert not [k for k, v in log.items() if k.startswith("knapsack/") and v is None]
        assert "knapsack/informative_prompts" in log and "knapsack/rollouts_max" in log
    assert logs[1]["reward"] is None and PROMPT_MEAN_REWARD not in logs[1]
    if estimator == "value_head":
        assert "knapsack/value_head/brier" not in logs[1]  # nothing to score: not logged, not None
        assert all("knapsack/value_head/brier" in log for log in (logs[0], logs[2], logs[3]))
    nones = [k for log in logs[2:] for k, v in log.items() if v is None]
    assert not nones


def test_constants_with_schedules_stay_per_step(
    tiny_model, tiny_tokenizer, repeated_dataset, tiny_args
) -> None:
    """A scheduled n_max changes over the run, so it is logged at every step."""
    trainer = make_trainer(
        "grpo",
        tiny_model,
        tiny_tokenizer,
        repeated_dataset,
        tiny_args,
        difficulty_reward,
        knapsack_n_max_schedule="linear:10:6",
        knapsack_rule="buckets",
    )
    trainer.train()
    logs = step_logs(trainer)
    assert [log["knapsack/n_max"] for log in logs] == [10.0, 9.0, 8.0, 7.0]
    assert all("knapsack/fallback_rollouts" in log for log in logs)
    assert all("knapsack/exploration_share" not in log for log in logs[1:])


def event_record(event: Any) -> dict[str, Any]:
    """What the allocation log should hold for an event, rebuilt from the event alone."""
    bounds = np.cumsum(event.rollouts)
    starts = bounds - event.rollouts
    groups = [event.rewards[a:b].tolist() for a, b in zip(starts, bounds, strict=True)]
    return {
        "step": event.step,
        "prompt_ids": event.prompt_ids,
        "rollouts": event.rollouts.tolist(),
        "reward_mean": [float(np.mean(g)) if g else None for g in groups],
        "rewards": groups,
        "success_rate": event.allocation.success_rate.tolist(),
    }


@pytest.mark.parametrize("pilot", [0, 2], ids=["one-round", "pilot"])
def test_allocation_log_matches_events_and_final_state(
    pilot, tiny_model, tiny_tokenizer, repeated_dataset, tiny_args
) -> None:
    trainer = make_trainer(
        "grpo",
        tiny_model,
        tiny_tokenizer,
        repeated_dataset,
        tiny_args,
        difficulty_reward,
        knapsack_pilot_rollouts=pilot,
    )
    events = []
    trainer.add_knapsack_listener(events.append)
    trainer.train()
    lines = read_allocations(trainer.args.output_dir)
    assert lines == [event_record(e) for e in events]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert any(line["rollouts"] != [4, 4, 4, 4] for line in lines)
    with open(os.path.join(trainer.args.output_dir, FINAL_STATE_FILE)) as f:
        final = json.load(f)
    assert final == json.loads(json.dumps(trainer.knapsack_state_dict()))
    observed = sum(sum(line["rollouts"]) for line in lines)
    assert sum(p["total"] for p in final["allocator"]["tracker"]["prompts"].values()) == observed


class StopAfter(TrainerCallback):
    """Interrupts training after ``step`` optimizer steps (a crash after the checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resumed_run_continues_the_allocation_log(
    tiny_model, tiny_tokenizer, repeated_dataset, tiny_args, tmp_path
) -> None:
    def trainer_in(folder: str) -> Any:
        return make_trainer(
            "grpo",
            tiny_model,
            tiny_tokenizer,
            repeated_dataset,
            tiny_args,
            difficulty_reward,
            output_dir=str(tmp_path / folder),
            save_strategy="steps",
            save_steps=2,
        )

    full = trainer_in("full")
    full.train()
    interrupted = trainer_in("run")
    interrupted.add_callback(StopAfter(3))
    interrupted.train()
    assert [line["step"] for line in read_allocations(tmp_path / "run")] == [0, 1, 2]
    resumed = trainer_in("run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))

    lines = read_allocations(tmp_path / "run")
    assert [line["step"] for line in lines] == [0, 1, 2, 3]  # step 2 once: the resumed run's
    assert lines == read_allocations(tmp_path / "full")
    with open(tmp_path / "run" / FINAL_STATE_FILE) as f:
        final = json.load(f)
    with open(tmp_path / "full" / "checkpoint-4" / STATE_FILE) as f:
        assert final == json.load(f)


def test_allocation_log_can_be_turned_off(tiny_model, tiny_tokenizer, repeated_dataset, tiny_args) -> None:
    trainer = make_trainer(
        "grpo",
        tiny_model,
        tiny_tokenizer,
        repeated_dataset,
        tiny_args,
        difficulty_reward,
        max_steps=1,
        knapsack_log_allocations=False,
    )
    trainer.train()
    assert not os.path.exists(os.path.join(trainer.args.output_dir, ALLOCATIONS_FILE))
    assert not os.path.exists(os.path.join(trainer.args.output_dir, FINAL_STATE_FILE))

"""Checkpoint and resume: the tracker is saved with every checkpoint and a resumed run allocates as before.

The checkpoint sits inside the first epoch, with every prompt appearing twice in the dataset so the
allocation already depends on history. (Across an epoch boundary stock TRL's ``RepeatSampler`` does
not replay the same prompt order after a resume, so no trainer could match there; see docs/trainer.md.)
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from datasets import concatenate_datasets
from helpers import REWARDS

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer
from knapsack_trl.trainer.mixin import STATE_FILE

pytestmark = pytest.mark.slow


def make_trainer(
    tiny_model, tiny_tokenizer, dataset, tiny_args, output_dir: str, max_steps: int = 4, pilot: int = 0
) -> Any:
    args = tiny_args(
        KnapsackGRPOConfig,
        output_dir=output_dir,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=2,
        knapsack_n_max=10,
        knapsack_pilot_rollouts=pilot,
    )
    return KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )


@pytest.fixture
def twice_dataset(train_dataset) -> Any:
    base = train_dataset.select(range(8))
    return concatenate_datasets([base, base])  # 16 rows, 8 prompts: 4 steps per epoch


def read_state(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, STATE_FILE)) as f:
        return json.load(f)


@pytest.mark.parametrize("pilot", [0, 2], ids=["one-round", "pilot"])
def test_resumed_run_allocates_like_the_uninterrupted_run(
    tiny_model, tiny_tokenizer, twice_dataset, tiny_args, tmp_path, pilot
) -> None:
    full = make_trainer(
        tiny_model, tiny_tokenizer, twice_dataset, tiny_args, str(tmp_path / "full"), pilot=pilot
    )
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert read_state(str(checkpoint))["allocator"]["tracker"]["prompts"]  # history was written

    resumed = make_trainer(
        tiny_model, tiny_tokenizer, twice_dataset, tiny_args, str(tmp_path / "resumed"), pilot=pilot
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))

    full_history = {h["step"]: h for h in full.knapsack_history}
    resumed_history = list(resumed.knapsack_history)
    assert [h["step"] for h in resumed_history] == [2, 3]
    for h in resumed_history:
        assert h["prompt_ids"] == full_history[h["step"]]["prompt_ids"]
        assert h["rollouts"] == full_history[h["step"]]["rollouts"]
    assert any(h["rollouts"] != [4, 4, 4, 4] for h in resumed_history)  # history-dependent allocations

    final_full = read_state(str(tmp_path / "full" / "checkpoint-4"))
    final_resumed = read_state(str(tmp_path / "resumed" / "checkpoint-4"))
    assert final_resumed == final_full
    assert resumed.knapsack_allocator.tracker.to_json() == full.knapsack_allocator.tracker.to_json()

    next_batch = sorted(set(twice_dataset["prompt_id"]))
    expected = full.knapsack_allocator.allocate(next_batch, 32, step=4)
    got = resumed.knapsack_allocator.allocate(next_batch, 32, step=4)
    assert np.array_equal(got.rollouts_per_prompt, expected.rollouts_per_prompt)
    assert not np.all(expected.rollouts_per_prompt == 4)


def test_resume_without_saved_state_starts_from_scratch(
    tiny_model, tiny_tokenizer, twice_dataset, tiny_args, tmp_path
) -> None:
    """The control: drop the saved tracker and the resumed allocation is no longer the same."""
    full = make_trainer(
        tiny_model, tiny_tokenizer, twice_dataset, tiny_args, str(tmp_path / "full"), max_steps=3
    )
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    os.remove(checkpoint / STATE_FILE)
    resumed = make_trainer(
        tiny_model, tiny_tokenizer, twice_dataset, tiny_args, str(tmp_path / "r"), max_steps=3
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    step2_full = next(h for h in full.knapsack_history if h["step"] == 2)
    step2_resumed = next(h for h in resumed.knapsack_history if h["step"] == 2)
    assert step2_resumed["prompt_ids"] == step2_full["prompt_ids"]
    assert step2_resumed["rollouts"] == [4, 4, 4, 4] != step2_full["rollouts"]


def test_resumed_candidate_run_chooses_like_the_uninterrupted_run(
    tiny_model, tiny_tokenizer, twice_dataset, tiny_args, tmp_path
) -> None:
    """With candidates (c = 2: 8 candidates for 16 rollouts) the resumed run offers the same candidates,
    skips the same ones and ends with the same tracker."""

    def make(folder: str) -> Any:
        args = tiny_args(
            KnapsackGRPOConfig,
            output_dir=folder,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            knapsack_n_max=10,
            knapsack_candidate_factor=2,
        )
        return KnapsackGRPOTrainer(
            model=tiny_model(),
            reward_funcs=REWARDS["difficulty"],
            args=args,
            train_dataset=twice_dataset,
            processing_class=tiny_tokenizer,
        )

    full = make(str(tmp_path / "full"))
    full.train()
    resumed = make(str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    full_history = {h["step"]: h for h in full.knapsack_history}
    resumed_history = list(resumed.knapsack_history)
    assert [h["step"] for h in resumed_history] == [2, 3]
    for h in resumed_history:
        assert len(h["prompt_ids"]) == 8
        assert h["prompt_ids"] == full_history[h["step"]]["prompt_ids"]
        assert h["rollouts"] == full_history[h["step"]]["rollouts"]
    assert any(0 in h["rollouts"] for h in resumed_history)  # candidates were skipped
    assert resumed.knapsack_allocator.tracker.to_json() == full.knapsack_allocator.tracker.to_json()

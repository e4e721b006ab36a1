"""The value head inside the trainer: it scores unseen prompts, trains online, and survives a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import REWARDS

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer
from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.state import CHECKPOINT_STATE_VERSION
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.trainer.value_head import VALUE_HEAD_FILENAME

pytestmark = pytest.mark.slow


def make_trainer(tiny_model, tiny_tokenizer, dataset, tiny_args, **overrides):
    args = tiny_args(KnapsackGRPOConfig, knapsack_n_max=10, **overrides)
    return KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )


def test_unknown_estimator_is_refused(tiny_args):
    with pytest.raises(ValueError, match="knapsack_value_estimator"):
        tiny_args(KnapsackGRPOConfig, knapsack_value_estimator="oracle")


def test_blend_feeds_head_predictions_to_the_allocator(tiny_model, tiny_tokenizer, train_dataset, tiny_args):
    trainer = make_trainer(
        tiny_model, tiny_tokenizer, train_dataset, tiny_args, max_steps=3, knapsack_value_estimator="blend"
    )
    priors = []
    allocate = trainer.knapsack_allocator.allocate

    def spy(prompt_ids, budget, **kwargs):
        priors.append(kwargs.get("prior_success_rate"))
        return allocate(prompt_ids, budget, **kwargs)

    trainer.knapsack_allocator.allocate = spy
    trainer.train()
    assert trainer.knapsack_value_head.num_updates == 3
    assert priors[0] is None  # an untrained head gives no prior
    for prior in priors[1:]:  # afterwards every prompt of the batch has the head's p as its prior
        assert prior is not None and prior.shape == (4,)
        assert np.all((prior > 0) & (prior < 1))
    logged = [h for h in trainer.state.log_history if "knapsack/value_head/brier" in h]
    assert len(logged) == 3
    assert all(0.0 <= h["knapsack/value_head/brier"] <= 1.0 for h in logged)


def test_history_mode_builds_no_head(tiny_model, tiny_tokenizer, train_dataset, tiny_args):
    trainer = make_trainer(tiny_model, tiny_tokenizer, train_dataset, tiny_args)
    assert trainer.knapsack_value_head is None


def test_resumed_run_ends_with_the_uninterrupted_runs_head(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, tmp_path
):
    common = dict(knapsack_value_estimator="blend", save_strategy="steps", save_steps=2, max_steps=4)
    full = make_trainer(
        tiny_model, tiny_tokenizer, train_dataset, tiny_args, output_dir=str(tmp_path / "a"), **common
    )
    full.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert (checkpoint / VALUE_HEAD_FILENAME).exists()

    resumed = make_trainer(
        tiny_model, tiny_tokenizer, train_dataset, tiny_args, output_dir=str(tmp_path / "b"), **common
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.knapsack_value_head.num_updates == full.knapsack_value_head.num_updates == 4
    assert resumed.knapsack_value_head.fingerprint() == full.knapsack_value_head.fingerprint()
    assert [h["rollouts"] for h in resumed.knapsack_history] == [
        h["rollouts"] for h in full.knapsack_history
    ][2:]
    features = torch.randn(5, full.knapsack_value_head.input_dim)
    np.testing.assert_array_equal(
        resumed.knapsack_value_head.predict(features), full.knapsack_value_head.predict(features)
    )


def graded_reward(completions, **kwargs):
    """0.7 for an odd-length completion, else 0: a success at threshold 0.5, a failure at 0.9."""
    return [0.7 * (len(c) % 2) for c in completions]


def test_resumed_value_head_learns_with_the_trackers_threshold(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
):
    """On resume the tracker keeps the threshold its history was recorded with; the value head must learn
    successes counted with that one, not with a config that now says otherwise."""
    args = tiny_args(
        KnapsackGRPOConfig, max_steps=1, knapsack_value_estimator="blend", knapsack_success_threshold=0.9
    )
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=graded_reward,
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    saved = KnapsackRolloutAllocator(
        trainer.knapsack_allocator.config, SuccessRateTracker(success_threshold=0.5)
    )
    with pytest.warns(UserWarning, match="success_threshold=0.5"):
        trainer.load_knapsack_state_dict(
            {"version": CHECKPOINT_STATE_VERSION, "allocator": saved.state_dict()}
        )
    events = []
    trainer.add_knapsack_listener(events.append)
    trainer.train()
    rewards = events[0].rewards
    assert 0 < np.mean(rewards > 0.5) < 1
    logged = next(h for h in trainer.state.log_history if "knapsack/value_head/mean_obs" in h)
    assert logged["knapsack/value_head/mean_obs"] == pytest.approx(float(np.mean(rewards > 0.5)))

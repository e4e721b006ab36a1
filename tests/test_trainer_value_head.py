"""The value head inside the trainer: it scores unseen prompts, trains online, and survives a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REWARDS

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer
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

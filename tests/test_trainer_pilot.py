"""The pilot round inside the trainers: stock when the pilot is the whole group, a numpy reference for
random second rounds, one output batch of stock shapes, and config-time errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    REWARDS,
    assert_same_run,
    inject_random_second_rounds,
    mock_vllm_server,
    numpy_grpo,
    numpy_rloo,
    record_lasts,
    record_reward_calls,
    reversed_reward,
)
from transformers import TrainingArguments
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer, KnapsackRLOOConfig, KnapsackRLOOTrainer
from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.state import CHECKPOINT_STATE_VERSION
from knapsack_trl.core.tracker import SuccessRateTracker

pytestmark = pytest.mark.slow

WEIGHTS = np.array([1.0, 0.5])


def aggregate(rpf: np.ndarray) -> np.ndarray:
    """TRL's weighted sum, NaN where every reward function abstained."""
    total = np.nansum(rpf * WEIGHTS, axis=1)
    return np.where(np.isnan(rpf).all(axis=1), np.nan, total)


# --------------------------------------------------------------------------- the pilot is the whole group
def test_whole_group_pilot_is_stock_grpo(run_pair, rewards) -> None:
    with pytest.warns(UserWarning, match="the pilot round takes the whole budget"):  # and is stock GRPO
        stock, knap = run_pair(
            GRPOTrainer,
            GRPOConfig,
            KnapsackGRPOTrainer,
            KnapsackGRPOConfig,
            [rewards["parity"], rewards["sparse"], rewards["sparser"]],
            reward_weights=[1.0, 0.5, 2.0],
            beta=0.05,
            knapsack_pilot_rollouts=4,
        )
    assert_same_run(stock, knap)
    logged = [h for h in knap[0].state.log_history if "loss" in h]
    stock_logged = [h for h in stock[0].state.log_history if "loss" in h]
    for ours, theirs in zip(logged, stock_logged, strict=True):
        assert ours["reward"] == theirs["reward"] and ours["reward_std"] == theirs["reward_std"]
        assert ours["frac_reward_zero_std"] == theirs["frac_reward_zero_std"]
        assert ours["knapsack/second_round_rollouts"] == 0.0


def test_whole_group_pilot_is_stock_rloo(run_pair, rewards) -> None:
    with pytest.warns(UserWarning, match="the pilot round takes the whole budget"):  # and is stock RLOO
        stock, knap = run_pair(
            RLOOTrainer,
            RLOOConfig,
            KnapsackRLOOTrainer,
            KnapsackRLOOConfig,
            [rewards["parity"], rewards["sparse"]],
            reward_weights=[1.0, 0.5],
            beta=0.05,
            normalize_advantages=True,
            knapsack_pilot_rollouts=4,
        )
    assert_same_run(stock, knap)


# --------------------------------------------------------------------------- random second rounds
def check_rounds(calls, drawn, lasts, outputs, pilot: int, prompt_of: dict[str, str]) -> list[np.ndarray]:
    """What every trainer must do with a pilot, checked from the reward calls alone; returns, per batch,
    the final canonical reward matrix rebuilt independently."""
    assert len(calls) == 2 * len(drawn) == 2 * len(lasts) == 2 * len(outputs)
    rebuilt = []
    for k, (draw, last, output) in enumerate(zip(drawn, lasts, outputs, strict=True)):
        first, second = calls[2 * k], calls[2 * k + 1]
        prompts = [prompt_of[pid] for pid in last["prompt_ids"]]
        assert first["prompts"] == [p for p in prompts for _ in range(pilot)]
        assert second["prompts"] == [p for p, n in zip(prompts, draw["extra"], strict=True) for _ in range(n)]
        # the decision saw the pilot's own outcomes
        pilot_r = aggregate(first["rewards_per_func"]).reshape(len(prompts), pilot)
        np.testing.assert_array_equal(draw["scored"], (~np.isnan(pilot_r)).sum(axis=1))
        np.testing.assert_array_equal(
            draw["successes"], (np.nan_to_num(pilot_r, nan=-np.inf) > 0.5).sum(axis=1)
        )
        # final groups: each prompt's pilot rows, then its second-round rows
        sizes = pilot + draw["extra"]
        assert last["rollouts"] == sizes.tolist()
        ends = np.cumsum(draw["extra"])
        parts = []
        for i in range(len(prompts)):
            parts.append(first["rewards_per_func"][i * pilot : (i + 1) * pilot])
            parts.append(second["rewards_per_func"][ends[i] - draw["extra"][i] : ends[i]])
        canonical = np.concatenate(parts)
        np.testing.assert_array_equal(last["rewards_per_func"].numpy().astype(np.float64), canonical)
        rebuilt.append(canonical)
        # one output batch: the pilot's rows, then the second round's, padded as TRL pads
        ids = first["completion_ids"] + second["completion_ids"]
        assert output["completion_ids"].shape[0] == len(ids) == 16
        for row, expected in enumerate(ids):
            mask = output["completion_mask"][row]
            width = int(mask.sum())
            assert mask[:width].all() and not mask[width:].any()
            assert output["completion_ids"][row][:width].tolist() == expected
            prompt_mask = output["prompt_mask"][row]
            assert prompt_mask[prompt_mask.numel() - int(prompt_mask.sum()) :].all()
        assert torch.equal(output["advantages"], last["global_advantages"])
    return rebuilt


@pytest.mark.parametrize("pilot", [1, 2])
def test_random_second_rounds_match_numpy_grpo(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, recorder, pilot
) -> None:
    args = tiny_args(
        KnapsackGRPOConfig,
        max_steps=3,
        beta=0.05,
        reward_weights=WEIGHTS.tolist(),
        knapsack_n_min=0,
        knapsack_pilot_rollouts=pilot,
    )
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=[REWARDS["parity"], REWARDS["sparse"]],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    drawn = inject_random_second_rounds(trainer, seed=3 + pilot)
    calls = record_reward_calls(trainer)
    lasts = record_lasts(trainer)
    outputs = recorder(trainer)
    trainer.train()

    assert any((d["extra"] == 0).any() for d in drawn)  # prompts left at their pilot are exercised
    prompt_of = {row["prompt_id"]: row["prompt"] for row in train_dataset}
    rebuilt = check_rounds(calls, drawn, lasts, outputs, pilot, prompt_of)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for canonical, draw, last, output, log in zip(rebuilt, drawn, lasts, outputs, logged, strict=True):
        sizes = (pilot + draw["extra"]).tolist()
        expected = numpy_grpo(canonical, sizes, WEIGHTS, "group", "sum_then_normalize")
        np.testing.assert_allclose(last["advantages"].numpy(), expected, rtol=1e-4, atol=1e-4)
        assert "ref_per_token_logps" in output  # beta > 0: the reference's log-probs joined too
        assert output["num_items_in_batch"] == output["completion_mask"].sum()
        assert log["reward"] == pytest.approx(float(np.nanmean(aggregate(canonical))), rel=1e-6)
        assert log["knapsack/second_round_rollouts"] == 16 - 4 * pilot
        assert log["knapsack/pilot_seconds"] > 0 and log["knapsack/second_round_seconds"] > 0


def test_random_second_rounds_match_numpy_rloo(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, recorder
) -> None:
    clip = (-0.5, 1.0)
    args = tiny_args(
        KnapsackRLOOConfig,
        max_steps=3,
        beta=0.05,
        normalize_advantages=True,
        reward_clip_range=clip,
        reward_weights=WEIGHTS.tolist(),
        knapsack_n_min=0,
        knapsack_pilot_rollouts=1,
    )
    trainer = KnapsackRLOOTrainer(
        model=tiny_model(),
        reward_funcs=[REWARDS["parity"], REWARDS["sparse"]],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    drawn = inject_random_second_rounds(trainer, seed=5)
    calls = record_reward_calls(trainer)
    lasts = record_lasts(trainer)
    outputs = recorder(trainer)
    trainer.train()

    prompt_of = {row["prompt_id"]: row["prompt"] for row in train_dataset}
    rebuilt = check_rounds(calls, drawn, lasts, outputs, 1, prompt_of)
    for canonical, draw, last in zip(rebuilt, drawn, lasts, strict=True):
        kl = last["kl"].numpy().astype(np.float64)
        expected = numpy_rloo(canonical, (1 + draw["extra"]).tolist(), WEIGHTS, kl, 0.05, clip, True)
        np.testing.assert_allclose(last["advantages"].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert np.abs(lasts[-1]["kl"].numpy()).sum() > 0


def test_pilot_with_vllm_server_and_importance_sampling(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, recorder
) -> None:
    """A MOCK vLLM server (none can run here): each round asks for one completion per row, and the
    importance-sampling fields of both rounds join into one batch."""
    args = tiny_args(KnapsackGRPOConfig, max_steps=2, knapsack_pilot_rollouts=1)
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=reversed_reward,
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    client = mock_vllm_server(trainer, tiny_tokenizer, importance_sampling=True)
    outputs = recorder(trainer)
    trainer.train()
    assert [len(c.kwargs["prompts"]) for c in client.generate.call_args_list] == [4, 12, 4, 12]
    assert all(c.kwargs["n"] == 1 for c in client.generate.call_args_list)
    assert all(h["reward"] == 1.0 for h in trainer.state.log_history if "loss" in h)
    for output in outputs:
        width = output["completion_ids"].shape[1]
        for key in ("sampling_per_token_logps", "importance_sampling_ratio", "old_per_token_logps"):
            assert output[key].shape[0] == 16 and output[key].shape[1] in (1, width), key
            assert torch.isfinite(output[key]).all(), key


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "grpo"},
        {"loss_type": "bnpo"},
        {"loss_type": "dapo", "num_iterations": 2},
        {"loss_type": "dr_grpo", "beta": 0.05},
        {"loss_type": "cispo"},
        {"loss_type": "sapo"},
        {"loss_type": "luspo", "importance_sampling_level": "sequence"},
        {"loss_type": "vespo"},
        {"steps_per_generation": 4, "gradient_accumulation_steps": 2},
        {"mask_truncated_completions": True, "top_entropy_quantile": 0.5, "log_completions": True},
        {"lora": True, "beta": 0.04},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_pilot_feature_matrix(
    tiny_dir, tiny_model, tiny_tokenizer, train_dataset, tiny_args, overrides
) -> None:
    """TRL's features on the joined batch: the final groups are pilot + second round, the loss is finite,
    and TRL's completion log lines up with the batch's advantages."""
    fields = dict(overrides)
    peft_config = None
    if fields.pop("lora", False):
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    args = tiny_args(KnapsackGRPOConfig, max_steps=4, knapsack_pilot_rollouts=2, knapsack_n_min=0, **fields)
    trainer = KnapsackGRPOTrainer(
        model=tiny_dir if peft_config else tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=train_dataset.select(range(8)),
        processing_class=tiny_tokenizer,
        peft_config=peft_config,
    )
    drawn = inject_random_second_rounds(trainer, seed=1)
    lasts = record_lasts(trainer)
    trainer.train()
    assert trainer.state.global_step == 4
    budget = trainer.args.generation_batch_size
    assert len(drawn) == len(trainer.knapsack_history) > 0
    for draw, record in zip(drawn, trainer.knapsack_history, strict=True):
        assert record["rollouts"] == (2 + draw["extra"]).tolist() and sum(record["rollouts"]) == budget
    assert all(np.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    assert list(trainer._logs["advantages"]) == lasts[-1]["global_advantages"].tolist()
    assert len(trainer._logs["prompt"]) == budget


# --------------------------------------------------------------------------- config-time errors
@pytest.mark.parametrize(
    "fields,match",
    [
        (
            {"knapsack_pilot_rollouts": 5},
            r"knapsack_pilot_rollouts=5 x 4 prompts = 20 > generation_batch_size=16",
        ),
        ({"knapsack_pilot_rollouts": -1}, r"knapsack_pilot_rollouts=-1 must be an integer >= 1"),
        ({"knapsack_pilot_rollouts": 5, "knapsack_n_max": 4}, r"knapsack_pilot_rollouts=5"),
        (
            {"knapsack_pilot_rollouts": 2, "knapsack_token_cost": True},
            r"knapsack_token_cost=True does not combine with a pilot round",
        ),
        (
            {
                "knapsack_pilot_rollouts": 2,
                "knapsack_rule": "buckets",
                "knapsack_exploration_schedule": "linear:0.2:0",
            },
            r"knapsack_exploration_schedule=.*Unset the schedule or the pilot \(knapsack_pilot_rollouts=0\)",
        ),
    ],
)
def test_bad_pilot_settings_fail_at_config_time(tmp_path, fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KnapsackGRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            num_generations=4,
            **fields,
        )


def test_pilot_that_does_not_split_over_processes_fails_at_config_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match=r"do not split evenly over 2 processes"):
        KnapsackGRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=16,
            num_generations=32,  # 2 x 16 rows = 32 per batch: one prompt, one pilot rollout
            knapsack_pilot_rollouts=1,
            knapsack_candidate_factor=1,  # (4 candidates would split: the default's factor is checked apart)
        )


# --------------------------------------------------------------------------- defects found by the seam review
def graded_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """0.7 for an odd-length completion, else 0: a success at threshold 0.5, a failure at 0.9."""
    return [0.7 * (len(c) % 2) for c in completions]


def test_resumed_pilot_counts_successes_with_the_trackers_threshold(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    """On resume the tracker keeps the threshold its history was recorded with; the pilot's decision must
    count successes with that one, not with a config that now says otherwise."""
    args = tiny_args(
        KnapsackGRPOConfig, max_steps=1, knapsack_pilot_rollouts=2, knapsack_success_threshold=0.9
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
    calls = record_reward_calls(trainer)
    events: list[Any] = []
    trainer.add_knapsack_listener(events.append)
    trainer.train()
    pilot_rows = np.asarray([r[0] for r in calls[0]["rewards_per_func"]])  # the pilot round, 2 rows a prompt
    prompts = calls[0]["prompts"]
    second = events[0].allocation
    expected = []
    for pid in events[0].prompt_ids:
        rows = [
            r for p, r in zip(prompts, pilot_rows, strict=True) if train_prompt_id(p, train_dataset) == pid
        ]
        wins = sum(r > 0.5 for r in rows)
        expected.append(0 < wins < len(rows))
    assert any(expected), "the reward should mix some pilots at threshold 0.5"
    assert second.pilot_mixed.tolist() == expected


def train_prompt_id(prompt: Any, dataset: Any) -> str:
    return next(row["prompt_id"] for row in dataset if row["prompt"] == prompt)

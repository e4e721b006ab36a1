"""KnapsackGRPOTrainer against the stock GRPOTrainer, a numpy reference, and TRL's feature matrix."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import (
    REWARDS,
    FakeAllocation,
    assert_same_run,
    give_allocations,
    inject_random_allocations,
    mock_vllm_server,
    numpy_grpo,
    record_allocations,
    record_lasts,
    reversed_reward,
)
from trl import GRPOConfig, GRPOTrainer

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer
from knapsack_trl.trainer.config import SKIP_VERSION_CHECK_ENV, check_trl_version

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- contract with stock GRPO
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_uniform_allocation_equals_stock_grpo(
    run_pair, rewards, scale_rewards: str, aggregation: str
) -> None:
    stock, knap = run_pair(
        GRPOTrainer,
        GRPOConfig,
        KnapsackGRPOTrainer,
        KnapsackGRPOConfig,
        [rewards["parity"], rewards["sparse"], rewards["sparser"]],
        scale_rewards=scale_rewards,
        multi_objective_aggregation=aggregation,
        reward_weights=[1.0, 0.5, 2.0],
        knapsack_mode="uniform",
    )
    assert_same_run(stock, knap)
    trainer = knap[0]
    assert [h["rollouts"] for h in trainer.knapsack_history] == [[4, 4, 4, 4]] * 2
    logged = [h for h in trainer.state.log_history if "loss" in h]
    stock_logged = [h for h in stock[0].state.log_history if "loss" in h]
    for ours, theirs in zip(logged, stock_logged, strict=True):
        assert ours["frac_reward_zero_std"] == theirs["frac_reward_zero_std"]
        assert ours["reward"] == theirs["reward"]
        assert "knapsack/informative_prompts" in ours
        assert ours["knapsack/informative_prompts_share"] == pytest.approx(1 - theirs["frac_reward_zero_std"])


def test_disabled_is_exactly_stock_grpo(run_pair, rewards) -> None:
    stock, knap = run_pair(
        GRPOTrainer,
        GRPOConfig,
        KnapsackGRPOTrainer,
        KnapsackGRPOConfig,
        [rewards["parity"]],
        knapsack_enabled=False,
    )
    assert_same_run(stock, knap)
    assert not any(k.startswith("knapsack/") for h in knap[0].state.log_history for k in h)
    assert knap[0].knapsack_allocator is None


# --------------------------------------------------------------------------- variable groups
@pytest.mark.parametrize(
    "scale_rewards,aggregation,weighting",
    [
        ("group", "sum_then_normalize", "rollout"),
        ("batch", "sum_then_normalize", "prompt"),
        ("none", "normalize_then_sum", "rollout"),
    ],
)
def test_random_allocations_match_numpy_reference(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, recorder, scale_rewards, aggregation, weighting
) -> None:
    seen_prompts: list[str] = []

    def recording_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        seen_prompts.extend(prompts)
        return REWARDS["parity"](completions)

    args = tiny_args(
        KnapsackGRPOConfig,
        max_steps=3,
        scale_rewards=scale_rewards,
        multi_objective_aggregation=aggregation,
        knapsack_prompt_weighting=weighting,
        knapsack_n_min=0,
    )
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=[recording_reward, REWARDS["sparse"]],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    drawn = inject_random_allocations(trainer, seed=7)
    lasts = record_lasts(trainer)
    outputs = recorder(trainer)
    trainer.train()

    assert len(drawn) == len(lasts) == len(outputs) == 3
    assert any((sizes <= 1).any() for sizes in drawn)  # groups of 0 and 1 are exercised
    prompt_of = {row["prompt_id"]: row["prompt"] for row in train_dataset}
    for k, (sizes, last, output) in enumerate(zip(drawn, lasts, outputs, strict=True)):
        assert last["rollouts"] == sizes.tolist()
        expanded = [
            prompt_of[pid] for pid, n in zip(last["prompt_ids"], sizes, strict=True) for _ in range(n)
        ]
        assert (
            seen_prompts[16 * k : 16 * (k + 1)] == expanded
        )  # each completion scored against its own prompt
        expected = numpy_grpo(
            last["rewards_per_func"].numpy(), sizes.tolist(), np.ones(2), scale_rewards, aggregation
        )
        if weighting == "prompt":
            expected = expected * np.repeat(4.0 / np.maximum(sizes, 1), sizes)
        np.testing.assert_allclose(last["advantages"].numpy(), expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(output["advantages"], last["global_advantages"])


@pytest.mark.parametrize("rule", ["buckets", "posterior"])
def test_knapsack_allocation_moves_budget_to_mixed_prompts(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, rule
) -> None:
    dataset = train_dataset.select(range(8))  # 2 batches per epoch: history from step 2 on
    fields = {"knapsack_fallback": False, "knapsack_value_function": "knapsack"} if rule == "buckets" else {}
    args = tiny_args(KnapsackGRPOConfig, max_steps=6, knapsack_n_max=10, knapsack_rule=rule, **fields)
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    allocations = record_allocations(trainer)
    trainer.train()
    history = list(trainer.knapsack_history)
    assert [h["step"] for h in history] == list(range(6))
    assert [h["rollouts"] for h in history] == [a.rollouts_per_prompt.tolist() for a in allocations]
    assert all(sum(h["rollouts"]) == 16 for h in history)
    assert all(h["rollouts"] == [4, 4, 4, 4] for h in history[:2])  # nothing seen yet: uniform
    assert any(h["rollouts"] != [4, 4, 4, 4] for h in history[2:])
    digits = {pid: len(pid.split(":")[1].split("+")[0]) for pid in dataset["prompt_id"]}
    for h, allocation in zip(history[2:], allocations[2:], strict=True):
        buckets = allocation.bucket.tolist()
        for pid, n, bucket in zip(h["prompt_ids"], h["rollouts"], buckets, strict=True):
            if digits[pid] == 1:  # always solved: the fixed budget, or below uniform on its posterior
                assert bucket == "one" and (n == 2 if rule == "buckets" else n < 4)
            if digits[pid] == 3:  # never solved
                assert bucket == "zero"
        mixed = [n for n, b in zip(h["rollouts"], buckets, strict=True) if b == "mixed"]
        if mixed and len(mixed) < len(buckets):
            assert np.mean(mixed) > 4
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for key in (
        "knapsack/informative_prompts",
        "knapsack/informative_prompts_share",
        "knapsack/informative_prompts_expected",
        "knapsack/informative_prompts_uniform_expected",
        "knapsack/effective_ratio_rollouts",
        "knapsack/rollouts_min",
        "knapsack/rollouts_max",
        "knapsack/prompts_mixed",
        "knapsack/solver_seconds",
    ):
        assert key in logged[-1], key
    for key in (
        "knapsack/fallback_rollouts",
        "knapsack/solver_optimal",
    ):  # at the first step (docs/trainer.md)
        assert key in logged[0] and (key not in logged[-1] or rule == "buckets"), key
    assert logged[-1]["knapsack/rollouts_max"] > 4
    state = trainer.knapsack_allocator.tracker.state_dict()["prompts"]
    assert set(state) == set(dataset["prompt_id"])


# --------------------------------------------------------------------------- TRL's feature matrix
@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "grpo"},
        {"loss_type": "bnpo"},
        {"loss_type": "dr_grpo"},
        {"loss_type": "dapo", "num_iterations": 2},
        {"loss_type": "cispo"},
        {"loss_type": "sapo"},
        {"loss_type": "luspo", "importance_sampling_level": "sequence"},
        {"loss_type": "vespo"},
        {"steps_per_generation": 4, "gradient_accumulation_steps": 2},
        {"mask_truncated_completions": True, "top_entropy_quantile": 0.5, "log_completions": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_feature_matrix_trains(tiny_model, tiny_tokenizer, train_dataset, tiny_args, overrides) -> None:
    args = tiny_args(KnapsackGRPOConfig, max_steps=4, **overrides)
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=train_dataset.select(range(8)),
        processing_class=tiny_tokenizer,
    )
    give_allocations(trainer, lambda ids, budget, step: FakeAllocation(np.tile([7, 2, 5, 2], len(ids) // 4)))
    trainer.train()
    assert trainer.state.global_step == 4
    groups = trainer.args.generation_batch_size // 16
    assert all(h["rollouts"] == [7, 2, 5, 2] * groups for h in trainer.knapsack_history)
    assert all(np.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_lora_with_kl_runs_offline(tiny_dir, tiny_tokenizer, train_dataset, tiny_args) -> None:
    from peft import LoraConfig

    args = tiny_args(KnapsackGRPOConfig, beta=0.04, learning_rate=1e-2)
    trainer = KnapsackGRPOTrainer(
        model=tiny_dir,
        reward_funcs=REWARDS["parity"],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all("kl" in h for h in logged)
    assert len(trainer.knapsack_history) == 2


def test_reference_model_reloads_from_local_folder(
    tiny_dir, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    args = tiny_args(KnapsackGRPOConfig, beta=0.04, max_steps=1)
    trainer = KnapsackGRPOTrainer(
        model=tiny_dir,
        reward_funcs=REWARDS["parity"],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    assert trainer.ref_model is not None
    trainer.train()
    assert "kl" in trainer.state.log_history[0]


def test_evaluation_stays_stock(tiny_model, tiny_tokenizer, train_dataset, tiny_args) -> None:
    args = tiny_args(KnapsackGRPOConfig, per_device_eval_batch_size=8, eval_strategy="no")
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["parity"],
        args=args,
        train_dataset=train_dataset,
        eval_dataset=train_dataset.select(range(4)),
        processing_class=tiny_tokenizer,
    )
    metrics = trainer.evaluate()
    assert "eval_reward" in metrics
    assert len(trainer.knapsack_history) == 0


# --------------------------------------------------------------------------- vLLM server mode (mocked)
def test_vllm_server_mode_gets_one_completion_per_row(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    args = tiny_args(KnapsackGRPOConfig, max_steps=2)
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=reversed_reward,
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    client = mock_vllm_server(trainer, tiny_tokenizer)
    give_allocations(trainer, lambda ids, budget, step: FakeAllocation([7, 2, 5, 2]))
    trainer.train()
    assert client.generate.call_count == 2
    for call in client.generate.call_args_list:
        assert call.kwargs["n"] == 1 and len(call.kwargs["prompts"]) == 16
    assert all(h["reward"] == 1.0 for h in trainer.state.log_history if "loss" in h)


# --------------------------------------------------------------------------- start-up errors
def test_impossible_budgets_fail_at_config_time(tmp_path) -> None:
    common = dict(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=8, num_generations=4
    )
    with pytest.raises(ValueError, match="knapsack_n_min=5"):
        KnapsackGRPOConfig(
            **common, knapsack_n_min=5, knapsack_zero_success_budget=5, knapsack_full_success_budget=5
        )
    with pytest.raises(ValueError, match="knapsack_n_max=3"):
        KnapsackGRPOConfig(**common, knapsack_n_max=3)
    with pytest.raises(ValueError, match="knapsack_n_max_schedule"):
        KnapsackGRPOConfig(**common, knapsack_n_max_schedule="linear:16:2:100")
    with pytest.raises(ValueError, match="knapsack_mode"):
        KnapsackGRPOConfig(**common, knapsack_mode="greedy")
    with pytest.raises(ValueError, match="knapsack_solver"):
        KnapsackGRPOConfig(**common, knapsack_solver="simplex")
    assert KnapsackGRPOConfig(**common, knapsack_enabled=False, knapsack_n_min=5).knapsack_enabled is False
    with pytest.raises(
        ValueError, match=r"knapsack_fallback_confidence=0.0 must lie strictly between 0 and 1"
    ):
        KnapsackGRPOConfig(**common, knapsack_fallback_confidence=0.0)
    with pytest.raises(ValueError, match="knapsack_min_observations=0"):
        KnapsackGRPOConfig(**common, knapsack_min_observations=0)
    with pytest.raises(
        ValueError, match=r"knapsack_preset='reference' sets knapsack_value_estimator='history'"
    ):
        KnapsackGRPOConfig(**common, knapsack_preset="reference", knapsack_value_estimator="blend")
    with pytest.raises(ValueError, match="knapsack_preset='paper' is not known"):
        KnapsackGRPOConfig(**common, knapsack_preset="paper")


def test_reference_preset_builds_the_core_preset(tmp_path) -> None:
    from knapsack_trl.core.presets import PRESETS

    args = KnapsackGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        knapsack_preset="reference",
        knapsack_n_max=32,
    )
    allocator, tracker = args.knapsack_allocator_config(), args.knapsack_tracker()
    for name, value in PRESETS["reference"].allocator.items():
        assert getattr(allocator, name) == value, name
    for name, value in PRESETS["reference"].tracker.items():
        assert tracker.config()[name] == value, name
    assert allocator.n_max == 32 and allocator.fallback and allocator.fallback_confidence == 0.9


def test_dataset_without_prompt_id_or_text_fails_at_start(tiny_model, tiny_tokenizer, tiny_args) -> None:
    dataset = Dataset.from_list([{"question": "1+1=", "answer": "2"}] * 8)
    with pytest.raises(ValueError, match="knapsack_prompt_id_column"):
        KnapsackGRPOTrainer(
            model=tiny_model(),
            reward_funcs=REWARDS["parity"],
            args=tiny_args(KnapsackGRPOConfig),
            train_dataset=dataset,
            processing_class=tiny_tokenizer,
        )


def test_stock_config_is_refused(tiny_model, tiny_tokenizer, train_dataset, tiny_args) -> None:
    with pytest.raises(TypeError, match="KnapsackGRPOConfig"):
        KnapsackGRPOTrainer(
            model=tiny_model(),
            reward_funcs=REWARDS["parity"],
            args=tiny_args(GRPOConfig),
            train_dataset=train_dataset,
            processing_class=tiny_tokenizer,
        )


def test_unsupported_trl_version(monkeypatch) -> None:
    check_trl_version("1.16.0")
    check_trl_version("1.16.3")
    for version in ("1.15.2", "1.17.0", "2.0.0"):
        with pytest.raises(RuntimeError, match=rf"trl {version} is installed.*>=1.16,<1.17"):
            check_trl_version(version)
    monkeypatch.setenv(SKIP_VERSION_CHECK_ENV, "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_trl_version("1.17.0")
    assert any("1.17.0" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- budget manager options
def test_schedule_horizon_defaults_to_max_steps(tiny_model, tiny_tokenizer, train_dataset, tiny_args) -> None:
    args = tiny_args(KnapsackGRPOConfig, max_steps=4, knapsack_n_max_schedule="linear:12:4")
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=train_dataset.select(range(8)),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    assert trainer.knapsack_allocator.config.total_steps == 4
    logged = [h["knapsack/n_max"] for h in trainer.state.log_history if "knapsack/n_max" in h]
    assert logged == [12.0, 10.0, 8.0, 6.0]


def test_token_cost_mode_learns_lengths(tiny_model, tiny_tokenizer, train_dataset, tiny_args) -> None:
    args = tiny_args(
        KnapsackGRPOConfig,
        max_steps=4,
        knapsack_token_cost=True,
        knapsack_solver="cpsat",
        knapsack_tracker_window=16,
    )
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=train_dataset.select(range(8)),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    prompts = trainer.knapsack_allocator.tracker.state_dict()["prompts"]
    lengths = [x for entry in prompts.values() for x in entry["lengths"]]
    assert len(lengths) == 4 * 16 and all(1 <= x <= 8 for x in lengths)  # completion tokens, EOS included
    assert all(sum(h["rollouts"]) == 16 for h in trainer.knapsack_history)


def test_iterable_dataset(tiny_model, tiny_tokenizer, train_dataset, tiny_args) -> None:
    args = tiny_args(KnapsackGRPOConfig, max_steps=3)
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=train_dataset.select(range(8)).to_iterable_dataset(),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    history = list(trainer.knapsack_history)
    assert len(history) == 3 and all(len(set(h["prompt_ids"])) == 4 for h in history)
    assert history[2]["rollouts"] != [4, 4, 4, 4]


def test_rows_not_in_sampler_groups_are_refused(tiny_model, tiny_tokenizer, train_dataset, tiny_args) -> None:
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["parity"],
        args=tiny_args(KnapsackGRPOConfig),
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    rows = [train_dataset[i // 4] for i in range(16)]
    plan = trainer._knapsack_gather(rows)
    assert plan.prompt_ids == [train_dataset[i]["prompt_id"] for i in range(4)]
    with pytest.raises(RuntimeError, match="RepeatSampler"):
        trainer._knapsack_gather([train_dataset[i % 4] for i in range(16)])


def test_schedule_horizon_for_epoch_based_runs(tiny_model, tiny_tokenizer, train_dataset, tiny_args) -> None:
    args = tiny_args(
        KnapsackGRPOConfig, max_steps=-1, num_train_epochs=1, knapsack_n_max_schedule="linear:12:4"
    )
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["parity"],
        args=args,
        train_dataset=train_dataset.select(range(8)),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    assert trainer.state.max_steps == 2
    assert trainer.knapsack_allocator.config.total_steps == 2
    assert [h["knapsack/n_max"] for h in trainer.state.log_history if "knapsack/n_max" in h] == [12.0, 8.0]

"""KnapsackRLOOTrainer against the stock RLOOTrainer and a numpy leave-one-out reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    REWARDS,
    FakeAllocation,
    assert_same_run,
    give_allocations,
    inject_random_allocations,
    numpy_rloo,
    record_lasts,
)
from trl import RLOOConfig, RLOOTrainer

from knapsack_trl import KnapsackRLOOConfig, KnapsackRLOOTrainer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "beta,normalize,clip",
    [(0.0, False, None), (0.05, True, (-0.5, 1.0)), (0.05, False, None)],
)
def test_uniform_allocation_equals_stock_rloo(run_pair, rewards, beta, normalize, clip) -> None:
    stock, knap = run_pair(
        RLOOTrainer,
        RLOOConfig,
        KnapsackRLOOTrainer,
        KnapsackRLOOConfig,
        [rewards["parity"], rewards["sparse"], rewards["sparser"]],
        reward_weights=[1.0, 0.5, 2.0],
        beta=beta,
        normalize_advantages=normalize,
        reward_clip_range=clip,
        knapsack_mode="uniform",
    )
    assert_same_run(stock, knap)
    logged = [h for h in knap[0].state.log_history if "loss" in h]
    stock_logged = [h for h in stock[0].state.log_history if "loss" in h]
    for ours, theirs in zip(logged, stock_logged, strict=True):
        assert ours["frac_reward_zero_std"] == theirs["frac_reward_zero_std"]
        assert ("kl" in ours) == (beta != 0.0)


def test_disabled_is_exactly_stock_rloo(run_pair, rewards) -> None:
    stock, knap = run_pair(
        RLOOTrainer,
        RLOOConfig,
        KnapsackRLOOTrainer,
        KnapsackRLOOConfig,
        [rewards["parity"]],
        knapsack_enabled=False,
    )
    assert_same_run(stock, knap)


@pytest.mark.parametrize("beta,normalize,clip", [(0.0, False, None), (0.05, True, (-0.5, 1.0))])
def test_random_allocations_match_numpy_leave_one_out(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, recorder, beta, normalize, clip
) -> None:
    seen_prompts: list[str] = []

    def recording_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        seen_prompts.extend(prompts)
        return REWARDS["parity"](completions)

    args = tiny_args(
        KnapsackRLOOConfig,
        max_steps=3,
        beta=beta,
        normalize_advantages=normalize,
        reward_clip_range=clip,
        reward_weights=[1.0, 0.5],
        knapsack_n_min=0,
    )
    trainer = KnapsackRLOOTrainer(
        model=tiny_model(),
        reward_funcs=[recording_reward, REWARDS["sparse"]],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    drawn = inject_random_allocations(trainer, seed=11)
    lasts = record_lasts(trainer)
    outputs = recorder(trainer)
    trainer.train()

    assert len(drawn) == len(lasts) == len(outputs) == 3
    assert any((sizes <= 1).any() for sizes in drawn)
    prompt_of = {row["prompt_id"]: row["prompt"] for row in train_dataset}
    for k, (sizes, last, output) in enumerate(zip(drawn, lasts, outputs, strict=True)):
        expanded = [
            prompt_of[pid] for pid, n in zip(last["prompt_ids"], sizes, strict=True) for _ in range(n)
        ]
        assert seen_prompts[16 * k : 16 * (k + 1)] == expanded
        kl = None if beta == 0.0 else last["kl"].numpy().astype(np.float64)
        expected = numpy_rloo(
            last["rewards_per_func"].numpy(), sizes.tolist(), np.array([1.0, 0.5]), kl, beta, clip, normalize
        )
        np.testing.assert_allclose(last["advantages"].numpy(), expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(output["advantages"], last["global_advantages"])
    if beta:  # the policy moves away from the reference after the first step
        assert np.abs(lasts[-1]["kl"].numpy()).sum() > 0


@pytest.mark.parametrize(
    "overrides",
    [{"num_iterations": 2}, {"steps_per_generation": 4, "gradient_accumulation_steps": 2}],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_rloo_feature_matrix_trains(tiny_model, tiny_tokenizer, train_dataset, tiny_args, overrides) -> None:
    args = tiny_args(KnapsackRLOOConfig, max_steps=4, **overrides)
    trainer = KnapsackRLOOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        train_dataset=train_dataset.select(range(8)),
        processing_class=tiny_tokenizer,
    )
    give_allocations(trainer, lambda ids, budget, step: FakeAllocation(np.tile([7, 2, 5, 2], len(ids) // 4)))
    trainer.train()
    assert trainer.state.global_step == 4
    assert all(np.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_rloo_lora_with_kl_runs_offline(tiny_dir, tiny_tokenizer, train_dataset, tiny_args) -> None:
    from peft import LoraConfig

    args = tiny_args(KnapsackRLOOConfig, beta=0.05, learning_rate=1e-2)
    trainer = KnapsackRLOOTrainer(
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
    assert trainer.knapsack_last["kl"] is not None


def test_rloo_vllm_server_asks_for_one_completion_per_row(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    """No vLLM here: a MOCK stands in for ``vllm_generation`` and records the group size it is asked for."""
    from unittest import mock

    args = tiny_args(KnapsackRLOOConfig, max_steps=1, beta=0.0)
    trainer = KnapsackRLOOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["parity"],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    eos = tiny_tokenizer.eos_token_id
    generation = mock.Mock()
    generation.generate.side_effect = lambda prompts, images, num_generations, profiler: (
        prompts,
        [[*reversed(p), eos] for p in prompts],
        None,
        None,
    )
    trainer.use_vllm, trainer.vllm_generation, trainer._last_loaded_step = True, generation, 0
    trainer.train()
    assert generation.generate.call_args.kwargs["num_generations"] == 1
    assert trainer.num_generations == 4  # restored after the call

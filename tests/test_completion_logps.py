"""``knapsack_completion_logps_only``: the completion's log-probabilities and entropies from its own
positions' logits are TRL's fused-head numbers (values and gradients) within float rounding, on a left- and
right-padded batch, and a training step with it matches one without it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import REWARDS
from trl import GRPOTrainer, RLOOTrainer

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer, KnapsackRLOOConfig, KnapsackRLOOTrainer
from knapsack_trl.trainer import trl_bridge

pytestmark = pytest.mark.slow

TRAINERS = {
    "grpo": (KnapsackGRPOTrainer, KnapsackGRPOConfig, GRPOTrainer),
    "rloo": (KnapsackRLOOTrainer, KnapsackRLOOConfig, RLOOTrainer),
}


@pytest.fixture
def completion_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that took the completion-only path (one per call of the override)."""
    calls: list[int] = []
    original = trl_bridge.completion_logps

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(trl_bridge, "completion_logps", counted)
    return calls


def _padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """5 rows of 14 tokens, the last 6 the completion: prompts left-padded, completions right-padded."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (5, 14), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = attention_mask[1, :1] = attention_mask[4, :5] = 0  # left padding of prompts
    attention_mask[0, -2:] = attention_mask[3, -4:] = 0  # right padding of completions
    return input_ids, attention_mask, 6


def _grads(model: Any, logps: torch.Tensor, entropies: torch.Tensor) -> list[torch.Tensor]:
    weights = torch.linspace(-1.0, 1.0, logps.numel()).view_as(logps)
    model.zero_grad()
    ((logps * weights).sum() + (entropies * weights.flip(0)).sum()).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_completion_logps_and_entropies_are_trls(
    kind, tiny_model, tiny_tokenizer, train_dataset, tiny_args, completion_calls
) -> None:
    ours, config, stock = TRAINERS[kind]
    args = tiny_args(config, temperature=0.7, knapsack_completion_logps_only=True)
    trainer = ours(
        model=tiny_model(),
        reward_funcs=REWARDS["parity"],
        args=args,
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    model = trainer.model
    input_ids, attention_mask, keep = _padded_batch(model.config.vocab_size)
    call = (model, input_ids, attention_mask, keep)
    logps, entropies, aux = trainer._get_per_token_logps_and_entropies(
        *call, batch_size=2, compute_entropy=True
    )
    assert completion_calls == [1]
    trl_logps, trl_entropies, trl_aux = stock._get_per_token_logps_and_entropies(
        trainer, *call, batch_size=2, compute_entropy=True
    )
    assert aux is None and trl_aux is None
    assert logps.shape == entropies.shape == (5, keep) and logps.dtype == trl_logps.dtype == torch.float32
    torch.testing.assert_close(logps, trl_logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropies, trl_entropies, atol=1e-5, rtol=0)
    padding = attention_mask[:, -keep:] == 0
    assert (logps[padding] == 0).all() and (entropies[padding] == 0).all()
    assert (logps[~padding] < 0).all() and (entropies[~padding] > 0).all()
    for mine, theirs in zip(
        _grads(model, logps, entropies), _grads(model, trl_logps, trl_entropies), strict=True
    ):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    # without entropies, and without chunks
    alone, no_entropy, _ = trainer._get_per_token_logps_and_entropies(*call)
    assert no_entropy is None and torch.allclose(alone, logps, atol=1e-6)


def _one_step(
    trainer_cls: type, trainer_args: Any, model: Any, tokenizer: Any, dataset: Any, lora: bool
) -> dict[str, Any]:
    peft: dict[str, Any] = {}
    if lora:
        from peft import LoraConfig

        peft["peft_config"] = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        )
    trainer = trainer_cls(
        model=model,
        reward_funcs=REWARDS["parity"],
        args=trainer_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        **peft,
    )
    trainer.train()
    (logged,) = [h for h in trainer.state.log_history if "loss" in h]
    return logged


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("grpo", {"knapsack_enabled": False, "temperature": 0.7}),  # the uniform recipe's case
        ("grpo", {"knapsack_mode": "knapsack"}),
        ("rloo", {"beta": 0.05}),  # the reference model's log-probs too
        ("grpo", {"beta": 0.05, "lora": True}),  # PEFT: the reference is the model without its adapter
    ],
    ids=["grpo-disabled", "grpo-knapsack", "rloo-kl", "grpo-lora-kl"],
)
def test_a_training_step_matches_trls_log_probs(
    kind, fields, tiny_dir, tiny_tokenizer, train_dataset, tiny_args, completion_calls
) -> None:
    ours, config, _ = TRAINERS[kind]
    fields = dict(fields)
    lora = fields.pop("lora", False)
    runs = {}
    for on in (False, True):
        args = tiny_args(config, max_steps=1, knapsack_completion_logps_only=on, **fields)
        runs[on] = _one_step(ours, args, tiny_dir, tiny_tokenizer, train_dataset, lora)
        assert bool(completion_calls) is on
    off, on = runs[False], runs[True]
    assert on["reward"] == off["reward"] and on["completions/mean_length"] == off["completions/mean_length"]
    for key in ("loss", "grad_norm", "entropy", "kl"):
        if key in off:
            assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-6), key
    assert off["grad_norm"] > 0

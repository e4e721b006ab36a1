"""What the tests share: reward functions, recorders, allocation injectors, the numpy references and a
mocked vLLM server. No test module imports another test module; they import this one.

Allocations are injected through the trainer's public seams: ``trainer.knapsack_allocator`` and
``trainer.knapsack_pilot`` are replaced by subclasses of the core objects whose decision is given.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.calibration import group_successes
from knapsack_trl.core.pilot import PilotRound


# --------------------------------------------------------------------------- reward functions
def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else "".join(m["content"] for m in completion)


def parity_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """1 for an odd-length completion: a mixed binary signal from an untrained model."""
    return [float(len(_text(c)) % 2) for c in completions]


def sparse_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """A shaped score that is None (unscorable) for lengths divisible by 3."""
    return [None if len(_text(c)) % 3 == 0 else len(_text(c)) / 8 for c in completions]


def sparser_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """None for lengths divisible by 6: with :func:`sparse_reward`, some rows are wholly unscorable."""
    return [None if len(_text(c)) % 6 == 0 else float(len(_text(c)) % 4 == 0) for c in completions]


def difficulty_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Deterministic buckets: 1-digit sums always solved, 3-digit never, 2-digit by completion parity."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        digits = len(_text(prompt).split("+")[0])
        out.append(1.0 if digits == 1 else 0.0 if digits >= 3 else float(len(_text(completion)) % 2))
    return out


REWARDS = {
    "parity": parity_reward,
    "sparse": sparse_reward,
    "sparser": sparser_reward,
    "difficulty": difficulty_reward,
}


# --------------------------------------------------------------------------- recorders
def record_generations(trainer: Any) -> list[dict[str, Any]]:
    """Wrap ``trainer._generate_and_score_completions`` to keep a copy of every output it returns."""
    outputs: list[dict[str, Any]] = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = original(inputs)
        outputs.append({k: v.clone() if hasattr(v, "clone") else v for k, v in output.items()})
        return output

    trainer._generate_and_score_completions = wrapped
    return outputs


def record_lasts(trainer: Any) -> list[dict[str, Any]]:
    """``trainer.knapsack_last`` after every generation batch, through the public listener hook."""
    lasts: list[dict[str, Any]] = []
    trainer.add_knapsack_listener(lambda event: lasts.append(trainer.knapsack_last))
    return lasts


def record_reward_calls(trainer: Any) -> list[dict[str, Any]]:
    """Every call of TRL's reward computation: its prompts, completion token ids and reward matrix."""
    calls: list[dict[str, Any]] = []
    original = trainer._calculate_rewards

    def wrapped(inputs, prompts, completions, completion_ids_list):
        out = original(inputs, prompts, completions, completion_ids_list)
        calls.append(
            {
                "prompts": list(prompts),
                "completion_ids": [list(ids) for ids in completion_ids_list],
                "rewards_per_func": out.detach().cpu().numpy().astype(np.float64),
            }
        )
        return out

    trainer._calculate_rewards = wrapped
    return calls


# --------------------------------------------------------------------------- injected allocations
class FakeAllocation:
    """Stands in for the core allocation: given rollouts per prompt, no diagnostics."""

    def __init__(self, sizes: np.ndarray) -> None:
        self.rollouts_per_prompt = np.asarray(sizes, dtype=np.int64)

    def metrics(self) -> dict[str, float]:
        return {"rollouts_max": float(self.rollouts_per_prompt.max())}


class GivenAllocator(KnapsackRolloutAllocator):
    """The trainer's allocator (same config and tracker, so it keeps observing) whose decision is
    ``decide(prompt_ids, budget, step)``."""

    def __init__(self, base: KnapsackRolloutAllocator, decide: Any) -> None:
        super().__init__(base.config, base.tracker)
        self.decide = decide

    def allocate(self, prompt_ids: Any, budget: int, *, step: int = 0, **_: Any) -> Any:
        return self.decide(list(prompt_ids), int(budget), int(step))


def give_allocations(trainer: Any, decide: Any) -> None:
    """Every one-round allocation of ``trainer`` is ``decide(prompt_ids, budget, step)``."""
    trainer.knapsack_allocator = GivenAllocator(trainer.knapsack_allocator, decide)


def inject_random_allocations(trainer: Any, seed: int) -> list[np.ndarray]:
    """Replace the allocator with random sizes summing to the budget (0 and 1 included)."""
    rng = np.random.default_rng(seed)
    drawn: list[np.ndarray] = []

    def allocate(prompt_ids: list[str], budget: int, step: int) -> FakeAllocation:
        sizes = rng.multinomial(budget, np.full(len(prompt_ids), 1 / len(prompt_ids)))
        drawn.append(sizes)
        return FakeAllocation(sizes)

    give_allocations(trainer, allocate)
    return drawn


def record_allocations(trainer: Any) -> list[Any]:
    """Every one-round allocation the trainer's own allocator makes, in order."""
    allocations: list[Any] = []
    base = trainer.knapsack_allocator

    class Recording(type(base)):  # type: ignore[misc]
        def allocate(self, *args: Any, **kwargs: Any) -> Any:
            allocations.append(super().allocate(*args, **kwargs))
            return allocations[-1]

    trainer.knapsack_allocator = Recording(base.config, base.tracker)
    return allocations


class FakeSecondRound:
    """Stands in for the core's SecondRound: given extra rollouts per prompt, no diagnostics."""

    def __init__(self, extra: np.ndarray) -> None:
        self.extra_rollouts = np.asarray(extra, dtype=np.int64)

    def metrics(self) -> dict[str, float]:
        return {"second_round_rollouts": float(self.extra_rollouts.sum())}


class GivenPilot:
    """The trainer's pilot round (every attribute of ``base``) whose second round is
    ``decide(prompt_ids, successes, scored, budget, step)``, successes counted as the core counts them."""

    def __init__(self, base: PilotRound, decide: Any) -> None:
        self.base, self.given = base, decide

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def decide(self, allocator: Any, prompt_ids: Any, pilot_rewards: Any, *, step: int = 0, **_: Any) -> Any:
        sizes = self.base.pilot_sizes()
        successes, scored = group_successes(pilot_rewards, sizes, allocator.tracker.success_threshold)
        return self.given(list(prompt_ids), successes, scored, self.base.second_round_budget, int(step))


def inject_random_second_rounds(trainer: Any, seed: int) -> list[dict[str, np.ndarray]]:
    """Replace the second-round decision with random extra rollouts summing to its budget (0 included)."""
    rng = np.random.default_rng(seed)
    drawn: list[dict[str, np.ndarray]] = []

    def allocate(prompt_ids, successes, scored, budget, step):
        extra = rng.multinomial(budget, np.full(len(prompt_ids), 1 / len(prompt_ids)))
        drawn.append({"successes": np.asarray(successes), "scored": np.asarray(scored), "extra": extra})
        return FakeSecondRound(extra)

    trainer.knapsack_pilot = GivenPilot(trainer.knapsack_pilot, allocate)
    return drawn


def assert_same_run(stock: tuple, knap: tuple) -> None:
    _, stock_out, stock_losses, stock_params = stock
    _, knap_out, knap_losses, knap_params = knap
    assert len(stock_out) == len(knap_out) > 0
    for a, b in zip(stock_out, knap_out, strict=True):
        assert torch.equal(a["advantages"], b["advantages"])
        assert torch.equal(a["completion_ids"], b["completion_ids"])
    assert stock_losses == knap_losses and len(stock_losses) > 0
    assert all(torch.equal(p, q) for p, q in zip(stock_params, knap_params, strict=True))


# --------------------------------------------------------------------------- numpy references
def _std(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(np.std(values, ddof=1)) if values.size >= 2 else float("nan")


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _aggregate(rpf: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = np.nansum(rpf * weights[None, :], axis=1)
    out[np.isnan(rpf).all(axis=1)] = np.nan
    return out


def _groups(sizes: list[int]) -> list[slice]:
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def numpy_grpo(rpf: np.ndarray, sizes, weights: np.ndarray, scale: str, aggregation: str) -> np.ndarray:
    rpf = rpf.astype(np.float64)
    adv = np.zeros(rpf.shape[0])
    if aggregation == "sum_then_normalize":
        r = _aggregate(rpf, weights)
        batch_std = _std(r)
        for g, n in zip(_groups(sizes), sizes):
            mean = _mean(r[g])
            std = 0.0 if n == 1 else (batch_std if scale == "batch" else _std(r[g]))
            adv[g] = r[g] - mean if scale == "none" else (r[g] - mean) / (std + 1e-4)
    else:
        z = np.zeros_like(rpf)
        for g, n in zip(_groups(sizes), sizes):
            for k in range(rpf.shape[1]):
                std = 0.0 if n == 1 else _std(rpf[g, k])
                z[g, k] = (rpf[g, k] - _mean(rpf[g, k])) / (std + 1e-4)
        r = np.nansum(z * weights[None, :], axis=1)
        r[np.isnan(rpf).all(axis=1)] = np.nan
        adv = (r - _mean(r)) / (_std(r) + 1e-4)
    return np.nan_to_num(adv, nan=0.0)


def numpy_rloo(rpf, sizes, weights, kl=None, beta=0.0, clip=None, normalize=False) -> np.ndarray:
    r = _aggregate(rpf.astype(np.float64), weights)
    if clip:
        r = np.clip(r, clip[0], clip[1])
    if beta:
        r = r - beta * kl
    adv = np.full(r.size, np.nan)
    for g, n in zip(_groups(sizes), sizes):
        if n == 1:
            adv[g] = 0.0
            continue
        for i in range(g.start, g.stop):
            others = np.delete(r[g], i - g.start)
            others = others[~np.isnan(others)]
            adv[i] = r[i] - others.mean() if others.size else np.nan
    if normalize:
        adv = (adv - _mean(adv)) / (_std(adv) + 1e-4)
    return np.nan_to_num(adv, nan=0.0)


# --------------------------------------------------------------------------- vLLM server mode (mocked)
def reversed_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """1 when the completion is its own prompt reversed: what :func:`mock_vllm_server` answers."""
    return [float(c == p[::-1]) for p, c in zip(prompts, completions, strict=True)]


def mock_vllm_server(trainer: Any, tokenizer: Any, importance_sampling: bool = False) -> Any:
    """Route ``trainer``'s generation through the real ``VLLMGeneration.generate`` to a MOCK client.

    No vLLM server can run here. The mock answers each prompt with its own reversed text, so a
    completion scored against another prompt (TRL's fixed-size ``[::num_generations]`` dedupe with
    variable groups) gets reward 0. Returns the mock client.
    """
    from unittest import mock

    from trl.generation.vllm_generation import VLLMGeneration

    eos = tokenizer.eos_token_id
    client = mock.Mock()

    def generate(prompts, features=None, n=1, **kwargs):
        completions = [[*reversed(ids), eos] for ids in prompts for _ in range(n)]
        return {
            "prompt_ids": prompts,
            "completion_ids": completions,
            "logprobs": [[[-1.0]] * len(c) for c in completions],
        }

    client.generate.side_effect = generate
    generation = VLLMGeneration.__new__(VLLMGeneration)
    generation.__dict__.update(
        accelerator=trainer.accelerator,
        mode="server",
        vllm_client=client,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=8,
        logprobs=0,
        structured_outputs_regex=None,
        generation_kwargs={},
        enable_sleep_mode=False,
    )
    generation.sync_weights = lambda: None
    trainer.use_vllm = True
    trainer.vllm_generation = generation
    trainer._last_loaded_step = 0
    trainer.vllm_importance_sampling_correction = importance_sampling
    return client

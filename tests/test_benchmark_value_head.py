"""The value-head benchmark's first-epoch summary, checked against counts made here from its draws."""

import numpy as np
import pytest
import torch

from knapsack_trl.core.values import nonzero_gradient_probability
from knapsack_trl.experiments.benchmarks import value_head as bench

PROMPTS, PER_BATCH, ROLLOUTS = 48, 8, 8


@pytest.fixture(scope="module")
def rates() -> np.ndarray:
    return _data()[1]


@pytest.fixture(scope="module")
def arms(rates: np.ndarray) -> dict[str, list[dict]]:
    features, _ = _data()
    ids = [f"p{i}" for i in range(PROMPTS)]
    return bench._first_epoch_arms(features, rates, ids, PER_BATCH, ROLLOUTS, repeats=2, seed=0)


def _data() -> tuple[torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(PROMPTS, 12, generator=gen)
    # Easy, hard and mixed prompts, with difficulty visible in the first feature.
    rates = 1.0 / (1.0 + np.exp(-3.0 * features[:, 0].numpy().astype(np.float64)))
    rates[::6] = 0.0
    return features, rates


def _mixed(batch: dict) -> np.ndarray:
    sizes, successes = np.asarray(batch["sizes"]), np.asarray(batch["successes"])
    return (successes > 0) & (successes < sizes)


def test_informative_prompts_match_an_independent_count(arms: dict, rates: np.ndarray) -> None:
    for mode in ("uniform", "history", "blend"):
        for epoch in arms[mode]:
            batches = epoch["batches"]
            assert len(batches) == PROMPTS // PER_BATCH
            assert all(sum(b["sizes"]) == PER_BATCH * ROLLOUTS for b in batches)
            counts = [int(_mixed(b).sum()) for b in batches]
            assert epoch["informative_prompts"] == pytest.approx(np.mean(counts)), mode
            useful = sum(int(np.asarray(b["sizes"])[_mixed(b)].sum()) for b in batches)
            assert epoch["effective_ratio"] == pytest.approx(useful / (PROMPTS * ROLLOUTS)), mode
            expected = np.mean(
                [
                    nonzero_gradient_probability(
                        np.asarray(b["sizes"]), rates[k * PER_BATCH : (k + 1) * PER_BATCH]
                    ).sum()
                    for k, b in enumerate(batches)
                ]
            )
            assert epoch["expected_informative_prompts"] == pytest.approx(expected), mode


def test_uniform_redrawn_here_and_history_is_uniform_in_the_first_epoch(
    arms: dict, rates: np.ndarray
) -> None:
    for r, epoch in enumerate(arms["uniform"]):
        rng = np.random.default_rng(r)  # seed * 1000 + r with seed 0
        counts = []
        for start in range(0, PROMPTS, PER_BATCH):
            s = rng.binomial(ROLLOUTS, rates[start : start + PER_BATCH])
            counts.append(int(((s > 0) & (s < ROLLOUTS)).sum()))
        assert epoch["informative_prompts"] == pytest.approx(np.mean(counts))
        # Every prompt is unseen, so history allocates uniformly and draws the same outcomes.
        assert arms["history"][r]["batches"] == epoch["batches"]


def test_summary_reports_each_arm_and_the_blend_over_history_ratio(arms: dict) -> None:
    out = bench._arm_summaries(arms, repeats=2)
    inf = out["first_epoch_informative_prompts"]
    for mode in ("uniform", "history", "blend"):
        assert inf[mode]["mean"] == pytest.approx(np.mean([e["informative_prompts"] for e in arms[mode]]))
        assert out["first_epoch_effective_ratio"][mode]["mean"] == pytest.approx(
            np.mean([e["effective_ratio"] for e in arms[mode]])
        )
    assert inf["blend_over_history"] == pytest.approx(inf["blend"]["mean"] / inf["history"]["mean"])
    assert (inf["prompts_per_batch"], inf["batches"], inf["simulated"]) == (
        PER_BATCH,
        PROMPTS // PER_BATCH,
        True,
    )


def test_trainer_settings_are_one_epoch_of_new_prompts() -> None:
    s = bench.trainer_settings(3)
    assert (s.task, s.seed, s.pool_size, s.prompts_per_step, s.steps) == ("control", 3, 256, 16, 16)
    assert s.steps * s.prompts_per_step == s.pool_size and s.eval_every > s.steps
    # the old DemoSettings.quick preset, which the first figures used
    assert (s.sft_steps, s.sft_target, s.heldout_size, s.num_generations) == (300, 0.25, 64, 8)

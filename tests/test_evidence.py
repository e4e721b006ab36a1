"""The benchmark protocol's pieces: bootstrap intervals against the exact bootstrap distribution, the
headroom task's selection, the best-arm verdict, the task presets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.experiments.demo import CONTROL, DemoSettings
from knapsack_trl.experiments.headroom import Bands, select_headroom
from knapsack_trl.experiments.report import RunRecord, aggregate, best_method, verdict
from knapsack_trl.experiments.statistics import bootstrap_interval


def _exact_bootstrap_percentiles(values: list[float], tails: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of the exact bootstrap distribution of the mean: every one of n^n resamples once."""
    x = np.asarray(values)
    means = np.array([x[list(idx)].mean() for idx in itertools.product(range(x.size), repeat=x.size)])
    lo, hi = np.percentile(means, tails)
    return float(lo), float(hi)


@pytest.mark.parametrize("values", [[1.0, 1.1, 1.3, 0.9], [0.2, -0.1, 0.05, 0.3, 0.0]])
def test_bootstrap_interval_matches_the_exact_bootstrap_distribution(values):
    lo, hi = bootstrap_interval(values, resamples=200_000)
    exact_lo, exact_hi = _exact_bootstrap_percentiles(values, (2.5, 97.5))
    spread = max(values) - min(values)
    assert lo == pytest.approx(exact_lo, abs=0.01 * spread)
    assert hi == pytest.approx(exact_hi, abs=0.01 * spread)
    assert bootstrap_interval(values) == bootstrap_interval(values)  # a fixed RNG: reports reproduce


def test_bootstrap_interval_edges():
    assert all(math.isnan(v) for v in bootstrap_interval([1.2]))
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    assert bootstrap_interval([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))
    assert bootstrap_interval([1.0, float("nan"), 3.0, None]) == bootstrap_interval([1.0, 3.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=8))
def test_bootstrap_interval_lies_within_the_values_and_around_the_mean(values):
    lo, hi = bootstrap_interval(values, resamples=2000)
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9


def _candidates(p: list[float]) -> list[dict[str, str]]:
    return [
        {"prompt": f"{i}+0=", "answer": str(i), "prompt_id": f"add:{i}+0", "level": "easy"}
        for i in range(len(p))
    ]


def test_select_headroom_takes_bands_in_drawn_order_and_interleaves_the_pool():
    bands = Bands(solved_min=0.97, hard_low=0.03, hard_high=0.15, pool_solved=2, pool_hard=2, heldout_hard=2)
    p = [1.0, 0.5, 0.1, 0.0, 0.97, 0.03, 0.16, 0.15, 0.98, 0.12, 0.02]
    pool, heldout = select_headroom(_candidates(p), np.array(p), bands)
    assert [r["prompt_id"] for r in pool] == ["add:0+0", "add:2+0", "add:4+0", "add:5+0"]
    assert [r["band"] for r in pool] == ["solved", "hard", "solved", "hard"]
    assert [r["prompt_id"] for r in heldout] == [
        "add:7+0",
        "add:9+0",
    ]  # the next hard ones; 0.16 and 0.02 out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=20, max_size=120), st.integers(1, 4), st.integers(1, 4))
def test_select_headroom_invariants(successes, n_solved, n_hard):
    bands = Bands(pool_solved=n_solved, pool_hard=n_hard, heldout_hard=n_hard)
    p = np.array(successes) / 64
    rows = _candidates(list(p))
    rate = {r["prompt_id"]: q for r, q in zip(rows, p)}
    try:
        pool, heldout = select_headroom(rows, p, bands)
    except ValueError as err:
        assert "candidates" in str(err) and "sft_target" in str(err)
        assert (p >= 0.97).sum() < n_solved or ((p >= 0.03) & (p <= 0.15)).sum() < 2 * n_hard
        return
    assert len(pool) == n_solved + n_hard and len(heldout) == n_hard
    assert not {r["prompt_id"] for r in pool} & {r["prompt_id"] for r in heldout}
    for r in pool + heldout:
        q = rate[r["prompt_id"]]
        assert q > 0 and (q >= 0.97 if r["band"] == "solved" else 0.03 <= q <= 0.15)
    assert all(r["band"] == "hard" for r in heldout)


def _run(method: str, seed: int, useful: int, accs: list[float]) -> RunRecord:
    steps = [
        {"step": i + 1, "rollouts": 64, "groups": 8, "useful_groups": useful, "useful_rollouts": 8 * useful}
        | {"reward_mean": 0.5, "prompt_reward_mean": 0.5, "n_min": 8, "n_mean": 8, "n_max": 8}
        for i in range(4)
    ]
    evals = [
        {"step": 2 * i, "rollouts_consumed": 128 * i, "accuracy": a, "reward": a} for i, a in enumerate(accs)
    ]
    return RunRecord(method, seed, steps, evals)


def test_verdict_names_the_best_non_oracle_arm_with_paired_intervals():
    runs = []
    for seed, (u, k, pl, o) in enumerate([(4, 5, 6, 8), (4, 4, 5, 8), (5, 6, 6, 8)]):
        runs += [
            _run("uniform", seed, u, [0.1, 0.2, 0.3]),
            _run("knapsack", seed, k, [0.1, 0.25, 0.3]),
            _run("pilot", seed, pl, [0.1, 0.3, 0.35]),
            _run("oracle", seed, o, [0.1, 0.3, 0.4]),
        ]
    agg = aggregate(runs, target=0.28)
    assert best_method(agg) == "pilot"  # the oracle is never the best arm
    ratios = [6 / 4, 5 / 4, 6 / 5]
    lo, hi = bootstrap_interval(ratios)
    text = verdict(agg, "Headroom task")
    assert text.startswith("Headroom task, 3 seeds, 95% bootstrap intervals: knapsack, pilot round gave ")
    assert f"x{np.mean(ratios):.2f} [{lo:.2f}, {hi:.2f}] uniform's informative prompts per step" in text
    # uniform reaches 0.28 at 128 + 0.8 * 128 rollouts, the pilot at 128 * 0.9: ratio 0.5 on every seed
    assert "reached the held-out target with x0.50 [0.50, 0.50] its rollouts (3 of 3 seeds" in text
    assert "ended +5.0 points [+5.0, +5.0] in held-out accuracy" in text
    assert text.endswith("; both targets met.")
    agg["target"] = None  # uniform did not improve: no target, and the sentence says why
    assert "had no rollouts-to-target comparison (uniform did not improve held-out accuracy)" in verdict(
        agg, "T"
    )


def test_task_presets():
    assert DemoSettings.for_task("headroom") == DemoSettings(checkpoint_seed=99)
    control = DemoSettings.for_task("control")
    assert {k: getattr(control, k) for k in CONTROL} == CONTROL and control.task == "control"
    headroom = DemoSettings.for_task("headroom")
    assert headroom.pool_size == headroom.bands.pool_solved + headroom.bands.pool_hard
    assert headroom.pool_size // headroom.prompts_per_step == 3  # each prompt back every 3 steps
    assert DemoSettings.for_task("headroom", quick=True, seeds=3).run_seeds == [0, 1, 2]
    with pytest.raises(ValueError, match="--task must be one of headroom, control"):
        DemoSettings.for_task("hard")

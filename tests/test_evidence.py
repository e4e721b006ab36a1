"""The benchmark protocol's pieces: bootstrap intervals against the exact bootstrap distribution, the
rollouts-to-target statistic against hand computation, the comparators of each arm, the verdict, the task
presets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.experiments.demo import CONTROL, QUICK, TASKS, DemoSettings
from knapsack_trl.experiments.report import (
    RunRecord,
    aggregate,
    area_under_accuracy,
    best_method,
    comparators,
    first_reach,
    uniform_arms,
    verdict,
)
from knapsack_trl.experiments.statistics import bootstrap_interval, bootstrap_statistic


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


def test_bootstrap_statistic_of_the_mean_matches_the_exact_distribution_and_reads_inf():
    values = np.array([0.2, -0.1, 0.05, 0.3, 0.0])
    lo, hi = bootstrap_statistic(lambda idx: values[idx].mean(axis=1), values.size, resamples=200_000)
    exact_lo, exact_hi = _exact_bootstrap_percentiles(list(values), (2.5, 97.5))
    assert lo == pytest.approx(exact_lo, abs=0.004) and hi == pytest.approx(exact_hi, abs=0.004)
    # A statistic that is inf whenever the resample holds seed 0 (about 1 - (4/5)^5 = 67% of resamples):
    # the upper end is inf, the lower end is finite.
    lo, hi = bootstrap_statistic(lambda idx: np.where((idx == 0).any(axis=1), np.inf, 1.0), 5)
    assert lo == 1.0 and math.isinf(hi)
    assert all(math.isnan(v) for v in bootstrap_statistic(lambda idx: idx.mean(axis=1), 1))


def test_first_reach_interpolates_per_row_and_reads_never_as_inf():
    x = np.array([0.0, 100.0, 200.0])
    assert first_reach(x, np.array([0.2, 0.4, 0.6]), 0.5) == pytest.approx(150.0)
    assert first_reach(x, np.array([0.2, 0.4, 0.6]), 0.1) == 0.0
    assert math.isinf(first_reach(x, np.array([0.2, 0.4, 0.6]), 0.7))
    rows = first_reach(
        x, np.array([[0.2, 0.4, 0.6], [0.5, 0.5, 0.5], [0.0, 0.1, 0.2]]), np.array([0.3, 0.5, 0.3])
    )
    assert rows[0] == pytest.approx(50.0) and rows[1] == 0.0 and math.isinf(rows[2])


def test_area_under_accuracy_is_the_mean_accuracy_per_rollout():
    evals = [{"rollouts_consumed": 0, "reward": 0.2}, {"rollouts_consumed": 100, "reward": 0.4}]
    evals.append({"rollouts_consumed": 300, "reward": 0.4})
    assert area_under_accuracy(evals) == pytest.approx((0.3 * 100 + 0.4 * 200) / 300)


def test_comparators_name_uniform_the_control_and_the_best_group_size_once_each():
    methods = ["uniform", "knapsack", "uniform_half", "uniform_quarter"]
    assert uniform_arms(methods) == ["uniform", "uniform_half", "uniform_quarter"]
    assert comparators("knapsack", "uniform_half", methods) == {
        "uniform, its control": "uniform",
        "the best uniform group size": "uniform_half",
    }
    assert comparators("knapsack", "uniform", methods) == {
        "uniform, its control, the best uniform group size": "uniform"
    }
    assert comparators("uniform", "uniform_half", methods) == {"the best uniform group size": "uniform_half"}
    assert comparators("uniform_half", "uniform_half", methods) == {"uniform, its control": "uniform"}


def _run(method: str, seed: int, accs: list[float], useful: int = 4) -> RunRecord:
    steps = [
        {"step": i + 1, "rollouts": 64, "groups": 8, "useful_groups": useful, "useful_rollouts": 8 * useful}
        | {"reward_mean": 0.5, "prompt_reward_mean": 0.5, "n_min": 8, "n_mean": 8, "n_max": 8}
        for i in range(4)
    ]
    evals = [
        {"step": 2 * i, "rollouts_consumed": 128 * i, "accuracy": a, "reward": a} for i, a in enumerate(accs)
    ]
    seconds = [{"seconds_step": 1.0 + 0.1 * (method == "pilot")}] * 4
    return RunRecord(method, seed, steps, evals, extra={"step_seconds": seconds})


def _runs() -> list[RunRecord]:
    runs = []
    for seed, noise in enumerate([0.0, 0.01, -0.01]):
        runs += [
            _run("uniform", seed, [0.1, 0.2 + noise, 0.3 + noise]),
            _run("uniform_half", seed, [0.1, 0.25 + noise, 0.34 + noise]),
            _run("knapsack", seed, [0.1, 0.3 + noise, 0.36 + noise], useful=5),
            _run("pilot", seed, [0.1, 0.22 + noise, 0.3 + noise], useful=6),
            _run("oracle", seed, [0.1, 0.4 + noise, 0.5 + noise], useful=8),
        ]
    return runs


def test_aggregate_rollouts_to_the_best_uniform_final_accuracy_by_hand():
    agg = aggregate(_runs())
    assert agg["best_uniform"] == "uniform_half"
    assert agg["best_uniform_final"] == pytest.approx(0.34)
    c = agg["comparisons"]["knapsack"]["the best uniform group size"]
    # uniform_half's mean curve (0.1, 0.25, 0.34) reaches 0.34 at 256 rollouts; knapsack's (0.1, 0.3, 0.36)
    # at 128 + (0.34 - 0.3) / 0.06 * 128.
    assert c["rollouts_ratio"][0] == pytest.approx((128 + 0.04 / 0.06 * 128) / 256)
    lo, hi = c["rollouts_ratio"][1]
    assert lo <= c["rollouts_ratio"][0] <= hi < 1
    assert c["final_reward"][0] == pytest.approx(0.02)  # paired by seed: the same 0.02 every seed
    assert c["final_reward"][3] == pytest.approx((0.02, 0.02))
    assert c["informative_prompts"][0] == pytest.approx(5 / 4)
    # Against uniform, the target is uniform's own final accuracy, 0.3: knapsack gets there at 128 rollouts.
    vs_uniform = agg["comparisons"]["knapsack"]["uniform, its control"]
    assert vs_uniform["rollouts_ratio"][0] == pytest.approx(128 / 256)
    # uniform never reaches uniform_half's 0.34: "not reached", an infinite ratio with an infinite interval.
    never = agg["comparisons"]["uniform"]["the best uniform group size"]["rollouts_ratio"]
    assert math.isinf(never[0]) and math.isinf(never[1][1])
    assert agg["comparisons"]["pilot"]["uniform, its control"]["seconds_per_step"][0] == pytest.approx(1.1)
    assert agg["gains"]["uniform"][0] == pytest.approx(0.2)


def test_verdict_names_the_best_non_oracle_arm_against_the_best_uniform_group_size():
    agg = aggregate(_runs())
    assert best_method(agg) == "knapsack"  # the oracle is never the best arm; the pilot never reaches 0.34
    text = verdict(agg, "Levels task")
    ratio = (128 + 0.04 / 0.06 * 128) / 256
    assert text.startswith(
        "Levels task, 3 seeds, 95% bootstrap intervals: the best uniform group size is uniform GRPO, half the "
        "group (final held-out acc. 0.340 at T=1, +24.0 points [+23.0, +25.0] over the run); the best other "
        f"arm, knapsack GRPO, reached it with x{ratio:.2f} ["
    )
    assert "final +2.0 points [+2.0, +2.0] at equal budget" in text
    assert text.endswith("met for final accuracy only.")  # x0.76 is above the x0.7 target
    only_uniform = aggregate([r for r in _runs() if r.method in ("uniform", "uniform_half")])
    assert verdict(only_uniform, "T").endswith("over the run); no other arm ran.")


def test_task_presets():
    levels = DemoSettings.for_task("levels")
    assert levels == DemoSettings() and levels.sft_target == 0.2
    assert levels.levels == ("easy", "medium", "hard", "beyond") and levels.pool_size >= 2000
    assert levels.sft_levels == ("easy", "medium", "hard")  # the warm-up never shows "beyond"
    assert levels.steps * levels.prompts_per_step / levels.pool_size >= 2  # several epochs of the pool
    control = DemoSettings.for_task("control")
    assert {k: getattr(control, k) for k in CONTROL} == CONTROL and control.task == "control"
    quick = DemoSettings.for_task("levels", quick=True)
    assert quick.run_seeds == [0, 1, 2] and quick.levels == levels.levels
    assert set(QUICK) == set(TASKS)
    with pytest.raises(ValueError, match="--task must be one of levels, control"):
        DemoSettings.for_task("headroom")

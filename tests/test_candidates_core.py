"""Choosing prompts from a candidate pool, in the core: without candidates nothing changes.

``tests/fixtures/c1_allocations.json`` holds 420 seeded random cases recorded on the code before candidates
existed (``scripts/record_c1_allocations.py``): both rules, both registered values, every solver, windows and
EMAs, value-head priors, token costs, schedules, and pilot second rounds. Without a candidate option the
current code must decide every one of them exactly as recorded.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.core.allocator import AllocatorConfig, KnapsackRolloutAllocator
from knapsack_trl.core.budget import check_budget, uniform_allocation, whole_groups_below
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.core.values import nonzero_gradient_probability, value_table

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "c1_allocations.json").read_text())


def _recorder():
    """The recording script, whose ``replay`` runs a case on the code it is imported with."""
    spec = importlib.util.spec_from_file_location("record_c1", ROOT / "scripts" / "record_c1_allocations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDER = _recorder()


@pytest.mark.parametrize("index", range(len(FIXTURE["cases"])))
def test_c1_reproduces_the_recorded_allocation(index: int) -> None:
    case = FIXTURE["cases"][index]
    assert RECORDER.replay(case) == case["expected"]


# --------------------------------------------------------------------------- the allocator over candidates


def fed_allocator(seed: int, pool: int = 10, **config) -> KnapsackRolloutAllocator:
    """An allocator whose tracker saw a few visits of random size to prompts of random difficulty."""
    rng = np.random.default_rng(seed)
    tracker = SuccessRateTracker(**config.pop("tracker", {}))
    p = rng.choice([0.0, 1.0, 0.05, 0.3, 0.6, 0.95], pool)
    for step in range(4):
        for i in rng.choice(pool, size=pool // 2, replace=False):
            size = int(rng.integers(2, 9))
            tracker.observe([f"q{i}"] * size, (rng.random(size) < p[i]).astype(float), step=step)
    config.setdefault("solver", "dp")
    return KnapsackRolloutAllocator(AllocatorConfig(**config), tracker)


def brute_force_skip(table: np.ndarray, budget: int, n_min: int, n_max: int) -> float:
    options = [0, *range(n_min, n_max + 1)]
    best = -np.inf
    for combo in itertools.product(options, repeat=table.shape[0]):
        if sum(combo) == budget:
            best = max(best, float(table[np.arange(table.shape[0]), combo].sum()))
    return best


@pytest.mark.parametrize("solver", ["dp", "cpsat"])
@pytest.mark.parametrize("seed", range(6))
def test_posterior_rule_over_candidates_is_optimal_against_brute_force(solver, seed):
    alloc = fed_allocator(seed, n_min=2, n_max=6, solver=solver)
    ids = [f"q{i}" for i in range(5)]
    budget = int(np.random.default_rng(seed).integers(2, 16))
    out = alloc.allocate(ids, budget, step=5, allow_skip=True)
    # The table, independently: the posterior the rule holds at this step (history weighed by its age).
    table = alloc.posterior(ids, step=5, allow_skip=True).value_table(nonzero_gradient_probability, 6)
    assert out.expected_value == pytest.approx(brute_force_skip(table, budget, 2, 6), abs=1e-12)
    assert out.solver_result is not None and out.solver_result.optimal


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rule=st.sampled_from(["posterior", "buckets"]),
    n_min=st.integers(2, 4),
    data=st.data(),
)
def test_candidate_allocations_keep_their_invariants(seed, rule, n_min, data):
    m = data.draw(st.integers(2, 10))
    ids = [f"q{i}" for i in range(m)]
    n_max = data.draw(st.integers(n_min, 12))
    if rule == "buckets":  # unseen candidates get the uniform share, which must be a whole group
        budget = data.draw(st.integers(n_min * m, n_max * m))
        config = {"zero_success_budget": n_min, "full_success_budget": n_min}
    else:
        groups = data.draw(st.integers(1, m))
        budget = data.draw(st.integers(groups * n_min, groups * n_max))
        config = {}
    alloc = fed_allocator(seed, rule=rule, n_min=n_min, n_max=n_max, solver="cpsat", **config)
    n = alloc.allocate(ids, budget, step=4, allow_skip=True).rollouts_per_prompt
    assert int(n.sum()) == budget
    chosen = n[n > 0]
    assert (chosen >= n_min).all() and (chosen <= n_max).all()
    assert ((n == 0) | (n >= n_min)).all()


@pytest.mark.parametrize("seed", range(5))
def test_an_exact_knapsack_never_expects_less_than_its_control(seed):
    # The uniform split over every candidate is one of the allocations the knapsack may choose.
    alloc = fed_allocator(seed, pool=24, n_min=2, n_max=16, solver="cpsat")
    ids = [f"q{i}" for i in range(24)]
    out = alloc.allocate(ids, 48, step=4, allow_skip=True)
    assert out.expected_value >= out.uniform_expected_value - 1e-12
    assert out.expected_informative >= out.uniform_expected_informative - 1e-12


def test_candidate_metrics_by_hand():
    alloc = fed_allocator(0, n_min=2, n_max=8, solver="dp")
    tracker = alloc.tracker
    for pid, outcomes in {"hopeless": [0] * 8, "solved": [1] * 8, "mixed": [1, 0] * 4}.items():
        tracker.observe([pid] * len(outcomes), [float(o) for o in outcomes], step=4)
    ids = ["hopeless", "solved", "mixed", "new"]
    out = alloc.allocate(ids, 8, step=5, allow_skip=True)
    n = out.rollouts_per_prompt
    m = out.metrics()
    skipped = n == 0
    assert m["prompts_considered"] == 4.0 and m["prompts_skipped"] == float(skipped.sum())
    assert m["prompts_rolled_out"] == float((~skipped).sum())
    buckets = dict(zip(ids, ("zero", "one", "mixed", "unseen"), strict=True))
    assert out.bucket.tolist() == [buckets[i] for i in ids]
    names = {"zero": "hopeless", "one": "solved", "mixed": "mixed", "unseen": "unknown"}
    for bucket, name in names.items():
        share = (
            sum(1 for i, s in zip(ids, skipped, strict=True) if s and buckets[i] == bucket) / skipped.sum()
        )
        assert m[f"skipped_{name}_share"] == pytest.approx(share)
    assert skipped[0] and skipped[1]  # a prompt known hopeless and one known solved give no gradient
    post = alloc.posterior(ids, step=5, allow_skip=True)
    assert m["informative_rollouts_expected"] == pytest.approx(float(post.nonzero_gradient(n) @ n))
    uni = uniform_allocation(8, 4)
    assert m["informative_rollouts_uniform_expected"] == pytest.approx(
        float(post.nonzero_gradient(uni) @ uni)
    )
    # Without candidates the candidate metrics are absent, and nothing else changes name.
    plain = alloc.allocate(ids, 8, step=5).metrics()
    assert not {"prompts_considered", "prompts_skipped", "skipped_solved_share", "history_half_life"} & set(
        plain
    )
    assert set(plain) <= set(m)


def test_no_prompt_skipped_gives_nan_shares():
    alloc = KnapsackRolloutAllocator(AllocatorConfig(n_min=2, n_max=4))
    m = alloc.allocate(["a", "b"], 8, allow_skip=True).metrics()
    assert m["prompts_skipped"] == 0.0 and np.isnan(m["skipped_unknown_share"])


def test_candidate_settings_that_cannot_work_are_refused():
    alloc = KnapsackRolloutAllocator(AllocatorConfig(n_min=4, n_max=5))
    with pytest.raises(SettingError, match=r"budget=7 rollouts cannot be split into whole groups.*5 and 8"):
        alloc.allocate(["a", "b", "c"], 7, allow_skip=True)
    with pytest.raises(SettingError, match=r"exceed n_max=5 x 3 prompts"):
        alloc.allocate(["a", "b", "c"], 16, allow_skip=True)
    with pytest.raises(ValueError, match="uniform=True with allow_skip=True"):
        alloc.allocate(["a", "b"], 8, uniform=True, allow_skip=True)
    tokens = KnapsackRolloutAllocator(AllocatorConfig(token_cost=True))
    with pytest.raises(SettingError, match="token_cost=True does not combine with skipping"):
        tokens.allocate(["a", "b"], 8, allow_skip=True)
    buckets = KnapsackRolloutAllocator(AllocatorConfig(rule="buckets", n_min=2, n_max=8))
    with pytest.raises(SettingError, match=r"uniform share.*below n_min=2"):
        buckets.allocate([f"q{i}" for i in range(8)], 8, allow_skip=True)
    with pytest.raises(SettingError, match="history_half_life"):
        AllocatorConfig(history_half_life=0).validate()
    with pytest.raises(SettingError, match="history_half_life"):
        AllocatorConfig(history_half_life="auto").validate()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(1, 8), st.integers(0, 5), st.integers(0, 6))
def test_whole_group_budgets_are_exactly_those_some_k_groups_make(budget, prompts, n_min, extra):
    n_max = max(n_min + extra, 1)
    splits = any(k * n_min <= budget <= k * n_max for k in range(prompts + 1))
    if splits:
        check_budget(budget, prompts, n_min, n_max, allow_skip=True)
        assert whole_groups_below(budget, prompts, n_min, n_max) == budget
    else:
        with pytest.raises(SettingError):
            check_budget(budget, prompts, n_min, n_max, allow_skip=True)
    below = whole_groups_below(budget, prompts, n_min, n_max)
    best = max(b for b in range(budget + 1) if any(k * n_min <= b <= k * n_max for k in range(prompts + 1)))
    assert below == best


def test_buckets_rule_over_candidates_keeps_its_buckets():
    # Fixed budgets and the uniform share as without candidates; the mixed prompts' knapsack may skip.
    history = {"z": [0] * 8, "o": [1] * 8, "m1": [1, 0] * 4, "m2": [1] + [0] * 7, "m3": [1] * 7 + [0]}
    tracker = SuccessRateTracker(window=16)
    for pid, outcomes in history.items():
        tracker.observe([pid] * 8, [float(o) for o in outcomes])
    config = AllocatorConfig(
        rule="buckets", n_min=2, n_max=16, fallback=False, value_function="nonzero_gradient"
    )
    alloc = KnapsackRolloutAllocator(config, tracker)
    ids = ["z", "o", "new", "m1", "m2", "m3"]
    out = alloc.allocate(ids, 24, allow_skip=True)
    n = out.rollouts_per_prompt
    assert n[:3].tolist() == [2, 2, 4]  # zero and one buckets at 2, unseen at 24 // 6
    assert int(n[3:].sum()) == 16 and ((n[3:] == 0) | (n[3:] >= 2)).all()
    p = out.success_rate[3:]
    table = value_table(nonzero_gradient_probability, p, 16)
    assert float(table[np.arange(3), n[3:]].sum()) == pytest.approx(
        brute_force_skip(table, 16, 2, 16), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(3))
def test_the_oracle_over_candidates_is_optimal(seed):
    p = np.random.default_rng(seed).choice([0.0, 0.02, 0.1, 0.5, 0.9, 1.0], 5)
    alloc = KnapsackRolloutAllocator(AllocatorConfig(n_min=2, n_max=6, solver="cpsat"))
    out = alloc.allocate_known(p, 12, allow_skip=True)
    table = value_table(nonzero_gradient_probability, p, 6)
    assert out.expected_value == pytest.approx(brute_force_skip(table, 12, 2, 6), abs=1e-12)
    assert out.expected_informative_rollouts == pytest.approx(
        float(nonzero_gradient_probability(out.rollouts_per_prompt, p) @ out.rollouts_per_prompt)
    )


# --------------------------------------------------------------------------- estimates that keep up


def test_history_is_weighed_by_its_age():
    tracker = SuccessRateTracker()
    tracker.observe(["old"] * 8, [0.0] * 8, step=0)
    tracker.observe(["new"] * 8, [0.0] * 8, step=9)
    alloc = KnapsackRolloutAllocator(AllocatorConfig(history_half_life=3), tracker)
    ids = ["old", "new", "unseen"]
    st_ = tracker.stats(ids)
    weight = np.array([0.5 ** (10 / 3), 0.5 ** (1 / 3), 1.0])
    expected = alloc.population_prior().posterior(st_.successes * weight, st_.num_observations * weight)
    np.testing.assert_allclose(alloc.posterior(ids, step=10).weights, expected.weights, rtol=1e-12)
    out = alloc.allocate(ids, 12, step=10)
    assert out.metrics()["history_half_life"] == 3.0
    # The older failure says less: the prompt seen long ago is believed likelier to be solvable now.
    assert out.success_rate[0] > out.success_rate[1]
    # A skipped prompt is not observed: skipping leaves the tracker alone, and its history ages on.
    before = tracker.state_dict()
    skip = alloc.allocate(ids, 4, step=20, allow_skip=True)
    assert tracker.state_dict() == before
    assert (skip.rollouts_per_prompt == 0).sum() >= 1


def test_half_life_default_is_16_steps_with_candidates_and_off_without():
    tracker = SuccessRateTracker()
    tracker.observe(["a"] * 8, [0.0] * 8, step=0)
    tracker.observe(["b"] * 8, [1.0] * 4 + [0.0] * 4, step=0)
    alloc = KnapsackRolloutAllocator(AllocatorConfig(), tracker)
    ids = ["a", "b", "c"]
    assert alloc.history_half_life() == np.inf and alloc.history_half_life(allow_skip=True) == 16.0
    plain = alloc.allocate(ids, 12, step=16)
    assert plain.history_half_life is None
    np.testing.assert_array_equal(alloc.posterior(ids, step=16).weights, alloc.posterior(ids).weights)
    chosen = alloc.allocate(ids, 12, step=16, allow_skip=True)
    assert chosen.history_half_life == 16.0
    st_ = tracker.stats(ids)
    half = alloc.population_prior().posterior(st_.successes / 2, st_.num_observations / 2)
    np.testing.assert_allclose(
        alloc.posterior(ids, step=16, allow_skip=True).weights, half.weights, rtol=1e-12
    )
    off = KnapsackRolloutAllocator(AllocatorConfig(history_half_life="off"), tracker)
    assert off.allocate(ids, 12, step=16, allow_skip=True).history_half_life is None

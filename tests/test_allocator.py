import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.core.allocator import (
    AllocatorConfig,
    KnapsackRolloutAllocator,
    uniform_allocation,
)
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.core.values import knapsack_value

# The buckets rule with the paper's value and no fallback: the mechanics these tests pin down by hand.
LEGACY = {"rule": "buckets", "fallback": False, "value_function": "knapsack"}


def make_allocator(history: dict[str, list[int]], lengths: dict[str, float] | None = None, **config):
    """Allocator whose tracker saw ``history[id]`` as binary outcomes (window 16, prior 2 x 0.5)."""
    tracker = SuccessRateTracker(window=16, prior_strength=config.pop("prior_strength", 2.0))
    for pid, outcomes in history.items():
        if outcomes:
            length = None if lengths is None else [lengths[pid]] * len(outcomes)
            tracker.observe([pid] * len(outcomes), [float(o) for o in outcomes], length)
    config.setdefault("solver", "dp")
    for name, value in LEGACY.items():
        config.setdefault(name, value)
    return KnapsackRolloutAllocator(AllocatorConfig(**config), tracker)


def test_uniform_allocation_spreads_remainder():
    assert uniform_allocation(10, 4).tolist() == [3, 3, 2, 2]
    assert uniform_allocation(8, 4).tolist() == [2, 2, 2, 2]
    assert uniform_allocation(8, 4).dtype == np.int64


@pytest.mark.parametrize("rule", ["posterior", "buckets"])
@pytest.mark.parametrize("solver", ["cpsat", "dp", "greedy"])
def test_first_batch_is_uniform(rule, solver):
    alloc = KnapsackRolloutAllocator(AllocatorConfig(rule=rule, n_max=16, solver=solver))
    out = alloc.allocate([f"p{i}" for i in range(5)], 42)
    assert out.rollouts_per_prompt.tolist() == [9, 9, 8, 8, 8]  # identical prompts: the uniform split exactly
    assert out.bucket.tolist() == ["unseen"] * 5
    if rule == "buckets":
        assert np.isnan(out.success_rate).all() and out.solver_result is None
    else:
        assert out.success_rate.tolist() == [pytest.approx(0.5)] * 5  # the flat prior before any outcome


def test_metrics_by_hand_three_prompts():
    # A: outcomes 1,0 -> p = 0.5 (prior_strength 0); B: 0,0 -> zero bucket; C: unseen.
    alloc = make_allocator({"A": [1, 0], "B": [0, 0]}, n_min=2, n_max=8, prior_strength=0.0)
    out = alloc.allocate(["A", "B", "C"], 12)
    # Uniform 4,4,4; B gets 2, C keeps 4, A takes the remaining 6.
    assert out.rollouts_per_prompt.tolist() == [6, 2, 4]
    assert out.bucket.tolist() == ["mixed", "zero", "unseen"]
    np.testing.assert_array_equal(out.success_rate, [0.5, 0.0, np.nan])
    m = out.metrics()
    assert all(isinstance(v, float) for v in m.values())
    assert m["rollouts_min"] == 2.0 and m["rollouts_mean"] == 4.0 and m["rollouts_max"] == 6.0
    # Expected informative prompts come from the posterior (population prior + each prompt's history),
    # whichever rule decided: the same numbers for the allocation and for the uniform split.
    post = alloc.population_prior().posterior(np.array([1.0, 0.0, 0.0]), np.array([2.0, 2.0, 0.0]))
    assert m["informative_prompts_expected"] == pytest.approx(
        post.nonzero_gradient(np.array([6, 2, 4])).sum()
    )
    assert m["informative_prompts_uniform_expected"] == pytest.approx(
        post.nonzero_gradient(np.full(3, 4)).sum()
    )
    assert 0 < m["informative_prompts_expected"] < 3 and m["fallback_rollouts"] == 0.0
    assert m["expected_value"] == pytest.approx(62 / 64 * 0.5 * 0.25)
    assert m["uniform_expected_value"] == pytest.approx(14 / 16 * 0.5 * 0.25)
    assert m["solver_optimal"] == 1.0 and m["solver_seconds"] >= 0.0
    assert (m["prompts_unseen"], m["prompts_zero"], m["prompts_one"], m["prompts_mixed"]) == (
        1.0,
        1.0,
        0.0,
        1.0,
    )
    assert m["n_max"] == 8.0 and m["exploration_share"] == 0.0


def test_surplus_goes_to_zero_bucket_first_then_unseen_then_one():
    alloc = make_allocator({"mix": [1, 0, 1], "z": [0, 0, 0], "o": [1, 1]}, n_min=2, n_max=8)
    out = alloc.allocate(["mix", "z", "o", "new"], 28)
    # Uniform 7 each; z=2, o=2, new=7 leave 17 for "mix", which takes 8; 9 spill over:
    # 6 to z (up to n_max), then 1 to new, then 2 to o.
    assert out.rollouts_per_prompt.tolist() == [8, 8, 4, 8]
    alloc2 = make_allocator({"m": [1, 0], "z1": [0], "z2": [0, 0]}, n_min=2, n_max=8)
    out2 = alloc2.allocate(["m", "z1", "z2"], 19)
    # m takes 8; the remaining 11 beyond the zero budgets' 4 spread evenly over z1, z2 (ties: first).
    assert out2.rollouts_per_prompt.tolist() == [8, 6, 5]


def test_surplus_without_knapsack_prompts():
    alloc = make_allocator({"z": [0, 0], "o": [1, 1]}, n_min=1, n_max=10)
    out = alloc.allocate(["o", "z"], 14)
    assert out.rollouts_per_prompt.tolist() == [4, 10]
    assert out.solver_result is None


def test_deficit_shrinks_fixed_budgets_fairly():
    alloc = make_allocator(
        {"m": [1, 0], "z1": [0], "z2": [0], "z3": [0]}, n_min=2, n_max=8, zero_success_budget=6
    )
    out = alloc.allocate(["z1", "z2", "z3", "m"], 16)
    # Zero budgets want 18 but only 14 are left after m's floor of 2: take from the largest, ties first.
    assert out.rollouts_per_prompt.tolist() == [4, 5, 5, 2]


def test_uniform_flag_returns_uniform_with_same_diagnostics():
    alloc = make_allocator({"a": [1, 0, 0], "b": [0, 0]}, n_min=2, n_max=16)
    ids = ["a", "b", "c"]
    out = alloc.allocate(ids, 25, uniform=True)
    assert out.rollouts_per_prompt.tolist() == [9, 8, 8]
    assert out.solver_result is None
    assert out.expected_value == out.uniform_expected_value
    knap = alloc.allocate(ids, 25)
    np.testing.assert_array_equal(out.success_rate, knap.success_rate)
    assert out.bucket.tolist() == knap.bucket.tolist()
    assert knap.uniform_expected_value == out.uniform_expected_value
    assert knap.expected_value >= out.expected_value


def test_prior_success_rate_lets_unseen_prompts_join_the_knapsack():
    alloc = make_allocator({"m": [1, 0, 0]}, n_min=2, n_max=16)
    ids = ["m", "hard", "easy", "unknown"]
    out = alloc.allocate(ids, 32, prior_success_rate=np.array([np.nan, 0.3, 0.999, np.nan]))
    assert out.bucket.tolist() == ["mixed", "unseen", "unseen", "unseen"]
    assert out.success_rate[1] == 0.3 and out.success_rate[2] == 0.999 and np.isnan(out.success_rate[3])
    n = out.rollouts_per_prompt
    assert n[3] == 8  # no estimate: the uniform budget
    assert n[1] > n[2]  # the knapsack prefers p = 0.3 over p = 0.999
    # For a seen prompt the prior mean is the prediction: (1 + 2*0.9) / (3 + 2).
    out2 = alloc.allocate(["m"], 8, prior_success_rate=np.array([0.9]))
    assert out2.success_rate[0] == pytest.approx((1 + 2 * 0.9) / 5)


def test_duplicate_ids_are_allocated_separately():
    alloc = make_allocator({"a": [1, 0]}, n_min=2, n_max=8)
    out = alloc.allocate(["a", "a", "b"], 15)
    assert out.rollouts_per_prompt.sum() == 15 and out.rollouts_per_prompt.size == 3
    assert out.rollouts_per_prompt[2] == 5


def test_exploration_schedule_reserves_share_for_zero_and_unseen():
    history = {"z": [0, 0], "m1": [1, 0], "m2": [1, 1, 0]}
    alloc = make_allocator(history, n_min=2, n_max=16, exploration_schedule="linear:0.5:0:10")
    ids = ["z", "new", "m1", "m2"]
    early = alloc.allocate(ids, 32, step=0)
    assert early.rollouts_per_prompt[:2].tolist() == [8, 8]  # 16 = 0.5 x 32, spread evenly
    assert early.exploration_share == 0.5
    late = alloc.allocate(ids, 32, step=10)
    assert late.rollouts_per_prompt[:2].tolist() == [2, 8]  # share 0: the reference rules
    assert late.metrics()["exploration_share"] == 0.0


def test_n_max_schedule_overrides_n_max():
    alloc = make_allocator({"m": [1, 0, 0], "z": [0]}, n_min=2, n_max=64, n_max_schedule="linear:16:8:10")
    assert alloc.n_max_at(0) == 16 and alloc.n_max_at(5) == 12 and alloc.n_max_at(99) == 8
    out = alloc.allocate(["m", "z", "x"], 24, step=10)
    assert out.rollouts_per_prompt.max() <= 8 and out.n_max == 8
    with pytest.raises(ValueError, match="n_max"):
        alloc.allocate(["m", "z"], 20, step=10)
    with pytest.raises(ValueError, match=r"n_max_schedule.*below n_min"):
        make_allocator(
            {},
            n_min=4,
            n_max=64,
            zero_success_budget=4,
            full_success_budget=4,
            n_max_schedule="linear:16:2:10",
        )
    with pytest.raises(ValueError, match=r"zero_success_budget.*n_max_schedule"):
        make_allocator({}, n_min=2, n_max=64, zero_success_budget=12, n_max_schedule="linear:16:8:10")


def test_token_cost_mode_respects_uniform_token_spend():
    # Short completions at p = 16/18, long ones at p = 3/8 (closer to the value's peak at 1/3).
    history = {"s0": [1] * 15 + [0], "s1": [1] * 15 + [0], "l0": [1, 1, 0, 0, 0, 0], "l1": [1, 1, 0, 0, 0, 0]}
    lengths = {"s0": 10.0, "s1": 10.0, "l0": 1000.0, "l1": 1000.0}
    ids = [*list(history), "new"]
    costs = np.array([10.0, 10.0, 1000.0, 1000.0, 505.0])  # unseen: mean of the seen
    uniform_tokens = costs @ uniform_allocation(40, 5)
    plain = make_allocator(history, lengths, n_min=2, n_max=16, solver="cpsat").allocate(ids, 40)
    assert costs @ plain.rollouts_per_prompt > uniform_tokens  # the plain knapsack favours long ones
    alloc = make_allocator(history, lengths, n_min=2, n_max=16, solver="cpsat", token_cost=True)
    out = alloc.allocate(ids, 40)
    n = out.rollouts_per_prompt
    assert n.sum() == 40 and n[4] == 8
    assert costs @ n <= uniform_tokens + 1e-6
    assert n[2:4].sum() < plain.rollouts_per_prompt[2:4].sum()
    assert out.solver_result is not None and out.solver_result.solver == "cpsat"
    assert out.expected_value <= plain.expected_value


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"n_min": -1}, "n_min"),
        ({"n_min": 9, "n_max": 8}, "n_min"),
        ({"n_max": 0, "n_min": 0}, "n_max"),
        ({"n_min": 2.5}, "n_min"),
        ({"zero_success_budget": 1, "rule": "buckets"}, "zero_success_budget"),
        ({"full_success_budget": 200, "rule": "buckets"}, "full_success_budget"),
        ({"solver": "simplex"}, "solver"),
        ({"value_function": "nope"}, "value_function"),
        ({"time_limit_s": 0}, "time_limit_s"),
        ({"token_cost": True, "solver": "dp"}, "token_cost"),
        ({"n_max_schedule": "cosine:64:8"}, "n_max_schedule"),
        ({"exploration_schedule": "2.0", "rule": "buckets"}, r"exploration_schedule spans"),
        ({"total_steps": 0}, "total_steps"),
    ],
)
def test_bad_config_raises_naming_the_field(config, match):
    with pytest.raises(ValueError, match=match):
        KnapsackRolloutAllocator(AllocatorConfig(**config))


def test_bad_allocate_inputs_raise_naming_the_fix():
    alloc = make_allocator({"a": [1, 0]}, n_min=2, n_max=8)
    with pytest.raises(ValueError, match=r"cannot give each of 2 prompts n_min=2.*raise budget"):
        alloc.allocate(["a", "b"], 3)
    with pytest.raises(ValueError, match="n_max"):
        alloc.allocate(["a", "b"], 17)
    with pytest.raises(ValueError, match="empty"):
        alloc.allocate([], 8)
    with pytest.raises(ValueError, match="prior_success_rate"):
        alloc.allocate(["a", "b"], 8, prior_success_rate=np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="prior_success_rate"):
        alloc.allocate(["a", "b"], 8, prior_success_rate=np.array([0.5]))
    with pytest.raises(ValueError, match="budget"):
        alloc.allocate(["a", "b"], 8.0)  # type: ignore[arg-type]
    alloc.allocate(["a", "b"], 8, prior_success_rate=np.array([np.nan, 0.0]))


def test_state_dict_round_trip_gives_identical_next_allocation():
    rng = np.random.default_rng(0)
    config = {"n_min": 2, "n_max": 16, "solver": "dp"}
    ids = [f"p{i}" for i in range(12)]
    rates = rng.uniform(size=12)
    rates[:2] = [0.0, 1.0]
    live = KnapsackRolloutAllocator(AllocatorConfig(**config))

    def run_step(alloc: KnapsackRolloutAllocator, step: int, batch_rng: np.random.Generator) -> np.ndarray:
        out = alloc.allocate(ids, 96, step=step)
        rows = np.repeat(np.arange(12), out.rollouts_per_prompt)
        rewards = (batch_rng.uniform(size=rows.size) < rates[rows]).astype(float)
        alloc.observe([ids[i] for i in rows], rewards, batch_rng.integers(5, 50, rows.size), step=step)
        return out.rollouts_per_prompt

    for step in range(3):
        run_step(live, step, rng)
    resumed = KnapsackRolloutAllocator(AllocatorConfig(**config))
    resumed.load_state_dict(json.loads(json.dumps(live.state_dict())))
    for step in range(3, 6):
        seed = int(rng.integers(1 << 30))
        a = run_step(live, step, np.random.default_rng(seed))
        b = run_step(resumed, step, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
    assert live.state_dict() == resumed.state_dict()
    with pytest.raises(ValueError, match="version"):
        resumed.load_state_dict({"version": 0})
    other = KnapsackRolloutAllocator(AllocatorConfig(**config), SuccessRateTracker(window=4))
    with pytest.warns(UserWarning, match=r"ema_decay=0.9 \(now None\), window=None \(now 4\)"):
        other.load_state_dict(live.state_dict())
    assert other.tracker.window is None and other.tracker.ema_decay == 0.9


@st.composite
def batches(draw, max_prompts: int = 8, max_n: int = 12):
    n_max = draw(st.integers(1, max_n))
    n_min = draw(st.integers(0, min(n_max, 3)))
    zb = draw(st.integers(n_min, n_max))
    fb = draw(st.integers(n_min, n_max))
    m = draw(st.integers(1, max_prompts))
    pool = [f"p{i}" for i in range(m + 2)]
    ids = draw(st.lists(st.sampled_from(pool), min_size=m, max_size=m))
    history = {pid: draw(st.lists(st.integers(0, 1), max_size=5)) for pid in pool}
    prior = draw(
        st.one_of(st.none(), st.lists(st.one_of(st.just(np.nan), st.floats(0, 1)), min_size=m, max_size=m))
    )
    budget = draw(st.integers(n_min * m, n_max * m))
    share = draw(st.sampled_from([None, "0.25", "linear:0.6:0:5"]))
    step = draw(st.integers(0, 6))
    config = {"n_min": n_min, "n_max": n_max, "zero_success_budget": zb, "full_success_budget": fb}
    return config, ids, history, None if prior is None else np.array(prior), budget, share, step


@settings(max_examples=150, deadline=None)
@given(batches())
def test_invariants(batch):
    config, ids, history, prior, budget, share, step = batch
    alloc = make_allocator(history, **config, exploration_schedule=share, solver="dp")
    out = alloc.allocate(ids, budget, step=step, prior_success_rate=prior)
    n = out.rollouts_per_prompt
    assert n.dtype == np.int64 and n.sum() == budget
    assert n.min() >= config["n_min"] and n.max() <= config["n_max"]
    uni = uniform_allocation(budget, len(ids))
    np.testing.assert_array_equal(
        alloc.allocate(ids, budget, step=step, uniform=True).rollouts_per_prompt, uni
    )
    if share is not None:
        return
    zero, one = out.bucket == "zero", out.bucket == "one"
    unseen = (out.bucket == "unseen") & np.isnan(out.success_rate)
    knap = ~(zero | one | unseen)
    fixed = (
        config["zero_success_budget"] * zero.sum()
        + config["full_success_budget"] * one.sum()
        + uni[unseen].sum()
    )
    rest = budget - fixed
    if config["n_min"] * knap.sum() <= rest <= config["n_max"] * knap.sum():
        assert (n[zero] == config["zero_success_budget"]).all()
        assert (n[one] == config["full_success_budget"]).all()
        np.testing.assert_array_equal(n[unseen], uni[unseen])
    elif rest > config["n_max"] * knap.sum():
        assert (n[knap] == config["n_max"]).all()
        # The surplus goes to all-fail and unseen prompts (equal increments) before the all-success ones.
        if (n[one] > config["full_success_budget"]).any():
            assert (n[zero | unseen] == config["n_max"]).all()


@settings(max_examples=150, deadline=None)
@given(batches(), st.booleans(), st.sampled_from(["posterior", "buckets"]), st.integers(1, 4))
def test_invariants_every_rule(batch, fallback, rule, min_observations):
    config, ids, history, prior, budget, _, step = batch
    config = {**config, "rule": rule, "fallback": fallback, "min_observations": min_observations}
    alloc = make_allocator(history, **config, solver="dp")
    out = alloc.allocate(ids, budget, step=step, prior_success_rate=prior)
    n = out.rollouts_per_prompt
    assert n.sum() == budget and n.min() >= config["n_min"] and n.max() <= config["n_max"]
    assert 0 <= out.metrics()["informative_prompts_expected"] <= len(ids) + 1e-9
    assert out.fallback_rollouts == 0 or (rule == "buckets" and fallback)
    again = make_allocator(history, **config, solver="cpsat").allocate(
        ids, budget, step=step, prior_success_rate=prior
    )
    assert again.expected_value == pytest.approx(out.expected_value, rel=1e-9, abs=1e-12)  # both exact


def brute_force(p: np.ndarray, total: int, n_min: int, n_max: int) -> float:
    best = -np.inf
    for combo in itertools.product(range(n_min, n_max + 1), repeat=p.size):
        if sum(combo) == total:
            best = max(best, float(knapsack_value(np.array(combo), p).sum()))
    return best


@pytest.mark.parametrize("solver", ["cpsat", "dp", "greedy"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_mixed_part_is_optimal_against_brute_force(solver, data):
    n_min = data.draw(st.integers(1 if solver == "greedy" else 0, 2))
    n_max = data.draw(st.integers(n_min + 2, 6))
    k = data.draw(st.integers(1, 4))
    history = {}
    for i in range(k):
        length = data.draw(st.integers(2, 8))
        wins = data.draw(st.integers(1, length - 1))
        history[f"m{i}"] = [1] * wins + [0] * (length - wins)
    history["z"] = [0, 0]
    zb = data.draw(st.integers(n_min, n_max))
    total = data.draw(st.integers(n_min * k + 1, n_max * k - 1))  # the solver has a real choice
    alloc = make_allocator(history, n_min=n_min, n_max=n_max, zero_success_budget=zb, solver=solver)
    out = alloc.allocate(list(history), total + zb)
    mixed = out.bucket == "mixed"
    assert mixed.sum() == k and out.rollouts_per_prompt[~mixed].tolist() == [zb]
    got = float(knapsack_value(out.rollouts_per_prompt[mixed], out.success_rate[mixed]).sum())
    assert got == pytest.approx(
        brute_force(out.success_rate[mixed], total, n_min, n_max), rel=1e-9, abs=1e-15
    )


def test_fallback_by_hand():
    # A and B at p = 1/2 need log(0.1) / log(0.5) = 3.3 -> 3 extra rollouts each for a 90% chance of a mixed
    # group. Z keeps 2 and the unseen U the uniform 8, which leaves 22 - 2 x 2 = 18 extra: the knapsack gets
    # 6, the other 12 go evenly to Z and U (the reference's "success rate 0" set), in index order.
    alloc = make_allocator(
        {"A": [1, 0], "B": [0, 1], "Z": [0] * 8}, n_min=2, n_max=32, fallback=True, prior_strength=0.0
    )
    out = alloc.allocate(["A", "Z", "B", "U"], 32)
    assert out.rollouts_per_prompt.tolist() == [5, 2 + 6, 5, 8 + 6]
    assert out.fallback_rollouts == 12 and out.metrics()["fallback_rollouts"] == 12.0
    # Without the fallback everything goes to the mixed prompts.
    plain = make_allocator({"A": [1, 0], "B": [0, 1], "Z": [0] * 8}, n_min=2, n_max=32, prior_strength=0.0)
    assert plain.allocate(["A", "Z", "B", "U"], 32).rollouts_per_prompt.tolist() == [11, 2, 11, 8]
    # A cap binds: what Z cannot take goes to U; no all-fail or unseen prompt: to the all-success ones.
    capped = make_allocator({"A": [1, 0], "Z": [0] * 8}, n_min=2, n_max=12, fallback=True, prior_strength=0.0)
    assert capped.allocate(["A", "Z", "U"], 27).rollouts_per_prompt.tolist() == [5, 10, 12]
    solved = make_allocator({"A": [1, 0], "S": [1] * 8}, n_min=2, n_max=32, fallback=True, prior_strength=0.0)
    assert solved.allocate(["A", "S"], 16).rollouts_per_prompt.tolist() == [5, 11]


def test_fallback_costs_follow_the_confidence():
    # p = 0.1: log(1 - c) / log(0.9) rollouts: 21.9 at c = 0.9, 6.6 at c = 0.5; n_max caps it.
    history = {"h": [1] + [0] * 9, "z": [0, 0]}
    for confidence, extra in ((0.9, 21), (0.5, 6)):
        alloc = make_allocator(
            history, n_min=2, n_max=64, fallback=True, fallback_confidence=confidence, prior_strength=0.0
        )
        out = alloc.allocate(["h", "z"], 64)
        assert out.rollouts_per_prompt.tolist() == [2 + extra, 64 - 2 - extra]
    capped = make_allocator(history, n_min=2, n_max=16, fallback=True, prior_strength=0.0)
    assert capped.allocate(["h", "z"], 32).rollouts_per_prompt.tolist() == [16, 16]  # 2 + min(16, 21) > 16


def test_min_observations_treats_short_histories_as_unseen():
    history = {"z": [0] * 7, "m": [1, 0, 1, 0, 0, 0, 1, 0]}
    short = make_allocator(history, n_min=2, n_max=16, min_observations=8)
    out = short.allocate(["z", "m", "x"], 24)
    assert out.bucket.tolist() == ["unseen", "mixed", "unseen"]
    assert out.rollouts_per_prompt.tolist() == [8, 8, 8]  # z keeps the uniform budget, m takes what is left
    full = make_allocator(history, n_min=2, n_max=16, min_observations=1)
    assert full.allocate(["z", "m", "x"], 24).bucket.tolist() == ["zero", "mixed", "unseen"]
    with pytest.raises(ValueError, match="min_observations"):
        AllocatorConfig(min_observations=0).validate()
    with pytest.raises(ValueError, match="fallback_confidence"):
        AllocatorConfig(fallback_confidence=1.0).validate()
    with pytest.raises(ValueError, match="rule"):
        AllocatorConfig(rule="bandit").validate()
    with pytest.raises(ValueError, match="exploration_schedule"):
        AllocatorConfig(rule="posterior", exploration_schedule="0.2").validate()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_buckets_with_fallback_knapsack_part_is_optimal(data):
    n_min = data.draw(st.integers(1, 2))
    n_max = data.draw(st.integers(n_min + 2, 7))
    k = data.draw(st.integers(1, 3))
    history = {}
    for i in range(k):
        length = data.draw(st.integers(2, 8))
        history[f"m{i}"] = [1] * data.draw(st.integers(1, length - 1)) + [0] * length
    history["z"] = [0] * data.draw(st.integers(1, 4))
    ids = [*list(history), "new"]
    budget = data.draw(st.integers(n_min * len(ids), n_max * len(ids)))
    alloc = make_allocator(
        history, n_min=n_min, n_max=n_max, fallback=True, solver="cpsat", prior_strength=0.0
    )
    out = alloc.allocate(ids, budget)
    mixed = out.bucket == "mixed"
    total = int(out.rollouts_per_prompt[mixed].sum())
    got = float(knapsack_value(out.rollouts_per_prompt[mixed], out.success_rate[mixed]).sum())
    assert got == pytest.approx(
        brute_force(out.success_rate[mixed], total, n_min, n_max), rel=1e-9, abs=1e-15
    )


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_posterior_rule_is_optimal_against_brute_force(data):
    n_min = data.draw(st.integers(0, 2))
    n_max = data.draw(st.integers(n_min + 1, 6))
    m = data.draw(st.integers(1, 4))
    history = {f"q{i}": data.draw(st.lists(st.integers(0, 1), max_size=6)) for i in range(m)}
    # The bucket budgets play no part in the posterior rule: any value passes.
    budget = data.draw(st.integers(n_min * m, n_max * m))
    value = data.draw(st.sampled_from(["nonzero_gradient", "knapsack"]))
    alloc = make_allocator(
        history, rule="posterior", value_function=value, n_min=n_min, n_max=n_max, solver="cpsat"
    )
    ids = list(history)
    out = alloc.allocate(ids, budget)
    st_ = alloc.tracker.stats(ids)
    table = (
        alloc.population_prior()
        .posterior(st_.successes, st_.num_observations)
        .value_table(alloc._value_fn, n_max)
    )
    best = max(
        sum(table[i, c] for i, c in enumerate(combo))
        for combo in itertools.product(range(n_min, n_max + 1), repeat=m)
        if sum(combo) == budget
    )
    assert out.expected_value == pytest.approx(best, rel=1e-9, abs=1e-15)


def test_posterior_rule_feeds_hard_but_solvable_prompts():
    # A pool where prompts that fail 8 of 8 are often solvable (p ~ 0.1): a fresh 0/8 prompt is worth more
    # rollouts than a prompt that has been solved 16 of 16, not the fixed 2 of the buckets rule.
    rng = np.random.default_rng(0)
    history = {f"h{i}": list(rng.binomial(1, 0.1, 8)) for i in range(200)}
    history |= {f"s{i}": [1] * 16 for i in range(200)}
    history["zero"] = [0] * 8
    history["solved"] = [1] * 16
    post = make_allocator(history, rule="posterior", value_function="nonzero_gradient", n_min=2, n_max=64)
    out = post.allocate(["zero", "solved"], 16)
    assert out.rollouts_per_prompt.tolist() == [14, 2]
    buckets = make_allocator(history, n_min=2, n_max=64)
    assert buckets.allocate(["zero", "solved"], 16).rollouts_per_prompt.tolist() == [14, 2]  # surplus
    buckets_mixed = make_allocator(history, n_min=2, n_max=64)
    mixed_out = buckets_mixed.allocate(["zero", "solved", "h0"], 24)
    assert mixed_out.rollouts_per_prompt[0] == 2  # the buckets rule freezes an all-fail prompt at 2

import itertools
import json
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.core.allocator import AllocatorConfig, KnapsackRolloutAllocator
from knapsack_trl.core.budget import uniform_allocation
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.pilot import (
    PilotRound,
    allocate_second_round,
    final_mixed_probability,
    second_round_budget,
)
from knapsack_trl.core.posterior import PopulationPrior
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.experiments.benchmarks import allocation as sim

# Midpoints of a fine uniform grid: the flat prior on it makes every posterior a Beta to ~1e-7.
FINE = (np.arange(4000) + 0.5) / 4000


class FlatPriorAllocator(KnapsackRolloutAllocator):
    """An allocator whose population prior is flat on ``FINE``: after ``s`` of ``k`` the posterior is
    Beta(s + 1, k - s + 1), so every expectation has a closed form."""

    def population_prior(self) -> PopulationPrior:
        return PopulationPrior.uniform(FINE)


def make_allocator(history: dict[str, list[int]], **config) -> KnapsackRolloutAllocator:
    tracker = SuccessRateTracker()
    for pid, outcomes in history.items():
        if outcomes:
            tracker.observe([pid] * len(outcomes), [float(o) for o in outcomes])
    return KnapsackRolloutAllocator(AllocatorConfig(**config), tracker)


def mixed_by_enumeration(s: int, f: int, m: int, p: np.ndarray) -> np.ndarray:
    """P(the final group is mixed), summing the binomial over the ``m`` new outcomes."""
    total = np.zeros_like(p)
    for j in range(m + 1):
        if s + j > 0 and f + m - j > 0:
            total += comb(m, j) * p**j * (1 - p) ** (m - j)
    return total


def reference_table(alloc, ids, wins, scored, rows, n_min, n_max, weight):
    """Independent table over final sizes: the history posterior times the pilot likelihood, and the
    value by enumeration; -inf outside each prompt's allowed sizes."""
    history = alloc.posterior(ids)
    grid = history.grid
    table = np.full((len(ids), n_max + 1), -np.inf)
    for i in range(len(ids)):
        s, f = int(wins[i]), int(scored[i] - wins[i])
        post = history.weights[i] * grid**s * (1 - grid) ** f
        post /= post.sum()
        for n in range(max(n_min, rows[i]), n_max + 1):
            table[i, n] = float(post @ (weight(grid) * mixed_by_enumeration(s, f, n - rows[i], grid)))
    return table


WEIGHTS = {"nonzero_gradient": lambda p: np.ones_like(p), "knapsack": lambda p: p * (1 - p) ** 2}


@pytest.mark.parametrize(("s", "f"), [(0, 0), (0, 1), (0, 3), (2, 0), (1, 1), (3, 2)])
def test_final_mixed_probability_matches_enumeration(s, f):
    p = np.array([0.0, 0.01, 0.3, 0.5, 0.9, 1.0])
    for m in range(6):
        np.testing.assert_allclose(
            final_mixed_probability(s, f, m, p), mixed_by_enumeration(s, f, m, p), rtol=1e-12, atol=1e-15
        )


def test_closed_form_under_a_flat_prior():
    # Pilots of 2: A failed twice, B succeeded twice, C is mixed. Beta(1, 3) after 0/2 gives
    # E[(1-p)^m] = 3 / (3 + m), so A's group ends mixed with chance m / (3 + m); B likewise by symmetry.
    alloc = FlatPriorAllocator(AllocatorConfig(n_min=2, n_max=16, solver="dp"))
    out = allocate_second_round(alloc, ["A", "B", "C"], [0, 2, 1], 2, 6)
    assert out.extra_rollouts.tolist() == [3, 3, 0]
    assert out.group_sizes.tolist() == [5, 5, 2]
    assert out.pilot_mixed.tolist() == [False, False, True] and out.pilot_informative == 1
    assert out.expected_informative == pytest.approx(1 + 2 * 3 / 6, rel=1e-6)
    # Evened out instead: 4, 4, 4, i.e. 2 more each.
    assert out.uniform_expected_informative == pytest.approx(1 + 2 * 2 / 5, rel=1e-6)
    assert out.success_rate.tolist() == pytest.approx([1 / 4, 3 / 4, 1 / 2], rel=1e-6)
    # B's pilot is 0/3 (Beta(1, 4): chance m / (4 + m)). Gains 1/4, 3/20, 1/10 for A and 1/5, 2/15, 2/21
    # for B: 5 more rollouts go 3 to A and 2 to B.
    odd = allocate_second_round(alloc, ["A", "B", "C"], [0, 0, 1], [2, 3, 2], 5)
    assert odd.extra_rollouts.tolist() == [3, 2, 0]
    assert odd.expected_informative == pytest.approx(1 + 3 / 6 + 2 / 6, rel=1e-6)
    # Evened out instead: final sizes 4, 4, 4, i.e. 2, 1, 2 more.
    assert odd.uniform_expected_informative == pytest.approx(1 + 2 / 5 + 1 / 5, rel=1e-6)
    m = odd.metrics()
    assert m["second_round_share"] == pytest.approx(5 / 12) and m["second_round_prompts"] == 2.0
    assert m["pilot_informative_prompts"] == 1.0 and m["spare_rollouts"] == 0.0


def test_paper_value_closed_form_under_a_flat_prior():
    # Under Beta(1, 3) (after 0/2), E[p (1-p)^a] = 3 / ((a + 3)(a + 4)), so the paper's value of A's group
    # after m more is E[p (1-p)^2 (1 - (1-p)^m)] = 1/10 - 3 / ((5 + m)(6 + m)). C is mixed: its value is
    # E[p (1-p)^2] under Beta(2, 2) = 1/10 whatever it gets, so A takes the whole second round.
    alloc = FlatPriorAllocator(AllocatorConfig(n_min=2, n_max=16, solver="cpsat", value_function="knapsack"))
    out = allocate_second_round(alloc, ["A", "C"], [0, 1], 2, 5)
    assert out.extra_rollouts.tolist() == [5, 0]
    assert out.expected_value == pytest.approx(1 / 10 - 3 / (10 * 11) + 1 / 10, rel=1e-5)
    assert out.expected_informative == pytest.approx(1 + 5 / 8, rel=1e-6)


def test_no_pilot_is_the_posterior_rule_exactly():
    rng = np.random.default_rng(1)
    history = {f"q{i}": list(rng.binomial(1, rng.uniform(), int(rng.integers(0, 9)))) for i in range(12)}
    for value in ("nonzero_gradient", "knapsack"):
        alloc = make_allocator(history, n_min=2, n_max=24, value_function=value)
        ids = list(history)
        plain = alloc.allocate(ids, 96)
        second = allocate_second_round(alloc, ids, 0, 0, 96)
        np.testing.assert_array_equal(second.group_sizes, plain.rollouts_per_prompt)
        assert second.expected_value == plain.expected_value
        assert second.expected_informative == pytest.approx(plain.expected_informative, rel=1e-12)
        assert second.uniform_expected_informative == pytest.approx(
            plain.uniform_expected_informative, rel=1e-12
        )
        np.testing.assert_array_equal(second.success_rate, plain.success_rate)


def test_posterior_is_history_times_the_pilot_likelihood():
    alloc = make_allocator({"a": [1, 0, 0, 0], "b": [1, 1], "c": []}, n_min=2, n_max=8)
    ids = ["a", "b", "c"]
    prior = np.array([np.nan, 0.2, 0.7])
    before = alloc.posterior(ids, prior)
    after = allocate_second_round(alloc, ids, [0, 3, 1], [2, 3, 4], 12, prior_success_rate=prior).posterior
    g = before.grid
    expected = before.weights * np.stack([(1 - g) ** 2, g**3, g * (1 - g) ** 3])
    np.testing.assert_allclose(
        after.weights, expected / expected.sum(axis=1, keepdims=True), rtol=1e-10, atol=1e-300
    )
    # The history part is what the posterior rule uses in allocate.
    np.testing.assert_array_equal(before.mean, alloc.allocate(ids, 12, prior_success_rate=prior).success_rate)


@st.composite
def pilot_batches(draw, max_prompts: int = 4, max_n: int = 6):
    n_max = draw(st.integers(1, max_n))
    n_min = draw(st.integers(0, min(n_max, 2)))
    m = draw(st.integers(1, max_prompts))
    pool = [f"p{i}" for i in range(m + 1)]
    ids = draw(st.lists(st.sampled_from(pool), min_size=m, max_size=m))
    history = {pid: draw(st.lists(st.integers(0, 1), max_size=6)) for pid in pool}
    rows = np.array(draw(st.lists(st.integers(0, min(n_max, 3)), min_size=m, max_size=m)))
    scored = np.array([draw(st.integers(0, int(r))) for r in rows]) if draw(st.booleans()) else rows
    wins = np.array([draw(st.integers(0, int(c))) for c in scored])
    lower = np.maximum(rows, n_min)
    budget = draw(st.integers(int((lower - rows).sum()), int((n_max - rows).sum())))
    value = draw(st.sampled_from(["nonzero_gradient", "knapsack"]))
    config = {"n_min": n_min, "n_max": n_max, "value_function": value}
    return config, history, ids, wins, scored, rows, budget


@pytest.mark.parametrize("solver", ["cpsat", "dp", "greedy"])
@settings(max_examples=60, deadline=None)
@given(pilot_batches())
def test_second_round_is_optimal_against_brute_force(solver, batch):
    config, history, ids, wins, scored, rows, budget = batch
    alloc = make_allocator(history, **config, solver=solver)
    out = allocate_second_round(alloc, ids, wins, rows, budget, pilot_scored=scored)
    n_min, n_max = config["n_min"], config["n_max"]
    ref = reference_table(alloc, ids, wins, scored, rows, n_min, n_max, WEIGHTS[config["value_function"]])
    total = budget + int(rows.sum())
    best = max(
        sum(ref[i, c] for i, c in enumerate(combo))
        for combo in itertools.product(range(n_max + 1), repeat=len(ids))
        if sum(combo) == total and all(np.isfinite(ref[i, c]) for i, c in enumerate(combo))
    )
    got = float(ref[np.arange(len(ids)), out.group_sizes].sum())
    assert out.expected_value == pytest.approx(got, rel=1e-9, abs=1e-12)  # its own table agrees
    # Greedy is exact where every row is concave on its range: a scored pilot, or no pilot and n_min >= 1.
    concave = ((rows == 0) & (n_min >= 1)) | (scored > 0)
    if solver != "greedy" or concave.all():
        assert got == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert out.solver_result is not None and out.solver_result.optimal


@settings(max_examples=150, deadline=None)
@given(pilot_batches(max_prompts=8, max_n=12), st.sampled_from(["cpsat", "dp", "greedy"]), st.integers(0, 5))
def test_invariants(batch, solver, step):
    config, history, ids, wins, scored, rows, budget = batch
    alloc = make_allocator(history, **config, solver=solver)
    state = json.dumps(alloc.state_dict())
    out = allocate_second_round(alloc, ids, wins, rows, budget, step=step, pilot_scored=scored)
    assert json.dumps(alloc.state_dict()) == state  # the tracker is read, never written
    extra, sizes = out.extra_rollouts, out.group_sizes
    assert extra.dtype == np.int64 and extra.sum() == budget and (extra >= 0).all()
    np.testing.assert_array_equal(sizes, rows + extra)
    assert sizes.min() >= config["n_min"] and sizes.max() <= config["n_max"]
    assert 0 <= out.pilot_informative <= out.expected_informative + 1e-9 <= len(ids) + 2e-9
    # A mixed pilot keeps its value whatever it gets (as does a group with no scored outcome that cannot
    # reach 2 more), so it only takes what nothing else can use, and those rollouts even out such prompts'
    # final sizes.
    floor = np.maximum(rows, config["n_min"])
    settled = out.pilot_mixed | ((scored == 0) & (config["n_max"] - rows < 2))
    raised = settled & (sizes > floor)
    assert out.spare_rollouts == int((sizes - floor)[settled].sum())
    if raised.any():
        top = sizes[raised].max()
        assert (sizes[raised] >= top - 1).all() and (floor[settled & ~raised] >= top - 1).all()
    # Deterministic, and a resumed allocator decides the same.
    again = allocate_second_round(alloc, ids, wins, rows, budget, step=step, pilot_scored=scored)
    np.testing.assert_array_equal(again.extra_rollouts, extra)
    resumed = KnapsackRolloutAllocator(AllocatorConfig(**config, solver=solver))
    resumed.load_state_dict(json.loads(state))
    np.testing.assert_array_equal(
        allocate_second_round(
            resumed, ids, wins, rows, budget, step=step, pilot_scored=scored
        ).extra_rollouts,
        extra,
    )
    uni = allocate_second_round(alloc, ids, wins, rows, budget, step=step, pilot_scored=scored, uniform=True)
    assert uni.solver_result is None and uni.extra_rollouts.sum() == budget
    assert uni.expected_informative == pytest.approx(out.uniform_expected_informative, rel=1e-12)
    topped = uni.extra_rollouts > 0  # the uniform second round water-fills the final sizes
    if topped.any():
        top = uni.group_sizes[topped].max()
        assert (uni.group_sizes[topped] >= top - 1).all() and (uni.group_sizes[~topped] >= top - 1).all()


@pytest.mark.parametrize("k", [2, 4, 8])
def test_a_pilot_of_the_whole_budget_is_the_uniform_split(k):
    alloc = make_allocator({"a": [1, 1, 1, 1], "b": [0, 0]}, n_min=2, n_max=8)
    ids = ["a", "b", "c", "d"]
    budget = second_round_budget(k, 4, 4 * k)
    assert budget == 0
    out = allocate_second_round(alloc, ids, [k, 0, 1, 0], k, budget)
    assert out.extra_rollouts.tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(out.group_sizes, uniform_allocation(4 * k, 4))


@pytest.mark.parametrize(("k", "rest"), [(1, 13), (2, 6), (3, 3)])
def test_uniform_second_round_with_equal_pilots_is_the_uniform_split(k, rest):
    alloc = make_allocator({}, n_min=2, n_max=16)
    ids = ["a", "b", "c", "d"]
    out = allocate_second_round(alloc, ids, [0, 1, 0, 1], k, rest, uniform=True)
    np.testing.assert_array_equal(out.group_sizes, uniform_allocation(4 * k + rest, 4))


def test_a_pilot_below_n_min_is_topped_up_first():
    # n_min 4, pilots of 1: every prompt needs 3 more whatever it showed; the last 3 go by value, and
    # after 0/1 (Beta(1, 2)) or 1/1 a group ends mixed with chance m / (2 + m): one more each.
    alloc = FlatPriorAllocator(AllocatorConfig(n_min=4, n_max=16, solver="dp"))
    out = allocate_second_round(alloc, ["A", "B", "C"], [0, 1, 0], 1, 9 + 3)
    assert out.extra_rollouts.tolist() == [4, 4, 4]
    assert out.expected_informative == pytest.approx(3 * 4 / 6, rel=1e-6)
    with pytest.raises(ValueError, match=r"n_min=4 \(that takes 9\)"):
        allocate_second_round(alloc, ["A", "B", "C"], [0, 1, 0], 1, 8)


def test_spare_budget_evens_out_the_mixed_prompts():
    alloc = FlatPriorAllocator(AllocatorConfig(n_min=2, n_max=8, solver="greedy"))
    # Every pilot mixed: nothing can raise a prompt's chance; the 7 rollouts water-fill 2, 2, 3 to 4, 4, 4
    # and the last 2 go to the earliest prompts.
    out = allocate_second_round(alloc, ["A", "B", "C"], [1, 1, 2], [2, 2, 3], 7)
    assert out.group_sizes.tolist() == [5, 5, 4]
    assert out.spare_rollouts == 7 and out.metrics()["spare_rollouts"] == 7.0
    # An all-fail prompt takes rollouts up to n_max first; only the rest go to the mixed prompts.
    mixed = allocate_second_round(alloc, ["M1", "F", "M2"], [1, 0, 1], 2, 10)
    assert mixed.group_sizes.tolist() == [4, 8, 4] and mixed.spare_rollouts == 4


def test_second_round_budget_checks_name_the_setting():
    assert second_round_budget(2, 8, 64) == 48
    assert second_round_budget(3, 8, 48, num_processes=4, n_max=8) == 24
    with pytest.raises(ValueError, match=r"pilot_rollouts=3 x 8 prompts = 24 > budget=16"):
        second_round_budget(3, 8, 16)
    with pytest.raises(ValueError, match=r"pilot_rollouts=1 x 6 prompts = 6 .* over 4 processes"):
        second_round_budget(1, 6, 24, num_processes=4)
    with pytest.raises(ValueError, match=r"pilot_rollouts=-1 must be an integer >= 1"):
        second_round_budget(-1, 8, 64)
    with pytest.raises(ValueError, match=r"pilot_rollouts=True"):
        second_round_budget(True, 8, 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pilot_rollouts=9 is larger than n_max=8"):
        second_round_budget(9, 2, 64, n_max=8)


def test_bad_second_round_inputs_raise_naming_the_fix():
    alloc = make_allocator({"a": [1, 0]}, n_min=2, n_max=8)
    ids = ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        allocate_second_round(alloc, [], [], 2, 4)
    with pytest.raises(ValueError, match="pilot_successes has 3 entries for 2 prompts"):
        allocate_second_round(alloc, ids, [0, 1, 1], 2, 4)
    with pytest.raises(ValueError, match="pilot_successes exceeds"):
        allocate_second_round(alloc, ids, [3, 0], 2, 4)
    with pytest.raises(ValueError, match="pilot_scored exceeds pilot_rollouts"):
        allocate_second_round(alloc, ids, [0, 0], 2, 4, pilot_scored=[3, 1])
    with pytest.raises(ValueError, match="pilot_rollouts must hold whole numbers"):
        allocate_second_round(alloc, ids, [0, 0], 1.5, 4)
    with pytest.raises(ValueError, match="budget=-1"):
        allocate_second_round(alloc, ids, [0, 0], 2, -1)
    with pytest.raises(ValueError, match=r"pilot_rollouts=9 is larger than n_max=8"):
        allocate_second_round(alloc, ids, [0, 0], 9, 0)
    with pytest.raises(ValueError, match=r"raise n_max"):
        allocate_second_round(alloc, ids, [0, 0], 2, 13)
    with pytest.raises(ValueError, match=r"n_min=2 \(that takes 2\)"):
        allocate_second_round(alloc, ids, [0, 0], 1, 1)
    with pytest.raises(ValueError, match="prior_success_rate"):
        allocate_second_round(alloc, ids, [0, 0], 2, 4, prior_success_rate=np.array([0.5, 1.5]))
    tokens = make_allocator({}, n_min=2, n_max=8, token_cost=True)
    with pytest.raises(ValueError, match="token_cost"):
        allocate_second_round(tokens, ids, [0, 0], 2, 4)
    explore = make_allocator({}, rule="buckets", n_min=2, n_max=8, exploration_schedule="0.2")
    with pytest.raises(ValueError, match="exploration_schedule"):
        allocate_second_round(explore, ids, [0, 0], 2, 4)


def test_a_value_without_the_mixed_form_is_refused():
    def shaped(n, p):  # rewards group size for its own sake: no value for a group already partly drawn
        return np.sqrt(n) * p

    alloc = make_allocator({}, n_min=2, n_max=8, value_function=shaped)
    with pytest.raises(ValueError, match=r"value_function='shaped' is not of the form"):
        allocate_second_round(alloc, ["a"], [0], 2, 2)

    def scaled(n, p):  # 3 x P(mixed): the form holds with w = 3
        return 3 * (1 - p**n - (1 - p) ** n) * (n >= 2)

    fine = make_allocator({}, n_min=2, n_max=8, value_function=scaled)
    out = allocate_second_round(fine, ["a", "b"], [0, 1], 2, 4)
    assert out.expected_value == pytest.approx(3 * out.expected_informative, rel=1e-9)


@pytest.fixture
def small_mix(monkeypatch: pytest.MonkeyPatch) -> str:
    mix = sim.Mix("test", lambda rng, size: rng.uniform(0.0, 1.0, size), prompts=8, revisit=2, steps=12)
    monkeypatch.setitem(sim.MIXES, "small", mix)
    return "small"


def test_simulator_pilot_arms_leave_the_other_arms_unchanged(small_mix: str) -> None:
    alone = sim.simulate(small_mix, 3, ["default"])
    together = sim.simulate(small_mix, 3, ["default", "pilot_k2", "pilot_oracle_k2", "pilot_k2_reference"])
    for name in ("uniform", "oracle", "default"):
        for key in ("informative_per_step", "realised_per_step", "rollout_ratio"):
            assert together[name][key] == alone[name][key]
    # Scored by the expected count given the realised pilot, which the two-phase oracle maximises at the
    # true rates: with the same pilot draws, no two-phase rule of that k can beat it on any step.
    for name in ("pilot_k2", "pilot_k2_reference"):
        assert (
            together[name]["informative_per_step"]
            <= together["pilot_oracle_k2"]["informative_per_step"] + 1e-9
        )


def test_simulator_pilot_of_the_whole_budget_is_uniform(
    small_mix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sim.PILOT_ARMS, "pilot_k8", sim.Arm("everything in the pilot", pilot=8))
    out = sim.simulate(small_mix, 1, ["pilot_k8"])
    # The same draws as uniform's groups; with nothing left to allocate the score is the realised count.
    assert out["pilot_k8"]["realised_per_step"] == out["uniform"]["realised_per_step"]
    assert out["pilot_k8"]["informative_per_step"] == pytest.approx(out["pilot_k8"]["realised_per_step"])


def test_simulator_pilot_arm_matches_an_independent_run(small_mix: str) -> None:
    out = sim.simulate(small_mix, 2, ["pilot_k2"])
    mix = sim.MIXES[small_mix]
    rng = np.random.default_rng([2, sorted(sim.MIXES).index(small_mix)])
    rates = sim._drift(mix.sample(rng, 16), mix.steps, sim.SIGMA, rng)
    order = sim._order(16, 8, mix.steps, rng)
    draws = rng.random((mix.steps, 8, sim.N_MAX))
    alloc = KnapsackRolloutAllocator(AllocatorConfig(n_min=2, n_max=sim.N_MAX, solver="greedy"))
    expected, realised = [], []
    for t in range(mix.steps):
        ids = [f"q{i}" for i in order[t]]
        p = rates[t, order[t]]
        outcomes = draws[t] < p[:, None]
        pilot = outcomes[:, :2].sum(axis=1)
        sizes = allocate_second_round(alloc, ids, pilot, 2, 64 - 16, step=t).group_sizes
        groups = [outcomes[i, : sizes[i]] for i in range(8)]
        realised.append(sum(0 < g.sum() < g.size for g in groups))
        chance = [
            1.0
            if 0 < pilot[i] < 2
            else 1 - (1 - p[i]) ** (sizes[i] - 2)
            if pilot[i] == 0
            else 1 - p[i] ** (sizes[i] - 2)
            for i in range(8)
        ]
        expected.append(sum(chance))
        alloc.observe(
            [ids[i] for i in range(8) for _ in groups[i]], np.concatenate(groups).astype(float), step=t
        )
    assert out["pilot_k2"]["informative_per_step"] == pytest.approx(np.mean(expected), rel=1e-12)
    assert out["pilot_k2"]["realised_per_step"] == pytest.approx(np.mean(realised), rel=1e-12)


def test_simulator_cli_runs_the_pilot_arms(small_mix: str, capsys: pytest.CaptureFixture[str]) -> None:
    arms = "default,pilot_k1,pilot_k2,pilot_k4"
    assert sim.main(["--mixes", small_mix, "--arms", arms, "--seeds", "2", "--workers", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["mixes"][small_mix]["arms"]
    assert list(rows) == ["uniform", "oracle", *arms.split(",")]
    with pytest.raises(SystemExit):
        sim.main(["--arms", "pilot_k3"])


# --------------------------------------------------------------------------- the pilot round as one object


def test_pilot_round_checks_its_settings_once_and_names_the_fix():
    config = AllocatorConfig(n_min=2, n_max=8)
    pilot = PilotRound.from_config(config, 2, num_prompts=8, budget=64, num_processes=2)
    assert (pilot.pilot_rollouts, pilot.second_round_budget, pilot.allow_skip) == (2, 48, False)
    assert pilot.pilot_sizes().tolist() == [2] * 8
    cases = [
        ({"pilot_rollouts": 0}, "pilot_rollouts=0 is no pilot round"),
        ({"pilot_rollouts": 9}, "pilot_rollouts=9 x 8 prompts = 72 > budget=64"),
        ({"num_processes": 3}, "do not split evenly over 3 processes"),
        ({"config": AllocatorConfig(n_min=2, n_max=8, token_cost=True)}, "token_cost"),
        (
            {"config": AllocatorConfig(n_max=16, n_max_schedule="linear:16:2:10")},
            "more than the groups can take below n_max=2",
        ),
    ]
    for change, match in cases:
        args = {"config": config, "pilot_rollouts": 2, "num_prompts": 8, "budget": 64, "num_processes": 2}
        args.update(change)
        with pytest.raises(SettingError, match=match):
            PilotRound.from_config(args.pop("config"), args.pop("pilot_rollouts"), **args)
    # Candidates: a pilot of 1 with groups of at least 4 leaves whole extra groups of 3..7, and 8 rollouts
    # over 4 candidates can be only 0, 3-7 or 6-14: 2 cannot.
    with pytest.raises(SettingError, match=r"budget=2 rollouts cannot be split into whole groups"):
        PilotRound.from_config(AllocatorConfig(n_min=4, n_max=8), 1, 6, 8, allow_skip=True)
    assert PilotRound.from_config(AllocatorConfig(n_min=4, n_max=8), 1, 4, 10, allow_skip=True).allow_skip


def test_decide_counts_successes_with_the_trackers_threshold():
    # The tracker kept the threshold its history was counted with (0.7), whatever the config says now.
    tracker = SuccessRateTracker(success_threshold=0.7)
    tracker.observe(["a"] * 4, [1.0, 0.0, 0.0, 0.0])
    alloc = KnapsackRolloutAllocator(AllocatorConfig(n_min=2, n_max=8, solver="dp"), tracker)
    pilot = PilotRound.from_config(alloc.config, 2, num_prompts=3, budget=12)
    rewards = np.array(
        [0.6, 0.6, 0.9, 0.0, np.nan, 0.8]
    )  # a: 0/2 at 0.7 (0.6 is no success); c: 1 of 1 scored
    second = pilot.decide(alloc, ["a", "b", "c"], rewards, step=3)
    by_counts = allocate_second_round(alloc, ["a", "b", "c"], [0, 1, 1], 2, 6, step=3, pilot_scored=[2, 2, 1])
    np.testing.assert_array_equal(second.extra_rollouts, by_counts.extra_rollouts)
    assert second.pilot_mixed.tolist() == [False, True, False]
    assert second.expected_value == by_counts.expected_value
    with pytest.raises(ValueError, match="expected 2 per prompt"):
        pilot.decide(alloc, ["a", "b", "c"], rewards[:5])
    with pytest.raises(ValueError, match="3 prompts"):
        pilot.decide(alloc, ["a", "b"], rewards[:4])


def final_sizes_allowed(rows, n_min, n_max):
    """Candidates: each final group is the pilot alone or in [max(n_min, k), n_max]."""
    return [sorted({int(k)} | set(range(max(n_min, int(k)), n_max + 1))) for k in rows]


@pytest.mark.parametrize("solver", ["cpsat", "dp"])
@settings(max_examples=40, deadline=None)
@given(pilot_batches(), st.booleans())
def test_candidate_second_round_is_optimal_against_brute_force(solver, batch, equal_pilots):
    config, history, ids, wins, scored, rows, _ = batch
    n_min, n_max = config["n_min"], config["n_max"]
    if equal_pilots:  # the trainer's case: k each
        rows = np.full(len(ids), int(rows[0]))
        scored = np.minimum(scored, rows)
        wins = np.minimum(wins, scored)
    weight = WEIGHTS[config["value_function"]]
    alloc = make_allocator(history, **config, solver=solver)
    ref = reference_table(alloc, ids, wins, scored, rows, n_min, n_max, weight)
    post = alloc.posterior(ids, successes=wins, trials=scored)
    for i, k in enumerate(rows):  # the pilot alone: worth w(p) if mixed already, else nothing
        ref[i, k] = float(post.weights[i] @ weight(post.grid)) if 0 < wins[i] < scored[i] else 0.0
    options = final_sizes_allowed(rows, n_min, n_max)
    totals = {sum(c) for c in itertools.product(*options)}
    extra_budgets = sorted(t - int(rows.sum()) for t in totals)
    budget = extra_budgets[len(extra_budgets) // 2]
    out = allocate_second_round(alloc, ids, wins, rows, budget, pilot_scored=scored, allow_skip=True)
    best = max(
        sum(ref[i, c] for i, c in enumerate(combo))
        for combo in itertools.product(*options)
        if sum(combo) == budget + int(rows.sum())
    )
    sizes, extra = out.group_sizes, out.extra_rollouts
    assert extra.sum() == budget and ((extra == 0) | (sizes >= n_min)).all() and (sizes <= n_max).all()
    assert float(ref[np.arange(len(ids)), sizes].sum()) == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert out.expected_value == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_a_candidate_given_nothing_more_keeps_its_pilot_as_its_group():
    # Pilots of 1 with groups of at least 3: a candidate either stays at 1 (its pilot) or gets 2 or more.
    # Two prompts failed and one succeeded: the knapsack commits the second round to some, not all.
    alloc = FlatPriorAllocator(AllocatorConfig(n_min=3, n_max=8, solver="dp"))
    pilot = PilotRound.from_config(alloc.config, 1, num_prompts=4, budget=10, allow_skip=True)
    second = pilot.decide(alloc, ["A", "B", "C", "D"], np.array([0.0, 1.0, 0.0, 0.0]))
    extra, sizes = second.extra_rollouts, second.group_sizes
    assert extra.sum() == 6 and ((extra == 0) | (extra >= 2)).all()
    assert (extra == 0).any() and (sizes[extra == 0] == 1).all()
    m = second.metrics()
    assert m["prompts_considered"] == 4.0 and m["prompts_skipped"] == float((extra == 0).sum())
    skipped = extra == 0
    hopeless = (skipped & np.array([True, False, True, True])).sum() / skipped.sum()
    assert m["skipped_hopeless_share"] == pytest.approx(hopeless)
    assert m["skipped_hopeless_share"] + m["skipped_solved_share"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="uniform=True with allow_skip=True"):
        pilot.decide(alloc, ["A", "B", "C", "D"], np.zeros(4), uniform=True)


def test_informative_rollouts_value_counts_the_final_group():
    # n x P(mixed): the pilot's rollouts count once the group is mixed; a mixed pilot grows with more.
    alloc = FlatPriorAllocator(AllocatorConfig(n_min=2, n_max=8, value_function="informative_rollouts"))
    out = allocate_second_round(alloc, ["A", "C"], [0, 1], 2, 6)
    assert out.expected_value == pytest.approx(out.expected_informative_rollouts, rel=1e-9)
    # A (0/2, Beta(1, 3)): P(mixed after m more) = m / (3 + m). C is mixed for certain: 2 + m rollouts.
    options = [(2 + a) * a / (3 + a) + (2 + 6 - a) for a in range(7)]
    assert out.expected_value == pytest.approx(max(options), rel=1e-6)


def test_the_pilot_checks_values_up_to_the_schedules_highest_n_max_rounded_as_the_schedule_rounds():
    from knapsack_trl.core.schedule import BudgetSchedule

    schedule = BudgetSchedule.from_config(16, "linear:16.5:2.4:10")
    assert (schedule.highest_n_max(), schedule.lowest_n_max()) == (17, 2)
    assert max(schedule.n_max_at(t) for t in range(11)) == schedule.highest_n_max()


@pytest.mark.parametrize("solver", ["cpsat", "dp"])
def test_identical_prompts_with_different_pilots_keep_their_own_limits(solver):
    """Found by hypothesis: four copies of one unseen prompt, one of which already drew its pilot. Ties
    between identical rows went to the earliest whatever each row's cap, breaking the budget; ties now
    stay among prompts with the same limits."""
    alloc = make_allocator({}, n_min=0, n_max=2, value_function="nonzero_gradient", solver=solver)
    rows = np.array([0, 1, 0, 0])
    for budget in range(8):
        out = allocate_second_round(
            alloc, ["p0"] * 4, np.zeros(4, int), rows, budget, pilot_scored=np.zeros(4, int), allow_skip=True
        )
        assert out.extra_rollouts.sum() == budget and (out.group_sizes <= 2).all()

import numpy as np
import pytest

from knapsack_trl.core.values import nonzero_gradient_probability
from knapsack_trl.experiments.benchmarks import allocation as sim


@pytest.fixture
def small_mix(monkeypatch: pytest.MonkeyPatch) -> str:
    mix = sim.Mix("test", lambda rng, size: rng.uniform(0.0, 1.0, size), prompts=8, revisit=2, steps=12)
    monkeypatch.setitem(sim.MIXES, "small", mix)
    return "small"


def test_the_oracle_is_an_upper_bound_and_uniform_is_exact(small_mix: str) -> None:
    out = sim.simulate(small_mix, 0, list(sim.ARMS))
    # The score is the expected count under the true rates, which the oracle maximises exactly each step.
    for name, row in out.items():
        assert row["informative_per_step"] <= out["oracle"]["informative_per_step"] + 1e-9, name
        assert 0 <= row["realised_per_step"] <= 8 and 0 <= row["rollout_ratio"] <= 1
    # Uniform, recomputed independently from the same seeded drift.
    mix = sim.MIXES[small_mix]
    rng = np.random.default_rng([0, sorted(sim.MIXES).index(small_mix)])
    rates = sim._drift(mix.sample(rng, 16), mix.steps, sim.SIGMA, rng)
    order = sim._order(16, 8, mix.steps, rng)
    expected = np.mean(
        [nonzero_gradient_probability(np.full(8, 8), rates[t, order[t]]).sum() for t in range(12)]
    )
    assert out["uniform"]["informative_per_step"] == pytest.approx(expected)


def test_common_random_numbers_make_identical_arms_identical(small_mix: str) -> None:
    # "default" and "posterior_count" are the same settings: the same draws must give the same figures.
    out = sim.simulate(small_mix, 3, ["default", "posterior_count"])
    assert out["default"]["informative_per_step"] == out["posterior_count"]["informative_per_step"]
    assert out["default"]["realised_per_step"] == out["posterior_count"]["realised_per_step"]

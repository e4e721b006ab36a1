import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.core.posterior import GRID, PopulationPrior
from knapsack_trl.core.values import knapsack_value, nonzero_gradient_probability


def beta_moment(a: float, b: float, k: int) -> float:
    """E[p^k] under Beta(a, b), in closed form: prod_{j<k} (a + j) / (a + b + j)."""
    return math.prod((a + j) / (a + b + j) for j in range(k))


def test_posterior_expectations_match_closed_form_beta_moments():
    # A prior proportional to a Beta(2, 3) density on a fine grid: the posterior after s of n is
    # (nearly) Beta(2 + s, 3 + n - s), whose moments are known in closed form.
    grid = np.linspace(0.0, 1.0, 4001)
    density = grid * (1 - grid) ** 2
    prior = PopulationPrior(grid, density / density.sum())
    post = prior.posterior(np.array([3.0, 0.0]), np.array([10.0, 0.0]))
    for i, (a, b) in enumerate([(5.0, 10.0), (2.0, 3.0)]):
        assert post.mean[i] == pytest.approx(a / (a + b), abs=1e-6)
        for n in (2, 5, 16):
            expected = 1 - beta_moment(a, b, n) - beta_moment(b, a, n)
            assert post.nonzero_gradient(np.array([n, n]))[i] == pytest.approx(expected, abs=1e-6)
    table = post.value_table(nonzero_gradient_probability, 8)
    assert table[:, 0].tolist() == [0.0, 0.0] and table[:, 1].tolist() == pytest.approx([0.0, 0.0])
    a, b = 5.0, 10.0
    assert table[0, 6] == pytest.approx(1 - beta_moment(a, b, 6) - beta_moment(b, a, 6), abs=1e-6)


def test_pseudo_outcomes_from_a_prior_mean():
    grid = np.linspace(0.0, 1.0, 4001)
    flat = PopulationPrior(grid, np.full(grid.size, 1 / grid.size))
    # 4 pseudo-outcomes at rate 0.25 on a flat prior, plus 2 of 2 observed: Beta(1 + 1 + 2, 1 + 3).
    post = flat.posterior(np.array([2.0]), np.array([2.0]), prior_mean=np.array([0.25]), prior_strength=4.0)
    assert post.mean[0] == pytest.approx(4 / 8, abs=1e-6)
    untouched = flat.posterior(
        np.array([2.0]), np.array([2.0]), prior_mean=np.array([np.nan]), prior_strength=4.0
    )
    assert untouched.mean[0] == pytest.approx(3 / 4, abs=5e-4)  # a flat prior on a grid: endpoint error


def test_fit_recovers_a_two_point_population():
    # Half the prompts at the grid point nearest 0.05, half at the one nearest 0.9, 32 outcomes each.
    lo, hi = GRID[np.argmin(abs(GRID - 0.05))], GRID[np.argmin(abs(GRID - 0.9))]
    rng = np.random.default_rng(0)
    p = np.repeat([lo, hi], 2000)
    s = rng.binomial(32, p)
    prior = PopulationPrior.fit(s, np.full(p.size, 32), iterations=2000)
    index = {c: int(np.argmin(abs(GRID - c))) for c in (lo, hi)}
    for c in (lo, hi):  # the mass within two grid points of each
        assert prior.weights[index[c] - 2 : index[c] + 3].sum() == pytest.approx(0.5, abs=0.03)
    # Grouped counts give the same fit as one row per prompt.
    pairs, counts = np.unique(np.stack([s, np.full(s.size, 32)], axis=1), axis=0, return_counts=True)
    grouped = PopulationPrior.fit(pairs[:, 0], pairs[:, 1], counts, iterations=2000)
    np.testing.assert_allclose(grouped.weights, prior.weights, rtol=1e-9, atol=1e-15)


def test_fit_without_data_is_uniform_and_all_fail_data_favours_zero():
    np.testing.assert_array_equal(
        PopulationPrior.fit(np.zeros(0), np.zeros(0)).weights, np.full(GRID.size, 1 / GRID.size)
    )
    hopeless = PopulationPrior.fit(np.zeros(500), np.full(500, 16))
    assert hopeless.weights[0] == hopeless.weights.max()
    assert hopeless.weights[GRID > 0.5].sum() < 0.01


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 1.0), min_size=GRID.size, max_size=GRID.size).filter(
        lambda w: sum(w) > 0
    ),
    s=st.integers(0, 20),
    extra=st.integers(0, 20),
    n_max=st.integers(2, 40),
)
def test_posterior_tables_are_expectations_of_the_value(weights, s, extra, n_max):
    w = np.asarray(weights) / sum(weights)
    post = PopulationPrior(GRID, w).posterior(np.array([float(s)]), np.array([float(s + extra)]))
    assert post.weights.sum() == pytest.approx(1.0)
    table = post.value_table(knapsack_value, n_max)[0]
    direct = post.weights[0] @ knapsack_value(np.arange(n_max + 1)[None, :], GRID[:, None])
    np.testing.assert_allclose(table[1:], direct[1:], rtol=1e-12, atol=1e-15)
    counts = post.value_table(nonzero_gradient_probability, n_max)[0]
    assert (np.diff(counts[1:]) >= -1e-12).all()  # more rollouts never lower the chance of a gradient
    assert (np.diff(counts[1:], 2) <= 1e-12).all()  # concave from n = 1: greedy is exact
    np.testing.assert_allclose(counts[2:], post.nonzero_gradient(np.arange(2, n_max + 1)), rtol=1e-12)

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from knapsack_trl.core.values import (
    get_value_function,
    knapsack_value,
    nonzero_gradient_probability,
    value_table,
)


def test_knapsack_value_matches_hand_computation():
    # p = 1/3, n = 4: (1 - (1/3)^4 - (2/3)^4) * (1/3) * (2/3)^2 = (64/81) * (4/27)
    assert knapsack_value(4, 1 / 3) == pytest.approx((1 - 1 / 81 - 16 / 81) * (1 / 3) * (4 / 9), rel=1e-12)
    assert knapsack_value(0, 0.3) == 0.0  # the raw formula would give -p(1-p)^2
    assert knapsack_value(1, 0.3) == 0.0
    assert knapsack_value(8, 0.0) == 0.0 and knapsack_value(8, 1.0) == 0.0


@given(st.floats(0.0, 1.0), st.integers(1, 200))
def test_value_is_concave_and_nondecreasing_from_one_rollout(p, n):
    v = knapsack_value(np.array([n, n + 1, n + 2]), p)
    assert v[1] - v[0] >= -1e-15
    assert (v[2] - v[1]) - (v[1] - v[0]) <= 1e-15


def test_value_table_shape_zero_column_and_errors():
    table = value_table(knapsack_value, np.array([0.2, 0.5]), 6)
    assert table.shape == (2, 7)
    assert (table[:, 0] == 0).all()
    np.testing.assert_allclose(table[1, 3], (1 - 2 * 0.5**3) * 0.5 * 0.25)
    with pytest.raises(ValueError, match="success_rate"):
        value_table(knapsack_value, np.array([0.2, np.nan]), 4)
    with pytest.raises(ValueError, match="success_rate"):
        value_table(knapsack_value, np.array([1.5]), 4)


def test_registry_and_custom_function():
    assert get_value_function("nonzero_gradient") is nonzero_gradient_probability
    assert nonzero_gradient_probability(2, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="value_function"):
        get_value_function("nope")
    table = value_table(lambda n, p: n * p, np.array([0.5]), 3)
    np.testing.assert_allclose(table, [[0.0, 0.5, 1.0, 1.5]])


def test_informative_rollouts_counts_rollouts_in_mixed_groups_by_enumeration():
    from itertools import product

    from knapsack_trl.core.values import informative_rollouts

    assert get_value_function("informative_rollouts") is informative_rollouts
    for n, p in ((1, 0.4), (2, 0.5), (3, 0.2), (5, 0.9), (4, 0.0)):
        # E[n x 1{group mixed}] summed over every outcome sequence
        expected = sum(
            n * p ** sum(seq) * (1 - p) ** (n - sum(seq))
            for seq in product((0, 1), repeat=n)
            if 0 < sum(seq) < n
        )
        assert informative_rollouts(n, p) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert informative_rollouts(0, 0.5) == 0.0

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.core.tracker import PromptStats, SuccessRateTracker, prompt_id


def assert_stats_equal(a: PromptStats, b: PromptStats) -> None:
    for name in (
        "num_observations",
        "successes",
        "empirical_rate",
        "mean_length",
        "last_seen",
        "total_observations",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_prompt_id_is_stable_and_content_based():
    assert prompt_id("What is 2+2?") == prompt_id("What is 2+2?")
    assert len(prompt_id("x")) == 16 and all(c in "0123456789abcdef" for c in prompt_id("x"))
    assert prompt_id("a") != prompt_id("b")
    msgs_a = [{"role": "user", "content": "hi"}]
    msgs_b = [{"content": "hi", "role": "user"}]  # key order must not matter
    assert prompt_id(msgs_a) == prompt_id(msgs_b)
    assert prompt_id({"q": 1, "a": [1, 2]}) == prompt_id({"a": [1, 2], "q": 1})
    # A text prompt never collides with the JSON of the same string.
    assert prompt_id('"hi"') != prompt_id(["hi"])
    with pytest.raises(TypeError, match="dataset index"):
        prompt_id(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dataset index"):
        prompt_id([{"image": object()}])


def test_window_numbers_by_hand():
    tr = SuccessRateTracker(window=4, prior_strength=2.0, prior_mean=0.5)
    tr.observe(["a"] * 5, [1, 0, 1, 1, 0], completion_lengths=[10, 20, 30, 40, 50], step=3)
    st_ = tr.stats(["a"])
    # The window keeps the last 4 of 1,0,1,1,0: that is 0,1,1,0 -> 2/4; lengths 20..50.
    assert st_.num_observations.tolist() == [4]
    assert st_.successes.tolist() == [2.0]
    assert st_.empirical_rate.tolist() == [0.5]
    assert st_.mean_length.tolist() == [35.0]  # (20+30+40+50)/4
    assert st_.last_seen.tolist() == [3]
    assert tr.success_rate(["a"])[0] == pytest.approx((2 + 2 * 0.5) / (4 + 2))


def test_window_drops_oldest_across_batches():
    # Outcomes 0 then 1,1,1,0 into a window of 4: the first leaves the window -> 3/4.
    tr = SuccessRateTracker(window=4)
    tr.observe(["p"], [0.0])
    tr.observe(["p"] * 4, [1, 1, 1, 0])
    st_ = tr.stats(["p"])
    assert st_.num_observations[0] == 4 and st_.successes[0] == 3
    assert st_.empirical_rate[0] == 0.75
    assert tr.success_rate(["p"])[0] == pytest.approx((3 + 2 * 0.5) / (4 + 2))


def test_unseen_prompt_stats_and_prior():
    tr = SuccessRateTracker(prior_strength=4.0, prior_mean=0.25)
    tr.observe(["a", "a"], [1.0, 0.0])
    st_ = tr.stats(["zzz", "a"])
    assert st_.num_observations.tolist() == [0, 2]
    assert math.isnan(st_.empirical_rate[0]) and math.isnan(st_.mean_length[0])
    assert st_.last_seen.tolist() == [-1, 0]
    np.testing.assert_allclose(tr.success_rate(["zzz", "a"]), [0.25, (1 + 1.0) / (2 + 4)])
    assert math.isnan(SuccessRateTracker(prior_strength=0.0).success_rate(["x"])[0])


def test_per_prompt_prior_mean_overrides_and_nan_falls_back():
    tr = SuccessRateTracker(window=8, prior_strength=2.0, prior_mean=0.5)
    tr.observe(["a"] * 4, [1, 0, 0, 0])
    p = tr.success_rate(["a", "new", "new2"], prior_mean=np.array([0.9, 0.1, np.nan]))
    np.testing.assert_allclose(p, [(1 + 2 * 0.9) / (4 + 2), 0.1, 0.5])
    with pytest.raises(ValueError, match="prior_mean"):
        tr.success_rate(["a"], prior_mean=np.array([1.5]))
    with pytest.raises(ValueError, match="prior_mean"):
        tr.success_rate(["a"], prior_mean=np.array([0.5, 0.5]))


def test_ema_numbers_by_hand():
    tr = SuccessRateTracker(window=None, ema_decay=0.5, prior_strength=1.0, prior_mean=0.5)
    tr.observe(["a"] * 4, [1, 1, 0, 0], completion_lengths=[4, 4, 8, 8], step=1)  # s=2, n=4
    tr.observe(["a"] * 2, [1, 1], completion_lengths=[2, 2], step=2)  # s=0.5*2+2=3, n=0.5*4+2=4
    st_ = tr.stats(["a"])
    assert st_.num_observations.dtype == np.float64
    assert st_.successes[0] == 3.0 and st_.num_observations[0] == 4.0
    assert st_.empirical_rate[0] == 0.75
    # Lengths decay the same way: sum 0.5*24+4 = 16 over count 0.5*4+2 = 4.
    assert st_.mean_length[0] == 4.0
    assert tr.success_rate(["a"])[0] == pytest.approx((3 + 0.5) / (4 + 1))
    # A prompt absent from a batch is not decayed.
    tr.observe(["b"], [0.0], step=3)
    assert tr.stats(["a"]).successes[0] == 3.0


def test_threshold_and_unscorable_rewards():
    tr = SuccessRateTracker(window=16, success_threshold=0.5)
    tr.observe(["a"] * 6, [0.5, 0.51, float("nan"), None, 1.0, -1.0], completion_lengths=[1, 2, 3, 4, 5, 6])
    st_ = tr.stats(["a"])
    assert st_.num_observations[0] == 4  # NaN and None are not counted
    assert st_.successes[0] == 2  # 0.5 is not > 0.5
    assert st_.mean_length[0] == (1 + 2 + 5 + 6) / 4
    tr.observe(["only_nan"], [float("nan")], step=5)
    assert "only_nan" not in tr and len(tr) == 1
    strict = SuccessRateTracker(success_threshold=0.0)
    strict.observe(["a", "a"], [0.0, 0.1])
    assert strict.stats(["a"]).successes[0] == 1


def test_missing_lengths_and_duplicates_in_query():
    tr = SuccessRateTracker(window=4)
    tr.observe(["a", "a"], [1, 0])
    tr.observe(["a"], [1], completion_lengths=[None])
    st_ = tr.stats(["a", "a"])
    assert st_.num_observations.tolist() == [3, 3]
    assert np.isnan(st_.mean_length).all()


def test_observe_rejects_misaligned_inputs():
    tr = SuccessRateTracker()
    with pytest.raises(ValueError, match="rewards"):
        tr.observe(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="completion lengths"):
        tr.observe(["a"], [1.0], completion_lengths=[1, 2])
    with pytest.raises(ValueError, match="completion_lengths"):
        tr.observe(["a"], [1.0], completion_lengths=[-1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
        ({"estimate": "epoch"}, "estimate"),
        ({"estimate": "last_visit"}, "estimate"),  # needs window mode
        ({"window": 4, "ema_decay": 0.9}, "window"),
        ({"window": None, "ema_decay": 1.0}, "ema_decay"),
        ({"window": None, "ema_decay": 0.0}, "ema_decay"),
        ({"prior_strength": -1.0}, "prior_strength"),
        ({"prior_mean": 1.2}, "prior_mean"),
        ({"success_threshold": float("nan")}, "success_threshold"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SuccessRateTracker(**kwargs)


observation = st.tuples(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.one_of(st.none(), st.just(float("nan")), st.floats(-1.0, 2.0)),
            st.one_of(st.none(), st.floats(0.0, 1000.0)),
        ),
        max_size=12,
    ),
    st.integers(0, 50),
)
tracker_config = st.one_of(
    st.builds(lambda w: {"window": w}, st.integers(1, 5)),
    st.builds(lambda d: {"window": None, "ema_decay": d}, st.floats(0.01, 0.99)),
)


@settings(max_examples=60, deadline=None)
@given(tracker_config, st.lists(observation, max_size=6), st.lists(observation, max_size=3))
def test_json_round_trip_is_exact(config, before, after):
    tr = SuccessRateTracker(prior_strength=1.5, prior_mean=0.3, success_threshold=0.4, **config)
    for rows, step in before:
        tr.observe([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], step=step)
    text = tr.to_json()
    back = SuccessRateTracker.from_json(text)
    assert back.to_json() == text
    assert back.config() == tr.config()
    assert list(back.state_dict()["prompts"]) == list(tr.state_dict()["prompts"])
    ids = ["a", "b", "c", "d", "e"]
    assert_stats_equal(back.stats(ids), tr.stats(ids))
    for rows, step in after:
        for t in (tr, back):
            t.observe([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], step=step)
    assert_stats_equal(back.stats(ids), tr.stats(ids))
    np.testing.assert_array_equal(back.success_rate(ids), tr.success_rate(ids))
    assert back.to_json() == tr.to_json()


def test_load_state_dict_replaces_config_and_rejects_bad_version():
    src = SuccessRateTracker(window=None, ema_decay=0.8)
    src.observe(["a"], [1.0])
    dst = SuccessRateTracker(window=3)
    dst.observe(["zzz"], [0.0])
    dst.load_state_dict(json.loads(src.to_json()))
    assert dst.is_ema and dst.ema_decay == 0.8 and len(dst) == 1 and "zzz" not in dst
    with pytest.raises(ValueError, match="version"):
        dst.load_state_dict({"version": 99, "config": {}, "prompts": {}})


def test_default_is_an_ema_of_about_ten_visits():
    tr = SuccessRateTracker()
    assert tr.is_ema and tr.ema_decay == 0.9 and tr.window is None
    tr.observe(["a"] * 4, [1, 0, 0, 0])
    tr.observe(["a"] * 2, [1, 1])
    st_ = tr.stats(["a"])
    assert st_.successes[0] == pytest.approx(0.9 * 1 + 2) and st_.num_observations[0] == pytest.approx(
        0.9 * 4 + 2
    )
    assert st_.total_observations[0] == 6
    assert SuccessRateTracker(window=16).window == 16 and not SuccessRateTracker(window=16).is_ema


def test_last_visit_estimate_is_the_reference_rule():
    # The last visit's outcomes when it had at least `window` rollouts, else the last `window` outcomes.
    tr = SuccessRateTracker(window=4, estimate="last_visit", prior_strength=0.0)
    tr.observe(["a"] * 6, [1, 1, 1, 1, 1, 0])  # a visit of 6 >= 4: 5/6, not the window's 3/4
    assert tr.stats(["a"]).empirical_rate[0] == 5 / 6 and tr.stats(["a"]).num_observations[0] == 6
    tr.observe(["a"] * 2, [0, 0])  # a visit of 2 < 4: the last 4 outcomes, 1, 0, 0, 0
    st_ = tr.stats(["a"])
    assert (st_.successes[0], st_.num_observations[0], st_.total_observations[0]) == (1, 4, 8)
    window = SuccessRateTracker(window=4, prior_strength=0.0)
    window.observe(["a"] * 6, [1, 1, 1, 1, 1, 0])
    assert window.stats(["a"]).empirical_rate[0] == 3 / 4


def test_recent_counts_follow_the_last_visit_and_survive_a_round_trip():
    tr = SuccessRateTracker(window=3)
    tr.observe(["a", "a", "b"], [1, 0, 1])
    tr.observe(["c"], [0])
    tr.observe(["a", "a"], [1, 1])  # a: window 0, 1, 1 -> (2, 3), and now the most recent
    s, n = tr.recent_counts(10)
    assert s.tolist() == [2.0, 0.0, 1.0] and n.tolist() == [3.0, 1.0, 1.0]  # a, c, b: newest first
    assert tr.recent_counts(2)[0].tolist() == [2.0, 0.0]
    clone = SuccessRateTracker.from_json(tr.to_json())
    np.testing.assert_array_equal(np.stack(clone.recent_counts(10)), np.stack(tr.recent_counts(10)))
    assert SuccessRateTracker().recent_counts(5)[0].size == 0


def test_version_1_state_loads_with_totals_from_the_window():
    tr = SuccessRateTracker(window=4)
    tr.observe(["a"] * 3, [1, 0, 1], step=2)
    state = tr.state_dict()
    state["version"] = 1
    for entry in state["prompts"].values():
        del entry["total"], entry["last_visit"]
    del state["config"]["estimate"]
    old = SuccessRateTracker()
    old.load_state_dict(state)
    st_ = old.stats(["a"])
    assert old.window == 4 and (st_.successes[0], st_.num_observations[0], st_.total_observations[0]) == (
        2,
        3,
        3,
    )

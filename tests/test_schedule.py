import math

import pytest

from knapsack_trl.core.schedule import BudgetSchedule, Schedule


def test_constant():
    s = Schedule("constant", 0.25)
    assert s(0) == 0.25 and s(10_000) == 0.25 and s(-3) == 0.25


def test_linear_by_hand_and_clamped():
    s = Schedule("linear", 128.0, 32.0, 100)
    assert s(0) == 128.0
    assert s(50) == 80.0
    assert s(25) == 104.0
    assert s(100) == 32.0
    assert s(1000) == 32.0  # held after total_steps
    assert s(-5) == 128.0


def test_cosine_by_hand_and_clamped():
    s = Schedule("cosine", 1.0, 0.0, 10)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.5)
    # t = 1/4: 0.5 * (1 + cos(pi/4))
    assert s(2.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert s(10) == pytest.approx(0.0, abs=1e-15)
    assert s(11) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cosine:128:32:100", Schedule("cosine", 128.0, 32.0, 100)),
        ("linear:0.2:0:500", Schedule("linear", 0.2, 0.0, 500)),
        ("LINEAR: 0.2 : 0 : 500", Schedule("linear", 0.2, 0.0, 500)),
        ("0.1", Schedule("constant", 0.1)),
        ("constant:64", Schedule("constant", 64.0)),
        (0.3, Schedule("constant", 0.3)),
        (64, Schedule("constant", 64.0)),
        ({"kind": "cosine", "start": 1, "end": 0, "total_steps": 4}, Schedule("cosine", 1.0, 0.0, 4)),
        ({"start": 0.5}, Schedule("constant", 0.5)),
    ],
)
def test_parse(value, expected):
    assert Schedule.parse(value) == expected


def test_parse_takes_total_steps_from_config():
    assert Schedule.parse("cosine:128:32", total_steps=50) == Schedule("cosine", 128.0, 32.0, 50)
    # A horizon written in the string wins over the config's.
    assert Schedule.parse("cosine:128:32:7", total_steps=50).total_steps == 7
    assert Schedule.parse("linear:1:0", total_steps=3)(3) == 0.0
    s = Schedule.parse({"kind": "linear", "start": 1, "end": 0}, total_steps=2)
    assert s(1) == 0.5


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("cosine:128:32", "total_steps"),
        ("cosine:128", "end value"),
        ("warmup:1:2:3", "not known"),
        ("linear:a:0:10", "start 'a' is not a number"),
        ("linear:1:0:0", "total_steps"),
        ("linear:1:0:2.5", "total_steps"),
        ("linear:1:0:10:3", "too many parts"),
        ("constant:1:2", "one value"),
        ("", "not a number"),
        ("nan", "finite"),
        ({"kind": "linear", "begin": 1}, "unknown keys"),
        ({"kind": "linear"}, "start"),
        (True, "cannot read"),
        ([1, 2], "cannot read"),
    ],
)
def test_parse_errors(value, match):
    with pytest.raises(ValueError, match=match):
        Schedule.parse(value)


def test_budget_schedule_from_config():
    b = BudgetSchedule.from_config(128)
    assert b.n_max_at(0) == 128 and b.n_max_at(10**6) == 128
    assert b.exploration_share_at(5) == 0.0
    b = BudgetSchedule.from_config(128, "linear:128:33:10", "linear:0.5:0", total_steps=10)
    assert b.n_max_at(5) == 81  # 80.5 rounds half up
    assert b.n_max_at(20) == 33
    assert b.exploration_share_at(5) == 0.25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_max_schedule": "linear:16:0:10"}, "n_max_schedule"),
        ({"n_max_schedule": "cosine:16:4"}, "n_max_schedule.*total_steps"),
        ({"exploration_schedule": "1.5"}, "exploration_schedule"),
        ({"exploration_schedule": "linear:0.5:-0.1:10"}, "exploration_schedule"),
        ({"exploration_schedule": "bogus:1:2"}, "exploration_schedule"),
    ],
)
def test_budget_schedule_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetSchedule.from_config(128, **kwargs)

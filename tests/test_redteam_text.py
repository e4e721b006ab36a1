"""The text rewards under attack: every parser linear in its input, GSM8K strict by default, no input that
raises, and a calculator reward that pays for using the tool.

The policy writes the text these parsers read, in the trainer's thread. Linear time is checked by relative
cost within one run: each parser on each pathological shape at 1k, 10k and 100k characters, CPU time of
this thread (so other processes' load does not count), garbage collection paused. A linear parser grows
about 10x per 10x input; a quadratic one about 100x. No absolute time is asserted.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knapsack_trl.tasks import calculator
from knapsack_trl.tasks.chat_arithmetic import chat_arithmetic_reward
from knapsack_trl.tasks.gsm8k.answers import extract_gsm8k_gold, final_answer, format_number, parse_number
from knapsack_trl.tasks.gsm8k.reward import format_reward, gsm8k_accuracy_reward, make_gsm8k_reward
from knapsack_trl.tasks.humaneval.reward import extract_code
from knapsack_trl.tasks.registry import REWARD_FUNCTIONS


def _call(expression: str) -> list[dict[str, Any]]:
    """A rollout whose first tool call is ``calc(x=expression)``."""
    call = {"type": "function", "function": {"name": "calc", "arguments": {"x": expression}}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]}]


LAST_NUMBER = make_gsm8k_reward(fallback_last_number=True)
PARSERS: dict[str, Callable[[str], Any]] = {
    "gsm8k_accuracy": lambda text: gsm8k_accuracy_reward([text], answer=["5"]),
    "gsm8k_accuracy_last_number": lambda text: LAST_NUMBER([text], answer=["5"]),
    "gsm8k_format": lambda text: format_reward([text]),
    "chat_arithmetic": lambda text: chat_arithmetic_reward([text], answer=["5"]),
    "calculator_exact_call": lambda text: calculator.exact_call_reward(
        [_call(text)], answer=["408"], expression=["12*34"]
    ),
    "calculator_reply": lambda text: calculator.calculator_reward([text], answer=["408"]),
    "humaneval_extract_code": lambda text: extract_code(text, "f"),
}

# name: (prefix, repeated unit, suffix); the unit fills the text to the size asked for.
SHAPES: dict[str, tuple[str, str, str]] = {
    # the first three found: 2-4 CPU-seconds for ~200 tokens before the fix
    "times_ten_spaces": ("The answer is 5 x 10 ^", " ", "z"),
    "equals_then_times_ten_spaces": ("Answer: 2 + 3 = 5 \\times 10^", "\t", "z"),
    "answer_marker_spaces": ("answer", " ", "z"),
    # every other regex and scanner of tasks/, each at its worst
    "answer_marker_tabs_after_marker": ("Answer: answer", "\t", "}"),
    "answer_marker_stars": ("answer", "*", "z"),
    "answer_is_spaces": ("The answer", " ", "is 5"),
    "answer_is_runs": ("", "answer is ", "5"),
    "spaced_minus_numbers": ("The answer is ", "- 1 ", ""),
    "spaced_minus": ("The answer is -", " ", "5"),
    "over_spaces": ("The answer is 1 /", " ", "z"),
    "numbers": ("", "1 ", ""),
    "thousands_separators": ("", "1,234", ""),
    "comma_runs": ("{", ",1", "z"),
    "one_long_number": ("The answer is ", "1", ""),
    "one_long_decimal": ("The answer is 0.", "1", ""),
    "exponents": ("", "1e1", ""),
    "times_ten_many": ("", "1 x 10^{1} ", ""),
    "control_characters": ("The answer is ", "\x01", "5"),
    "control_fractions": ("", "\x011/", ""),
    "frac_spaces": ("\\frac{", " ", "1}{2}"),
    "frac_unclosed": ("", "\\frac{1}{", ""),
    "frac_nested": ("", "\\frac{", ""),
    "text_commands": ("", "\\text{", ""),
    "boxes": ("", "\\boxed{1}", ""),
    "boxes_nested_unclosed": ("", "\\boxed{", ""),
    "boxes_without_braces": ("", "\\boxed ", "{5}"),
    "closing_braces": ("\\boxed{5", "}", ""),
    "hash_headings": ("", "#### a\n", ""),
    "hashes": ("", "####", ""),
    "hedge_words": ("The answer is 5 ", "not ", ""),
    "equals_runs": ("Answer: 5", "=", ""),
    "parentheses": ("The answer is 5 ", "(", ""),
    "fences": ("", "```\n", ""),
    "backticks": ("", "`", ""),
    "spaces_before_def": ("```python\n", " ", "def f("),
    "expression_digits": ("", "12*", "34"),
}
LINEAR_BOUND = 25  # linear ~10 per 10x input (up to ~14 with allocation effects); quadratic ~100


def _text(shape: tuple[str, str, str], size: int) -> str:
    prefix, unit, suffix = shape
    return prefix + unit * max(1, (size - len(prefix) - len(suffix)) // len(unit)) + suffix


def _cpu_seconds(func: Callable[[str], Any], text: str) -> float:
    """The least CPU time of this thread over a few calls (the work, not the machine's load)."""
    best = float("inf")
    for _ in range(3):
        gc.disable()
        try:
            start = time.thread_time()
            func(text)
            best = min(best, time.thread_time() - start)
        finally:
            gc.enable()
        if best > 0.2:
            break
    return max(best, 1e-6)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_parser_is_linear_on_every_pathological_shape(shape: str) -> None:
    growth = {}
    for name, parser in PARSERS.items():
        small, medium = (_cpu_seconds(parser, _text(SHAPES[shape], n)) for n in (1_000, 10_000))
        assert medium / small < 4 * LINEAR_BOUND, f"{name} grows {medium / small:.0f}x from 1k to 10k chars"
        large = _cpu_seconds(parser, _text(SHAPES[shape], 100_000))
        growth[name] = round(large / medium, 1)
    assert max(growth.values()) < LINEAR_BOUND, f"work at 100k / work at 10k chars: {growth}"


# --------------------------------------------------------------------------- GSM8K: strict by default
@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("\\boxed{43 \\boxed{42}}", "42"),  # the outer box is the answer: an expression, not a number
        ("\\boxed{43 \\boxed{42}}", "43"),
        ("\\boxed{\\boxed{42}}", "42"),  # a box in a box is not one plain number either
        ("\\boxed{41 \\fbox{42}}", "42"),
        ("Final: \\boxed{7} and \\boxed{1 + \\boxed{42}}", "42"),
    ],
)
def test_a_box_inside_a_box_is_read_as_the_outer_box(completion: str, gold: str) -> None:
    assert gsm8k_accuracy_reward([completion], answer=[gold]) == [0.0]
    assert format_reward([completion]) == [0.0]


def test_the_last_box_at_top_level_is_the_answer() -> None:
    assert gsm8k_accuracy_reward(["\\boxed{41} then \\boxed{42}"], answer=["42"]) == [1.0]
    assert gsm8k_accuracy_reward(["\\boxed{41} then \\boxed{42"], answer=["42"]) == [1.0]  # truncated
    assert gsm8k_accuracy_reward(["\\boxed{42} then \\boxed{41}"], answer=["42"]) == [0.0]
    assert final_answer("\\boxed{43 \\boxed{42}}").span == "43 \\boxed{42}"


UNSTATED = [
    "I can't solve this. Question 7 had 42 apples.",
    " ".join(str(k) for k in range(1, 43)),  # every number up to the gold
    "Step 1: 12. Step 2: 30. So she has 42 apples left.",
    "42",
]


def test_the_last_number_fallback_is_off_by_default() -> None:
    assert gsm8k_accuracy_reward(UNSTATED, answer=["42"] * len(UNSTATED)) == [0.0] * len(UNSTATED)
    assert make_gsm8k_reward()(UNSTATED, answer=["42"] * len(UNSTATED)) == [0.0] * len(UNSTATED)
    assert all(final_answer(text) is None for text in UNSTATED)
    # Stated answers are read as before.
    stated = ["The answer is 42.", "#### 42", "\\boxed{42}", "**Answer:** 42"]
    assert gsm8k_accuracy_reward(stated, answer=["42"] * 4) == [1.0] * 4


def test_the_last_number_fallback_is_an_explicit_registered_option() -> None:
    lenient = REWARD_FUNCTIONS["gsm8k_accuracy_last_number"]
    assert lenient.__name__ == "gsm8k_accuracy_last_number"
    assert lenient(["After all that, she has 42 apples left."], answer=["42"]) == [1.0]
    assert lenient(["It is not 42."], answer=["42"]) == [
        0.0
    ]  # the fallback's sentence is still held to hedges
    assert final_answer("she has 42 apples left", fallback_last_number=True).kind == "last number"


# --------------------------------------------------------------------------- GSM8K: nothing raises
def test_a_gold_without_a_number_scores_none_and_long_numbers_never_overflow() -> None:
    huge = "1" + "0" * 400 + ".5"
    assert gsm8k_accuracy_reward(["The answer is 5", "\\boxed{5}"], answer=["no number", ""]) == [None, None]
    assert gsm8k_accuracy_reward([f"The answer is {huge}"], answer=["x"]) == [None]
    assert gsm8k_accuracy_reward([f"The answer is {huge}"], answer=[huge]) == [1.0]
    assert gsm8k_accuracy_reward(["The answer is 5"], answer=[huge]) == [0.0]
    assert gsm8k_accuracy_reward(["The answer is 0." + "3" * 300], answer=["1/3"]) == [1.0]
    assert extract_gsm8k_gold(f"#### {huge}") == huge
    assert format_number(Fraction(1, 3)) == "1/3" and format_number(Fraction(-5, 2)) == "-2.5"
    assert format_number(Fraction(1, 10**7)) == "0.0000001"
    assert parse_number("1" * 5000) is None  # past the digits any answer has: no number


NUMBERISH = st.lists(
    st.sampled_from(
        [
            *"0123456789.,-+eE/ x^{}$%=*\n\t",
            "\\boxed{",
            "\\fbox{",
            "\\frac",
            "\\text{",
            "\\times",
            "####",
            "answer is ",
            "Answer:",
            "not ",
            "\x01",
            "\x02",
            "\u2212",
            "0" * 40,
            "9" * 400,
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion=st.one_of(st.text(), NUMBERISH), gold=st.one_of(st.text(max_size=20), NUMBERISH))
def test_scoring_never_raises_on_arbitrary_text(completion: str, gold: str) -> None:
    scores = [
        *gsm8k_accuracy_reward([completion], answer=[gold]),
        *REWARD_FUNCTIONS["gsm8k_accuracy_last_number"]([completion], answer=[gold]),
        *make_gsm8k_reward(use_math_verify=False)([completion], answer=[gold]),
    ]
    gold_has_number = parse_number(extract_gsm8k_gold(gold), last=False) is not None
    assert all(s in (0.0, 1.0) for s in scores) if gold_has_number else scores == [None] * 3
    assert format_reward([completion]) in ([0.0], [1.0])
    assert chat_arithmetic_reward([completion], answer=[gold]) in ([0.0], [1.0])


# --------------------------------------------------------------------------- calculator: use the tool
def test_the_exact_call_reward_pays_for_the_problems_computation_only() -> None:
    rows = calculator.calculator_rows(3)
    answers, expressions = [r["answer"] for r in rows], [r["expression"] for r in rows]
    a, b = expressions[0].split("*")

    def score(call: str, k: int = 0) -> float:
        return calculator.exact_call_reward([_call(call)], answer=[answers[k]], expression=[expressions[k]])[
            0
        ]

    assert score(expressions[0]) == 1.0 and score(f"{b}*{a}") == 1.0  # the product, either order
    assert score(answers[0]) == 0.0  # the bare answer: knowing the number, not using the tool
    assert score(f"{answers[0]}*1") == 0.0 and score(f"{answers[0]}+0") == 0.0  # dressed up as a computation
    assert score(f"{a}*{b}*1") == 0.0 and score(f"{a}+{b}") == 0.0  # other computations
    assert score(expressions[1]) == 0.0  # another problem's product
    assert calculator.exact_call_reward([[]], answer=[answers[0]], expression=[expressions[0]]) == [0.0]


def test_the_calculator_environment_pays_for_the_problems_computation_only() -> None:
    env = calculator.CalculatorEnv()
    text = env.reset(task=7)
    expression, answer = calculator.problem(7)["expression"], calculator.problem(7)["answer"]
    assert text == expression + "="
    env.calc(answer)
    assert env.get_reward() == 0.0  # the first call was the bare answer
    env.reset(task=7)
    env.calc(expression)
    env.calc(answer)
    assert env.get_reward() == 1.0
    row = calculator.calculator_rows(1)[0]
    env.reset(**row)  # a dataset row: scored on its own problem
    env.calc(row["expression"])
    assert env.get_reward() == 1.0
    env.reset(**row)
    env.calc(row["answer"])
    assert env.get_reward() == 0.0

"""GSM8K rewards on real GSM8K answers (the fixture) and on the ways models state them."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from knapsack_trl.rewards.math import (
    extract_final_answer,
    extract_gsm8k_gold,
    format_reward,
    gsm8k_accuracy_reward,
    make_gsm8k_reward,
    parse_number,
)

FIXTURE = Path(__file__).parent / "fixtures" / "gsm8k_test_sample.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
GOLD = {row["id"]: row["answer"].rsplit("####", 1)[1].strip() for row in ROWS}  # as written, e.g. "1,450,000"
PLAIN_REWARD = make_gsm8k_reward(use_math_verify=False)


def with_commas(number: str) -> str:
    """1450000 -> 1,450,000 (the gold as a model might write it)."""
    sign, digits = ("-", number[1:]) if number.startswith("-") else ("", number)
    return sign + f"{int(digits):,}"


def variations(gold: str) -> list[str]:
    """Ways of stating the gold answer that must all score 1."""
    plain = gold.replace(",", "")
    return [
        f"\\boxed{{{plain}}}",
        f"Reasoning first.\n\nThe final answer is $\\boxed{{{with_commas(plain)}}}$.",
        f"#### {plain}",
        f"The answer is ${with_commas(plain)}.",
        f"The answer is: {plain} dollars",
        f"**Answer:** {plain}.00",
        f"After all that, she has {plain} apples left.",
        f"So {int(plain) - 7} + 7 = {plain}",
    ]


def wrong_variations(gold: str) -> list[str]:
    """Statements of a wrong answer, including the right number in the wrong place."""
    plain = int(gold.replace(",", ""))
    return [
        f"\\boxed{{{plain + 1}}}",
        f"#### {plain - 1}",
        f"The answer is {plain * 10}.",
        f"We had {plain} at first, but then {plain + 3} in the end.",
        f"\\boxed{{{plain + 2}}} (not {plain})",
        "I don't know.",
        "",
    ]


def test_gold_extraction_on_the_fixture():
    assert len(ROWS) == 20
    golds = {row["id"]: extract_gsm8k_gold(row["answer"]) for row in ROWS}
    assert golds[0] == "18" and golds[611] == "1450000" and golds[489] == "-10" and golds[1113] == "-3"
    assert golds[146] == "2125" and golds[201] == "114200"
    assert extract_gsm8k_gold("72") == "72"
    assert extract_gsm8k_gold(" $1,234 ") == "1234"
    assert extract_gsm8k_gold("#### 0.75") == "0.75"


def test_the_gold_solution_text_itself_scores_one():
    answers = [row["answer"] for row in ROWS]
    assert gsm8k_accuracy_reward(answers, answer=answers) == [1.0] * len(ROWS)
    assert PLAIN_REWARD(answers, answer=answers) == [1.0] * len(ROWS)
    bare = [extract_gsm8k_gold(a) for a in answers]  # the gold may also arrive as a bare number
    assert gsm8k_accuracy_reward(answers, answer=bare) == [1.0] * len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"gsm8k-test-{r['id']}")
def test_stated_answers_score_one_and_wrong_ones_zero(row):
    gold = GOLD[row["id"]]
    right = variations(gold)
    wrong = wrong_variations(gold)
    for reward in (gsm8k_accuracy_reward, PLAIN_REWARD):
        assert reward(right, answer=[row["answer"]] * len(right)) == [1.0] * len(right), right
        assert reward(wrong, answer=[row["answer"]] * len(wrong)) == [0.0] * len(wrong), wrong


@pytest.mark.parametrize(
    ("completion", "gold", "score"),
    [
        ("x = 3/4", "0.75", 1.0),
        ("The answer is 3/4.", "0.75", 1.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("\\boxed{\\dfrac34}", "0.75", 1.0),
        ("\\boxed{0.750}", "#### 0.75", 1.0),
        ("The answer is 0.7", "0.75", 0.0),
        ("\\boxed{2\\frac{1}{2}}", "2.5", 1.0),  # math-verify reads the mixed number
        ("The answer is −3 degrees.", "-3", 1.0),  # a typographic minus
        ("The temperature is -3.", "#### -3", 1.0),
        ("8 - 3 = 5", "-3", 0.0),  # subtraction, not a negative number
        ("It rose by 50%", "50", 1.0),
        ("\\boxed{1{,}450{,}000}", "1450000", 1.0),
        ("\\boxed{\\$5,600}", "5,600", 1.0),
        ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
        ("The answer is 0.333333", "1/3", 1.0),  # rounded decimals within 1e-6
        ("The answer is 0.33", "1/3", 0.0),
        ("\\boxed{1450001}", "1450000", 0.0),  # integers compare exactly
        ("The answer is 12345.68", "12345.67", 0.0),
        ("1,2,3 and 4", "4", 1.0),  # a list, not a thousands separator
        ("\\boxed{9^{9^{9^{9}}}}", "18", 0.0),  # never handed to sympy
        ("\\boxed{18", "18", 1.0),  # truncated generation
    ],
)
def test_numeric_forms(completion, gold, score):
    assert gsm8k_accuracy_reward([completion], answer=[gold]) == [score]


def test_math_verify_adds_latex_forms_the_plain_parser_misses():
    assert gsm8k_accuracy_reward(["\\boxed{x = 18}"], answer=["18"]) == [1.0]
    assert PLAIN_REWARD(["\\boxed{x = 18}"], answer=["18"]) == [1.0]  # our parser: the first number
    assert gsm8k_accuracy_reward(["\\boxed{\\frac{36}{2}}"], answer=["18"]) == [1.0]


def test_chat_completions_are_accepted():
    chat = [[{"role": "assistant", "content": "Thinking...\n#### 18"}]]
    assert gsm8k_accuracy_reward(chat, answer=["#### 18"]) == [1.0]
    assert format_reward(chat) == [1.0]


def test_format_reward():
    completions = ["so \\boxed{18}", "#### 18", "The answer is 18", "\\boxed{}", "#### none", "18"]
    assert format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward.__name__ == "gsm8k_format"
    assert gsm8k_accuracy_reward.__name__ == "gsm8k_accuracy"


def test_extraction_priorities():
    assert extract_final_answer("\\boxed{3} then #### 4") == ("boxed", "3")
    assert extract_final_answer("#### 4\nThe answer is 5") == ("####", "4")
    assert extract_final_answer("The answer is 5. Wait, the answer is 6.") == ("answer is", "6.")
    assert extract_final_answer("the answer is unclear") is None
    assert extract_final_answer("the answer is unclear\n7") is None  # the caller takes the last number
    assert parse_number("between 3 and 4") == Fraction(4)
    assert parse_number("between 3 and 4", last=False) == Fraction(3)
    assert parse_number("no numbers") is None


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="answers"):
        gsm8k_accuracy_reward(["1", "2"], answer=["1"])


def test_missing_math_verify_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    reward = make_gsm8k_reward()  # building it never needs math-verify
    with pytest.raises(ImportError, match=r"knapsack-trl\[rewards\]"):
        reward(["\\boxed{1}"], answer=["1"])
    assert make_gsm8k_reward(use_math_verify=False)(["\\boxed{1}"], answer=["1"]) == [1.0]


# --- the registry (lives in knapsack_trl.rewards; tested here with the pure-Python rewards) -------


def test_registry_names_and_dotted_paths():
    from knapsack_trl import rewards

    assert set(rewards.REWARD_FUNCTIONS) >= {
        "gsm8k_accuracy",
        "gsm8k_format",
        "humaneval_pass",
        "humaneval_pass_fraction",
    }
    assert rewards.resolve_reward("gsm8k_accuracy") is gsm8k_accuracy_reward
    assert rewards.resolve_reward("knapsack_trl.rewards.math.format_reward") is format_reward
    assert rewards.resolve_reward("knapsack_trl.rewards.math:format_reward") is format_reward
    assert rewards.resolve_reward(format_reward) is format_reward
    assert rewards.resolve_rewards(["gsm8k_accuracy", "gsm8k_format"]) == [
        gsm8k_accuracy_reward,
        format_reward,
    ]
    for name, func in rewards.REWARD_FUNCTIONS.items():
        assert func.__name__ == name  # TRL logs rewards by __name__


@pytest.mark.parametrize(
    "spec", ["gsm8k_acuracy", "no_such_module_xyz.reward", "knapsack_trl.rewards.math.nope", ""]
)
def test_registry_errors_name_the_field_and_the_known_rewards(spec):
    from knapsack_trl import rewards

    with pytest.raises(ValueError, match="reward_funcs") as err:
        rewards.resolve_reward(spec)
    assert "gsm8k_accuracy" in str(err.value) and "humaneval_pass" in str(err.value)


def test_registry_is_extensible(monkeypatch):
    from knapsack_trl import rewards

    monkeypatch.setattr(rewards, "REWARD_FUNCTIONS", dict(rewards.REWARD_FUNCTIONS))

    @rewards.register_reward("always_one")
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

    assert rewards.resolve_reward("always_one") is always_one
    with pytest.raises(ValueError, match="already registered"):
        rewards.register_reward("always_one", lambda completions, **kw: [])

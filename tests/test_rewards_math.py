"""GSM8K rewards on real GSM8K answers (the fixture), on the ways models state them, on the ways a
policy could game them, and side by side with math-verify."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest

from knapsack_trl.tasks.gsm8k import reward as gsm8k
from knapsack_trl.tasks.gsm8k.reward import (
    extract_final_answer,
    extract_gsm8k_gold,
    final_answer,
    format_reward,
    gsm8k_accuracy_reward,
    make_gsm8k_reward,
    parse_number,
)

FIXTURE = Path(__file__).parent / "fixtures" / "gsm8k_test_sample.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
GOLD = {row["id"]: row["answer"].rsplit("####", 1)[1].strip() for row in ROWS}  # as written, e.g. "1,450,000"
PLAIN_REWARD = make_gsm8k_reward(use_math_verify=False)
LENIENT_REWARD = make_gsm8k_reward(fallback_last_number=True)  # registered as gsm8k_accuracy_last_number
LENIENT_PLAIN = make_gsm8k_reward(use_math_verify=False, fallback_last_number=True)


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
    ]


def unstated_variations(gold: str) -> list[str]:
    """The gold as the last number of a completion that never states an answer: 1 only with the
    last-number fallback."""
    plain = gold.replace(",", "")
    return [f"After all that, she has {plain} apples left.", f"So {int(plain) - 7} + 7 = {plain}"]


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
    unstated = unstated_variations(gold)
    for reward in (gsm8k_accuracy_reward, PLAIN_REWARD, LENIENT_REWARD):
        assert reward(right, answer=[row["answer"]] * len(right)) == [1.0] * len(right), right
        assert reward(wrong, answer=[row["answer"]] * len(wrong)) == [0.0] * len(wrong), wrong
    assert LENIENT_REWARD(unstated, answer=[row["answer"]] * 2) == [1.0] * 2, unstated
    assert gsm8k_accuracy_reward(unstated, answer=[row["answer"]] * 2) == [0.0] * 2, unstated


@pytest.mark.parametrize(
    ("completion", "gold", "score"),
    [
        ("The answer is 3/4.", "0.75", 1.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("\\boxed{\\dfrac34}", "0.75", 1.0),
        ("\\boxed{0.750}", "#### 0.75", 1.0),
        ("The answer is 0.7", "0.75", 0.0),
        ("\\boxed{2\\frac{1}{2}}", "2.5", 1.0),  # math-verify reads the mixed number
        ("The answer is −3 degrees.", "-3", 1.0),  # a typographic minus
        ("#### -3.", "#### -3", 1.0),
        ("Answer: 8 - 3 = 5", "-3", 0.0),  # subtraction, not a negative number
        ("The answer: it rose by 50%", "50", 1.0),
        ("\\boxed{1{,}450{,}000}", "1450000", 1.0),
        ("\\boxed{\\$5,600}", "5,600", 1.0),
        ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
        ("The answer is 0.333333", "1/3", 1.0),  # rounded decimals within 1e-6
        ("The answer is 0.33", "1/3", 0.0),
        ("\\boxed{1450001}", "1450000", 0.0),  # integers compare exactly
        ("The answer is 12345.68", "12345.67", 0.0),
        ("#### 1,2,3", "1", 0.0),  # a list, not a thousands separator
        ("\\boxed{9^{9^{9^{9}}}}", "18", 0.0),  # never handed to sympy
        ("\\boxed{18", "18", 1.0),  # truncated generation
    ],
)
def test_numeric_forms(completion, gold, score):
    assert gsm8k_accuracy_reward([completion], answer=[gold]) == [score]


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("x = 3/4", "0.75"),
        ("The temperature is -3.", "#### -3"),
        ("It rose by 50%", "50"),
        ("1,2,3 and 4", "4"),  # a list, not a thousands separator
        ("8 - 3 = 5", "5"),
    ],
)
def test_numeric_forms_read_by_the_last_number_fallback(completion, gold):
    assert LENIENT_REWARD([completion], answer=[gold]) == [1.0]
    assert gsm8k_accuracy_reward([completion], answer=[gold]) == [0.0]  # no stated answer


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


def test_real_answers_score_one_and_shifted_answers_zero():
    answers = [row["answer"] for row in ROWS]
    shifted_gold = answers[1:] + answers[:1]  # each solution scored against another row's gold
    off_by_one = [
        a.rsplit("####", 1)[0] + f"#### {int(extract_gsm8k_gold(a)) + 1}" for a in answers
    ]  # the real working, a final number one off
    for reward in (gsm8k_accuracy_reward, PLAIN_REWARD):
        assert reward(answers, answer=answers) == [1.0] * len(ROWS)
        assert reward(answers, answer=shifted_gold) == [0.0] * len(ROWS)
        assert reward(off_by_one, answer=answers) == [0.0] * len(ROWS)


@pytest.mark.parametrize(
    "completion",
    [
        "The answer is not {g}.",
        "Final answer: {g} or {h}",
        "The answer is either {g} or {h}.",
        "The answer is between {g} and {h}.",
        "The answer is {g}-{h}.",
        "The answer is {g} and {h}",
        "The answer is approximately {g}",
        "The answer is at least {g}.",
        "The answer is ~{g}",
        "The answer is {g}, or maybe {h}.",
        "\\boxed{{{g} \\text{{ or }} {h}}}",
        "\\boxed{{{g}, {h}}}",
        "\\boxed{{\\text{{not }} {g}}}",
        "\\boxed{{{g} \\le x \\le {h}}}",
        "#### not {g}",
        "#### {g} or {h}",
        "#### Step {g}\nSo we get {h}.",
        "#### Step {g}\nThe answer is {h}.",
        "It is not {g}.",
        "Maybe {g}.",
        "The result lies between {h} and {g}",
    ],
)
def test_hedged_negated_multiple_and_range_answers_score_zero(completion):
    for gold in ("42", "1,450,000", "-3"):
        g = gold
        h = str(int(gold.replace(",", "")) + 8)
        text = completion.format(g=g, h=h)
        assert gsm8k_accuracy_reward([text], answer=[gold]) == [0.0], text
        assert PLAIN_REWARD([text], answer=[gold]) == [0.0], text


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("The answer is 1e3", "1000"),
        ("The answer is 4.2E1.", "42"),
        ("So the answer is 2.5e-1 of the cake.", "0.25"),
        ("The answer is 1.5 \\times 10^{3}", "1500"),
        ("\\boxed{1.45 \\times 10^6}", "1450000"),
        ("The answer is 3 x 10^2 people", "300"),
        ("So the answer is - 10.", "-10"),
        ("#### - 10", "-10"),
        ("\\boxed{- 3}", "-3"),
        ("Answer: -$5", "-5"),
        ("The answer is x = - 7", "-7"),
    ],
)
def test_scientific_notation_and_a_spaced_minus_are_read(completion, gold):
    assert gsm8k_accuracy_reward([completion], answer=[gold]) == [1.0]
    assert PLAIN_REWARD([completion], answer=[gold]) == [1.0]


def test_a_spaced_minus_is_a_sign_only_where_an_answer_starts():
    assert gsm8k_accuracy_reward(["8 - 3 = 5"], answer=["-3"]) == [0.0]
    assert gsm8k_accuracy_reward(["We have 12 - 10 left: 2"], answer=["-10"]) == [0.0]
    assert final_answer("The answer is 7 - 3 = 4").value == Fraction(4)  # the value after "="


def test_the_last_number_fallback_is_an_option_off_by_default():
    unstated = "After all that, she has 18 apples left."
    assert gsm8k_accuracy_reward([unstated], answer=["18"]) == [0.0]
    assert LENIENT_REWARD([unstated], answer=["18"]) == [1.0]
    stated = ["The answer is 18.", "#### 18", "\\boxed{18}"]
    assert gsm8k_accuracy_reward(stated, answer=["18"] * 3) == [1.0] * 3
    assert final_answer(unstated) is None
    assert final_answer(unstated, fallback_last_number=True).kind == "last number"
    # A stated answer is never second-guessed by the fallback, even when it is unreadable.
    assert LENIENT_REWARD(["The answer is 42 or 18. 18"], answer=["18"]) == [0.0]


# math-verify (parse + verify on the raw completion, its default extraction) on the same cases.
# Where the two differ, the reason is ours to document: docs/threat_model.md lists these.
MATH_VERIFY_CASES = [
    # completion, gold, ours, math-verify, why they differ
    ("The answer is 42.", "42", 1.0, 1.0, ""),
    ("#### 42", "42", 1.0, 1.0, ""),
    ("The answer is $1,234.", "1234", 1.0, 1.0, ""),
    ("\\boxed{3 \\cdot 6}", "18", 1.0, 1.0, "we hand a bounded boxed expression to math-verify"),
    ("\\boxed{2\\frac{1}{2}}", "2.5", 1.0, 1.0, ""),
    ("\\boxed{42 \\text{ or } 43}", "42", 0.0, 0.0, ""),
    ("\\boxed{42, 43}", "42", 0.0, 0.0, ""),
    ("#### Step 42\nThe answer is 50.", "50", 1.0, 1.0, ""),
    ("#### Step 42\nThe answer is 50.", "42", 0.0, 0.0, ""),
    ("The answer is not 42.", "42", 0.0, 1.0, "negated: math-verify takes the last number"),
    ("Answer: 42 or 43 or 44", "42", 0.0, 1.0, "several answers: math-verify takes the first"),
    ("The answer is between 42 and 50.", "42", 0.0, 1.0, "a range"),
    ("The answer is 42, or maybe 43.", "42", 0.0, 1.0, "hedged"),
    ("The final answer is about 42", "42", 0.0, 1.0, "hedged"),
    ("The answer is 42 and 43", "42", 0.0, 1.0, "two answers"),
    ("#### not 42", "42", 0.0, 1.0, "negated"),
    ("It is not 42.", "42", 0.0, 1.0, "no stated answer (the last-number fallback is off by default)"),
    (
        "I think it's 41. No wait, it's 42!",
        "42",
        0.0,
        1.0,
        "no stated answer (the last-number fallback is off by default)",
    ),
    ("The answer is 1e3", "1000", 1.0, 0.0, "scientific notation: math-verify reads 1"),
    ("The answer is 4.2e1", "42", 1.0, 0.0, "scientific notation"),
    ("The answer is 1.5 \\times 10^{3}", "1500", 1.0, 0.0, "scientific notation in LaTeX"),
    ("So the answer is - 10.", "-10", 1.0, 0.0, "a spaced minus: math-verify reads 10"),
    ("\\boxed{41} \\boxed{42}", "42", 1.0, 0.0, "the last box is the answer: math-verify reads a set"),
]


@pytest.mark.parametrize(("completion", "gold", "ours", "theirs", "why"), MATH_VERIFY_CASES)
def test_compared_with_math_verify(completion, gold, ours, theirs, why):
    math_verify = pytest.importorskip("math_verify")
    assert gsm8k_accuracy_reward([completion], answer=[gold]) == [ours]
    assert float(math_verify.verify(math_verify.parse(gold), math_verify.parse(completion))) == theirs
    assert bool(why) or ours == theirs  # every difference is explained


@pytest.mark.parametrize(
    ("completion", "gold", "score"),
    [
        (
            "\\frac{" + " " * 1600 + "1" + " " * 1600 + "}{2" + " " * 1600 + "}",
            "0.5",
            1.0,
        ),  # was cubic: 3.6 s
        ("\\frac{" * 20000 + "1" + "}" * 20000, "1", 1.0),  # nested: read as written, last number
        ("####" * 20000 + "\n#### 7", "7", 1.0),
        ("answer is " * 20000 + "9", "9", 1.0),
        ("1,234" * 20000, "1", 0.0),
        ("- " * 20000 + "5", "5", 1.0),
        ("\\boxed{" + "{" * 20000 + "3" + "}" * 20000 + "}", "3", 1.0),  # braces only group
    ],
    ids=["frac-spaces", "frac-nested", "hashes", "answer-is", "commas", "minus-spaces", "deep-box"],
)
def test_adversarial_texts_are_read_correctly(completion, gold, score):
    # Linear time is measured in tests/test_redteam_text.py; here, the results. Some of these state no
    # answer: the fallback reads the whole text.
    assert LENIENT_PLAIN([completion], answer=[gold]) == [score]


def test_math_verify_never_sees_unbounded_expressions():
    unbounded = [
        "\\binom{100000}{50000}",
        "9^{9^{9^{9}}}",
        "100000!",
        "\\sqrt{" + "9" * 40 + "}",
        "(" + "1+" * 200 + "1)",
        "\\int_0^1 x dx",
    ]
    assert [gsm8k._verifiable(b) for b in unbounded] == [False] * len(unbounded)
    assert [gsm8k._verifiable(b) for b in ("3 \\cdot 6", "\\sqrt{324}", "\\frac{36}{2}", "x = 2 + 16")] == [
        True
    ] * 4


def test_boxed_expressions_are_bounded_in_a_worker_thread():
    completions = ["\\boxed{\\binom{100000}{50000}}", "\\boxed{9^{9^{9^{9}}}}", "\\boxed{3 \\cdot 6}"]
    with ThreadPoolExecutor(max_workers=1) as pool:  # math-verify's SIGALRM timeout is off here
        scores = pool.submit(gsm8k_accuracy_reward, completions, answer=["18"] * 3).result()
    assert scores == [0.0, 0.0, 1.0]


def test_scoring_never_raises_on_what_a_policy_can_emit():
    odd = [
        None,
        3,
        [{"role": "assistant", "content": None}],
        "\\boxed{",
        "\\frac{",
        "####",
        "\x00" * 10,
        "1e99999",
    ]
    assert gsm8k_accuracy_reward(odd, answer=["1"] * len(odd)) == [0.0] * len(odd)
    assert format_reward(odd) == [0.0] * len(odd)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="answers"):
        gsm8k_accuracy_reward(["1", "2"], answer=["1"])


def test_missing_math_verify_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    reward = make_gsm8k_reward()  # building it never needs math-verify
    with pytest.raises(ImportError, match=r"pip install math-verify .*pip install -e '\.\[rewards\]'"):
        reward(["\\boxed{1}"], answer=["1"])
    assert make_gsm8k_reward(use_math_verify=False)(["\\boxed{1}"], answer=["1"]) == [1.0]


# --- the registry (lives in knapsack_trl.tasks.registry; tested here with the pure-Python rewards) -------


def test_registry_names_and_dotted_paths():
    from knapsack_trl.tasks import registry as rewards

    assert set(rewards.REWARD_FUNCTIONS) >= {
        "gsm8k_accuracy",
        "gsm8k_format",
        "humaneval_pass",
        "humaneval_pass_fraction",
    }
    assert rewards.resolve_reward("gsm8k_accuracy") is gsm8k_accuracy_reward
    assert rewards.resolve_reward("knapsack_trl.tasks.gsm8k.reward.format_reward") is format_reward
    assert rewards.resolve_reward("knapsack_trl.tasks.gsm8k.reward:format_reward") is format_reward
    assert rewards.resolve_reward(format_reward) is format_reward
    assert rewards.resolve_rewards(["gsm8k_accuracy", "gsm8k_format"]) == [
        gsm8k_accuracy_reward,
        format_reward,
    ]
    for name, func in rewards.REWARD_FUNCTIONS.items():
        assert func.__name__ == name  # TRL logs rewards by __name__


@pytest.mark.parametrize(
    "spec", ["gsm8k_acuracy", "no_such_module_xyz.reward", "knapsack_trl.tasks.gsm8k.reward.nope", ""]
)
def test_registry_errors_name_the_field_and_the_known_rewards(spec):
    from knapsack_trl.tasks import registry as rewards

    with pytest.raises(ValueError, match="reward_funcs") as err:
        rewards.resolve_reward(spec)
    assert "gsm8k_accuracy" in str(err.value) and "humaneval_pass" in str(err.value)


def test_registry_is_extensible(monkeypatch):
    from knapsack_trl.tasks import registry as rewards

    monkeypatch.setattr(rewards, "REWARD_FUNCTIONS", dict(rewards.REWARD_FUNCTIONS))

    @rewards.register_reward("always_one")
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

    assert rewards.resolve_reward("always_one") is always_one
    with pytest.raises(ValueError, match="already registered"):
        rewards.register_reward("always_one", lambda completions, **kw: [])

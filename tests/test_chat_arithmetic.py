"""The chat arithmetic task: conversational prompts, disjoint splits, and a strict reward (exact cases,
adversarial completions that must score 0, and hypothesis over numbers and wrappers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knapsack_trl.recipe import KnapsackScriptArguments, RecipeError, load_recipe_dataset
from knapsack_trl.tasks.chat_arithmetic import (
    CHAT_ARITHMETIC_INSTRUCTION,
    chat_arithmetic_reward,
    chat_arithmetic_rows,
    problem_split,
    strict_answer,
)
from knapsack_trl.tasks.registry import REWARD_FUNCTIONS, resolve_reward

ROOT = Path(__file__).resolve().parents[1]


def _score(completion: object, gold: str = "78") -> float:
    return chat_arithmetic_reward([completion], [gold])[0]


def test_rows_are_chat_prompts_with_the_true_result() -> None:
    rows = chat_arithmetic_rows(40, seed=1)
    assert len({r["prompt_id"] for r in rows}) == 40
    for row in rows:
        (message,) = row["prompt"]
        assert message["role"] == "user"
        assert message["content"] == f"{row['question']} {CHAT_ARITHMETIC_INSTRUCTION}"
        a, op, b = row["prompt_id"].removeprefix("chat:").partition("+")
        if not op:
            a, op, b = row["prompt_id"].removeprefix("chat:").partition("-")
        assert row["question"] == f"What is {a} {op} {b}?"
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    assert {len(r["prompt_id"].split(":")[1].replace("-", "+").split("+")[0]) for r in rows} == {1, 2}


def test_train_and_test_never_share_a_problem_and_follow_the_hash() -> None:
    train = chat_arithmetic_rows(150, "train", seed=0)
    test = chat_arithmetic_rows(60, "test", seed=0)
    other_seed = chat_arithmetic_rows(150, "train", seed=5)
    assert not {r["prompt_id"] for r in train} & {r["prompt_id"] for r in test}
    assert all(problem_split(r["prompt_id"]) == "test" for r in test)
    assert all(problem_split(r["prompt_id"]) == "train" for r in [*train, *other_seed])
    with pytest.raises(ValueError, match="splits"):
        chat_arithmetic_rows(4, "validation")


def test_an_instruction_and_a_system_prompt_reach_the_messages() -> None:
    (row,) = chat_arithmetic_rows(1, instruction="Answer: then the number.", system_prompt="Be brief.")
    assert row["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert row["prompt"][1]["content"].endswith("? Answer: then the number.")
    (bare,) = chat_arithmetic_rows(1, instruction="")
    assert bare["prompt"][0]["content"] == bare["question"]


@pytest.mark.parametrize(
    "completion",
    [
        "Answer: 78",
        "answer: 78.",
        "ANSWER:78",
        "**Answer:** 78",
        "Answer: **78**",
        "Sure! Answer: 78",
        "23 + 45 is easy.\nAnswer: 78",  # numbers before the marker are work, not answers
        "Answer: $78$",
        "Answer: 78.0",
        "78",  # no marker: the whole reply is the answer
        "The answer is 78.",
        "Answer: 23 + 45 = 78",  # the number after the last `=`, as for GSM8K
        "23 + 45 = 78",
        [{"role": "assistant", "content": "Answer: 78"}],
    ],
)
def test_one_number_after_the_marker_scores_one(completion: object) -> None:
    assert _score(completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "Answer: 77",
        "Answer: 78 or 79",
        "Answer: 78 or maybe 79",
        "Answer: 79 or 78",
        "Answer: 78, 79",
        "Answer: 78. Answer: 78",  # two markers
        "Answer: 77\nAnswer: 78",
        "Answer: 78\nActually 79",
        "Answer: 78 (or 79)",
        "Answer: not 78",
        "Answer: about 78",
        "Answer: approximately 78",
        "Answer: ~78",
        "Answer: 23 + 45 = 77",
        "Answer: 78 = 23 + 45",  # an expression after the last `=`
        "Answer: between 70 and 80",
        "Answer: 7 8",
        "Answer: seventy-eight",
        "Answer:",
        "",
        "Answer: 780",
        "Answer: 78/1",
        None,
        [],
    ],
)
def test_hedged_multiple_or_wrong_answers_score_zero(completion: object) -> None:
    assert _score(completion) == 0.0


NUMBER = st.integers(min_value=0, max_value=10_000)
WRAPPER = st.sampled_from(["Answer: {}", "answer:{}", "**Answer:** {}", "Answer: {}.", "Okay.\nAnswer: {}"])


@given(NUMBER, NUMBER, WRAPPER)
def test_the_reward_is_exactly_equality_of_the_stated_number(stated: int, gold: int, wrapper: str) -> None:
    assert _score(wrapper.format(stated), str(gold)) == float(stated == gold)


@given(
    NUMBER, NUMBER, st.sampled_from([" or {}", ", {}", " and {}", "\nAnswer: {}", " (not {})", " then {}"])
)
def test_a_second_number_after_the_marker_always_scores_zero(first: int, second: int, tail: str) -> None:
    text = f"Answer: {first}{tail.format(second)}"
    assert strict_answer(text) is None
    assert _score(text, str(first)) == _score(text, str(second)) == 0.0


def test_the_reward_is_registered_and_checks_its_inputs() -> None:
    assert REWARD_FUNCTIONS["chat_arithmetic"] is chat_arithmetic_reward
    assert (
        resolve_reward("knapsack_trl.tasks.chat_arithmetic.chat_arithmetic_reward") is chat_arithmetic_reward
    )
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        chat_arithmetic_reward(["Answer: 1", "Answer: 2"], ["1"])


def test_a_recipe_loads_the_task_by_name_with_its_fields() -> None:
    args = KnapsackScriptArguments(
        task="chat_arithmetic", dataset_num_rows=12, instruction="Say 'Answer: N'."
    )
    train = load_recipe_dataset(args, seed=0)
    test = load_recipe_dataset(args, split="test", seed=0)
    assert len(train) == len(test) == 12
    assert not set(train["prompt_id"]) & set(test["prompt_id"])
    assert all(p[0]["content"].endswith("Say 'Answer: N'.") for p in train["prompt"])
    with pytest.raises(RecipeError, match="task='chat_arith'"):
        KnapsackScriptArguments(task="chat_arith")


def test_the_gsm8k_instruction_field_reaches_the_prompts() -> None:
    sample = str(ROOT / "tests" / "fixtures" / "gsm8k_test_sample.jsonl")
    args = KnapsackScriptArguments(task="gsm8k", dataset_name=sample, instruction="End with #### N.")
    rows = load_recipe_dataset(args, split="test")
    assert all(p[-1]["content"].endswith("\n\nEnd with #### N.") for p in rows["prompt"])
    default = load_recipe_dataset(KnapsackScriptArguments(task="gsm8k", dataset_name=sample), split="test")
    assert all("\\boxed{}" in p[-1]["content"] for p in default["prompt"])
    bare = load_recipe_dataset(
        KnapsackScriptArguments(task="gsm8k", dataset_name=sample, instruction=""), split="test"
    )
    assert [p[-1]["content"] for p in bare["prompt"]] == bare["question"]

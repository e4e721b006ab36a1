from knapsack_trl.tasks.arithmetic import arithmetic_reward, arithmetic_rows


def test_rows_are_distinct_and_fill_past_an_exhausted_operand_size():
    rows = arithmetic_rows(1000, digits=(1, 2, 3))
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == 1000
    assert (
        sum(len(p.split("+")[0]) == 1 for p in prompts) == 100
    )  # every 1-digit problem, then 2/3-digit only
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("+")
        assert row["answer"] == str(int(a) + int(b)) and row["prompt_id"] == f"add:{a}+{b}"


def test_too_many_rows_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="distinct problems"):
        arithmetic_rows(101, digits=(1,))


def test_reward_reads_the_leading_number():
    assert arithmetic_reward([" 12 and more", "1", "x12", "123"], ["12", "12", "12", "12"]) == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]

import pytest

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
    with pytest.raises(ValueError, match="distinct problems"):
        arithmetic_rows(101, digits=(1,))


def test_reward_reads_the_leading_number():
    assert arithmetic_reward([" 12 and more", "1", "x12", "123"], ["12", "12", "12", "12"]) == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]


def test_operand_levels_draw_exact_digit_counts():
    import random

    from knapsack_trl.tasks.arithmetic import level_problem, operand_digits

    rng = random.Random(0)
    for level in ("1+1", "2+1", "2+2", "3+2", "3+3"):
        want = operand_digits(level)
        for _ in range(300):
            row = level_problem(rng, level)
            a, b = row["prompt"].rstrip("=").split("+")
            assert (len(a), len(b)) == want
            assert all(x[0] != "0" for x in (a, b) if len(x) > 1)  # exact digit counts: no leading zero
            assert row["answer"] == str(int(a) + int(b)) and row["prompt_id"] == f"add:{a}+{b}"
            assert row["level"] == level
    assert operand_digits("easy") is None and operand_digits("10+2") is None and operand_digits("0+1") is None


def test_level_capacity_counts_every_distinct_problem():
    from knapsack_trl.tasks.arithmetic import level_capacity

    def brute(da: int, db: int) -> int:
        lo = {1: 0, 2: 10, 3: 100}
        return len({f"{a}+{b}=" for a in range(lo[da], 10**da) for b in range(lo[db], 10**db)})

    assert level_capacity("1+1") == brute(1, 1) == 100
    assert level_capacity("2+1") == brute(2, 1) == 900
    assert level_capacity("3+2") == brute(3, 2) == 81000
    assert level_capacity("easy") == 10 * 100
    with pytest.raises(ValueError, match="unknown level 'x'"):
        level_capacity("x")


def test_splits_at_operand_levels_are_disjoint_interleaved_and_deterministic():
    from knapsack_trl.tasks.arithmetic import make_splits

    levels = ("2+1", "2+2", "3+2", "3+3")
    splits = make_splits(3, 400, 80, levels, sft_size=2000, probe_size=0, sft_levels=("1+1", *levels))
    assert make_splits(3, 400, 80, levels, sft_size=2000, probe_size=0, sft_levels=("1+1", *levels)) == splits
    assert [r["level"] for r in splits["pool"][:8]] == list(levels) * 2
    for name, n in (("pool", 400), ("heldout", 80)):
        assert len(splits[name]) == n and {r["level"] for r in splits[name]} == set(levels)
    pool, heldout = {r["prompt"] for r in splits["pool"]}, {r["prompt"] for r in splits["heldout"]}
    assert len(pool) == 400 and not pool & heldout
    assert not {r["prompt"] for r in splits["sft"]} & (pool | heldout)
    assert {r["level"] for r in splits["sft"]} == {"1+1", *levels}  # the warm-up's easier level too
    with pytest.raises(ValueError, match="cannot draw 200 distinct problems"):
        make_splits(0, 200, 0, ("1+1",), sft_size=0, probe_size=0)


def test_the_control_task_splits_are_unchanged():
    """The named levels draw exactly as before the operand levels existed (recorded from that code)."""
    from knapsack_trl.tasks.arithmetic import make_splits

    s = make_splits(0, 384, 192, ("easy", "medium", "hard"))
    assert [r["prompt"] for r in s["pool"][:4]] == ["2+26=", "58+75=", "398+9=", "4+42="]
    assert [r["prompt"] for r in s["heldout"][:3]] == ["6+97=", "63+5=", "365+988="]
    assert [r["prompt"] for r in s["sft"][:3]] == ["53+94=", "485+27=", "137+508="]
    assert s["probe"][0]["prompt"] == "1+22="

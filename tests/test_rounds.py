"""The pilot round's bookkeeping (``knapsack_trl.trainer.rounds``): invariants with hypothesis, padding by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from knapsack_trl.trainer.rounds import final_rows, interleave, log_positions, merge_outputs, merged_order


@st.composite
def two_rounds(draw):
    """Per-prompt rows of two rounds, each round's total a multiple of ``world`` processes, and each
    round's order (a random permutation of its canonical rows)."""
    world = draw(st.integers(1, 4))
    prompts = draw(st.integers(1, 6))
    sizes = []
    for most in (3, 5):
        rows = np.asarray(draw(st.lists(st.integers(0, most), min_size=prompts, max_size=prompts)))
        rows[0] += (-rows.sum()) % world
        sizes.append(rows)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    orders = [rng.permutation(int(s.sum())) for s in sizes]
    return world, sizes, orders


@settings(max_examples=200, deadline=None)
@given(two_rounds())
def test_merged_order_places_every_row_in_its_prompts_final_group(case) -> None:
    world, sizes, orders = case
    rows = final_rows(sizes)
    final = sizes[0] + sizes[1]
    order = merged_order(orders, rows, world)
    assert sorted(order.tolist()) == list(range(int(final.sum())))
    final_prompt = np.repeat(np.arange(final.size), final)
    # each process's part: its slice of round 0, then its slice of round 1
    labels = [torch.as_tensor(np.repeat(np.arange(s.size), s)[o]) for s, o in zip(sizes, orders, strict=True)]
    merged_prompt = interleave(labels, world).numpy()
    np.testing.assert_array_equal(final_prompt[order], merged_prompt)
    # within a prompt's final group its round-0 rows come first
    for r, (s, row) in enumerate(zip(sizes, rows, strict=True)):
        prompt = np.repeat(np.arange(s.size), s)
        within = row - (np.cumsum(final) - final)[prompt]
        assert ((within < sizes[0][prompt]) == (r == 0)).all()


@settings(max_examples=100, deadline=None)
@given(two_rounds())
def test_log_positions_follow_trls_round_major_logs(case) -> None:
    world, sizes, _ = case
    totals = [int(s.sum()) for s in sizes]
    tags = [torch.arange(n) + 1000 * r for r, n in enumerate(totals)]  # (round, gathered position)
    merged = interleave(tags, world)
    positions = log_positions(totals, world)
    assert merged[torch.as_tensor(positions)].tolist() == torch.cat(tags).tolist()


def test_merge_outputs_pads_prompts_left_and_completions_right() -> None:
    a = {
        "prompt_ids": torch.tensor([[5, 6]]),
        "prompt_mask": torch.tensor([[1, 1]]),
        "completion_ids": torch.tensor([[7]]),
        "completion_mask": torch.tensor([[1]]),
        "advantages": torch.tensor([0.5]),
        "num_items_in_batch": torch.tensor(3),
    }
    b = {
        "prompt_ids": torch.tensor([[9]]),
        "prompt_mask": torch.tensor([[1]]),
        "completion_ids": torch.tensor([[1, 2, 3]]),
        "completion_mask": torch.tensor([[1, 1, 1]]),
        "advantages": torch.tensor([-1.0]),
        "num_items_in_batch": torch.tensor(4),
    }
    out = merge_outputs([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[5, 6], [0, 9]]
    assert out["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert out["completion_ids"].tolist() == [[7, 0, 0], [1, 2, 3]]
    assert out["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out["advantages"].tolist() == [0.5, -1.0]
    assert int(out["num_items_in_batch"]) == 7
    with pytest.raises(ValueError, match="knapsack_pilot_rollouts=0"):
        merge_outputs([{**a, "pixel_values": torch.zeros(1, 3)}, {**b, "pixel_values": torch.zeros(1, 3)}], 0)

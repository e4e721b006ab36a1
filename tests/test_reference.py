"""The ``reference`` preset against the paper's own code, on the recorded fixture.

``tests/fixtures/reference_allocation.json`` holds 400 generation batches run through liziniu/KnapsackRL
(``scripts/record_reference_allocation.py``). Where the reference is buggy the preset is exact instead
(docs/method.md lists the deviations); everywhere else it must give the same allocation, prompt for prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from knapsack_trl.core.allocator import AllocatorConfig, KnapsackRolloutAllocator
from knapsack_trl.core.presets import PRESETS
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.core.values import knapsack_value

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "reference_allocation.json").read_text())
CASES = FIXTURE["cases"]


def preset_allocator(settings: dict) -> KnapsackRolloutAllocator:
    """The reference preset with the case's settings (its alpha, min_n, max_n, negative_n, positive_n)."""
    preset = PRESETS["reference"]
    min_n = settings["min_n"]
    config = {
        **preset.allocator,
        "solver": "dp",
        "n_min": min_n,
        "n_max": settings["max_n"],
        "fallback": settings["allow_fallback"],
        "fallback_confidence": settings["alpha"],
        "zero_success_budget": min_n if settings["negative_n"] is None else settings["negative_n"],
        "full_success_budget": min_n if settings["positive_n"] is None else settings["positive_n"],
    }
    return KnapsackRolloutAllocator(AllocatorConfig(**config), SuccessRateTracker(**preset.tracker))


def replay(case: dict) -> tuple[KnapsackRolloutAllocator, list[str]]:
    allocator = preset_allocator(case["settings"])
    ids = [str(i) for i in range(len(case["visits"]))]
    for pid, visits in zip(ids, case["visits"]):
        for step, rewards in enumerate(visits):
            allocator.observe([pid] * len(rewards), [float(r) for r in rewards], step=step)
    return allocator, ids


def reference_is_buggy(case: dict, ours: np.ndarray, mixed: np.ndarray, p: np.ndarray) -> str | None:
    """Which of the reference's known bugs this case hits, if any."""
    if case["error"] is not None:
        return "crash"
    ref = np.asarray(case["allocation"])
    if ref.max() > case["settings"]["max_n"]:
        return "above max_n"
    if ref[mixed].sum() == ours[mixed].sum():
        gap = knapsack_value(ours[mixed], p[mixed]).sum() - knapsack_value(ref[mixed], p[mixed]).sum()
        # Its DP scores "leave a prompt at min_n" as 0: it loses exactly where the optimum does that.
        if gap > 1e-12 and (ours[mixed] == case["settings"]["min_n"]).any():
            return "dp not optimal"
    return None


def test_the_fixture_covers_every_branch():
    summary = FIXTURE["summary"]
    for key in ("fallback_fired", "fallback_not_fired", "crashes", "batches_some_prompt_over_max_n"):
        assert summary[key] >= 20, key
    assert summary["batches_no_mixed_prompt"] >= 20 and summary["batches_every_prompt_mixed"] >= 20
    assert (
        summary["prompts_below_validity_threshold"] >= 100 and summary["prompts_last_visit_ge_buffer"] >= 100
    )


def test_reference_estimate_and_validity_on_every_prompt():
    for index, case in enumerate(CASES):
        allocator, ids = replay(case)
        st = allocator.tracker.stats(ids)
        for i, (valid, rate, count) in enumerate(case["reward_states"]):
            assert st.total_observations[i] == count, (index, i)
            assert (st.total_observations[i] >= allocator.config.min_observations) == bool(valid), (index, i)
            if count:
                assert st.empirical_rate[i] == rate, (index, i)  # bit for bit: both are k / m in float64


def test_reference_allocation_on_every_case_where_the_reference_is_not_buggy():
    bugs: dict[str, int] = {}
    equal = 0
    for index, case in enumerate(CASES):
        allocator, ids = replay(case)
        s = case["settings"]
        out = allocator.allocate(ids, s["n"] * len(ids))
        ours = out.rollouts_per_prompt
        mixed = out.bucket == "mixed"
        bug = reference_is_buggy(case, ours, mixed, out.success_rate)
        if bug is not None:
            bugs[bug] = bugs.get(bug, 0) + 1
            continue
        answers = [case["allocation"]] + (
            [case["allocation_float64_gains"]] if "allocation_float64_gains" in case else []
        )
        assert any(ours.tolist() == a for a in answers), (index, ours.tolist(), answers)
        equal += 1
    # Measured: 240 equal; the rest are 26 crashes, 57 above max_n, 77 where its DP is not optimal.
    assert equal >= 200, (equal, bugs)

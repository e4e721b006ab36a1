"""Choosing the prompts (``knapsack_candidate_factor``): the batch holds c times the prompts with the same
rows, the knapsack may give a prompt none, and a skipped prompt is never generated nor scored."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    REWARDS,
    FakeAllocation,
    give_allocations,
    mock_vllm_server,
    numpy_grpo,
    record_lasts,
    record_reward_calls,
    reversed_reward,
)

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer

pytestmark = pytest.mark.slow


def skipping_allocations(trainer: Any, seed: int) -> list[np.ndarray]:
    """Random allocations over the candidates: about half get 0, the rest at least 2, summing to the budget."""
    rng = np.random.default_rng(seed)
    drawn: list[np.ndarray] = []

    def allocate(prompt_ids: list[str], budget: int, step: int) -> FakeAllocation:
        chosen = np.sort(rng.choice(len(prompt_ids), size=len(prompt_ids) // 2, replace=False))
        sizes = np.zeros(len(prompt_ids), dtype=np.int64)
        sizes[chosen] = 2 + rng.multinomial(budget - 2 * chosen.size, np.full(chosen.size, 1 / chosen.size))
        drawn.append(sizes)
        return FakeAllocation(sizes)

    give_allocations(trainer, allocate)
    return drawn


def make(tiny_model, tiny_tokenizer, dataset, tiny_args, **overrides) -> KnapsackGRPOTrainer:
    return KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=[REWARDS["parity"], REWARDS["sparse"]],
        args=tiny_args(KnapsackGRPOConfig, **overrides),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )


def test_skipped_candidates_are_never_generated_and_groups_match_numpy(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    trainer = make(
        tiny_model, tiny_tokenizer, train_dataset, tiny_args, max_steps=3, knapsack_candidate_factor=2
    )
    drawn = skipping_allocations(trainer, seed=0)
    calls = record_reward_calls(trainer)
    lasts = record_lasts(trainer)
    trainer.train()
    prompt_of = {row["prompt_id"]: row["prompt"] for row in train_dataset}
    assert len(drawn) == len(lasts) == len(calls) == 3
    for sizes, last, call in zip(drawn, lasts, calls, strict=True):
        ids = last["prompt_ids"]
        assert len(ids) == len(set(ids)) == 8  # c x P = 2 x 16 / 4 distinct candidates
        assert last["rollouts"] == sizes.tolist() and sum(last["rollouts"]) == 16
        scored = Counter(call["prompts"])
        assert scored == Counter({prompt_of[pid]: n for pid, n in zip(ids, sizes.tolist(), strict=True) if n})
        expected = numpy_grpo(
            last["rewards_per_func"].numpy(), sizes.tolist(), np.ones(2), "group", "sum_then_normalize"
        )
        np.testing.assert_allclose(last["advantages"].numpy(), expected, rtol=1e-4, atol=1e-4)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["knapsack/informative_prompts"] <= 4 for h in logged)  # at most the chosen prompts


def test_a_vllm_server_generates_only_the_chosen_candidates(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args, recorder
) -> None:
    """A MOCK vLLM server (none can run here): one completion per row of the chosen candidates only, and the
    importance-sampling fields cover exactly the budget's rows."""
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=reversed_reward,
        args=tiny_args(KnapsackGRPOConfig, max_steps=2, knapsack_candidate_factor=2),
        train_dataset=train_dataset,
        processing_class=tiny_tokenizer,
    )
    client = mock_vllm_server(trainer, tiny_tokenizer, importance_sampling=True)
    drawn = skipping_allocations(trainer, seed=1)
    outputs = recorder(trainer)
    trainer.train()
    prompts = [Counter(map(str, c.kwargs["prompts"])) for c in client.generate.call_args_list]
    assert [sum(c.values()) for c in prompts] == [16, 16] and all(
        c.kwargs["n"] == 1 for c in client.generate.call_args_list
    )
    for sizes, asked in zip(drawn, prompts, strict=True):
        assert sorted(asked.values()) == sorted(n for n in sizes.tolist() if n)  # a skipped candidate: no row
    assert all(h["reward"] == 1.0 for h in trainer.state.log_history if "loss" in h)
    for output in outputs:
        for key in ("sampling_per_token_logps", "importance_sampling_ratio", "old_per_token_logps"):
            assert output[key].shape[0] == 16 and torch.isfinite(output[key]).all(), key


def test_an_epoch_keeps_its_steps_and_offers_every_prompt_c_times(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    dataset = train_dataset.select(range(8))
    steps = {}
    for factor in (1, 2):
        trainer = make(
            tiny_model,
            tiny_tokenizer,
            dataset,
            tiny_args,
            max_steps=-1,
            num_train_epochs=1,
            knapsack_candidate_factor=factor,
        )
        if factor > 1:
            skipping_allocations(trainer, seed=2)
        lasts = record_lasts(trainer)
        trainer.train()
        steps[factor] = trainer.state.max_steps
        offered = Counter(pid for last in lasts for pid in last["prompt_ids"])
        assert offered == Counter({pid: factor for pid in dataset["prompt_id"]})
    assert steps[1] == steps[2] == 2


def test_candidate_rows_per_process_and_budget_stay_stock(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
):
    """Every local batch TRL trains on keeps its shape: the same rows as without candidates."""
    trainer = make(
        tiny_model, tiny_tokenizer, train_dataset, tiny_args, max_steps=2, knapsack_candidate_factor=4
    )
    skipping_allocations(trainer, seed=1)
    shapes = []
    trainer.add_knapsack_listener(
        lambda event: shapes.append((len(event.prompt_ids), int(event.rollouts.sum())))
    )
    trainer.train()
    assert shapes == [(16, 16), (16, 16)]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"knapsack_candidate_factor": 0}, r"knapsack_candidate_factor=0 must be a whole number >= 1"),
        ({"knapsack_candidate_factor": 1.5}, r"knapsack_candidate_factor=1.5 must be a whole number"),
        ({"knapsack_candidate_factor": 3}, r"knapsack_candidate_factor=3 must divide num_generations=4"),
        (
            {"knapsack_candidate_factor": 2, "knapsack_n_min": 1},
            r"knapsack_n_min=1.*set knapsack_n_min >= 2",
        ),
        (
            {"knapsack_candidate_factor": 2, "knapsack_mode": "uniform"},
            r"knapsack_mode='uniform'.*num_generations=2 at the same generation_batch_size",
        ),
        (
            {"knapsack_candidate_factor": 2, "knapsack_preset": "reference"},
            r"knapsack_preset='reference'.*no candidates",
        ),
        (
            {"knapsack_candidate_factor": 2, "knapsack_pilot_rollouts": 3},
            r"knapsack_pilot_rollouts=3 x 8 prompts = 24 > generation_batch_size=16",
        ),
    ],
)
def test_bad_candidate_settings_fail_at_config_time(tiny_args, fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_args(KnapsackGRPOConfig, **fields)


def test_a_dataset_smaller_than_the_candidates_fails_before_training(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    with pytest.raises(
        ValueError, match=r"has 6 prompts, fewer than one generation batch of candidates.*= 8"
    ):
        make(
            tiny_model, tiny_tokenizer, train_dataset.select(range(6)), tiny_args, knapsack_candidate_factor=2
        )
    with pytest.raises(ValueError, match=r"needs a map-style train_dataset"):
        make(
            tiny_model,
            tiny_tokenizer,
            train_dataset.to_iterable_dataset(),
            tiny_args,
            knapsack_candidate_factor=2,
        )


def test_the_knapsack_skips_candidates_it_knows_are_solved_or_hopeless(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    """The real allocator with c = 2 on a reward whose 1-digit sums are always solved and 3-digit never:
    every batch offers all 8 prompts, and from the fifth batch on (each seen at least once, most several
    times) the skipped ones are exactly such prompts, the mixed ones always get a group, and the logs
    say which and why."""
    dataset = train_dataset.select(range(8))
    trainer = KnapsackGRPOTrainer(
        model=tiny_model(),
        reward_funcs=REWARDS["difficulty"],
        args=tiny_args(KnapsackGRPOConfig, max_steps=8, knapsack_n_max=10, knapsack_candidate_factor=2),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    lasts = record_lasts(trainer)
    trainer.train()
    digits = {pid: len(pid.split(":")[1].split("+")[0]) for pid in dataset["prompt_id"]}
    assert all(sum(last["rollouts"]) == 16 and len(last["prompt_ids"]) == 8 for last in lasts)
    later = [
        (digits[pid], n)
        for last in lasts[4:]
        for pid, n in zip(last["prompt_ids"], last["rollouts"], strict=True)
    ]
    skipped = [d for d, n in later if n == 0]
    assert skipped and all(d in (1, 3) for d in skipped), later  # only prompts known to be solved or hopeless
    assert all(n >= 2 for d, n in later if d == 2)  # the mixed 2-digit prompts always get a group
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["knapsack/prompts_considered"] == 8 for h in logged if "knapsack/prompts_considered" in h)
    shares = [
        h["knapsack/skipped_solved_share"] + h["knapsack/skipped_hopeless_share"]
        for h in logged[4:]
        if "knapsack/skipped_solved_share" in h
    ]
    assert shares and all(s == pytest.approx(1.0) for s in shares)
    assert all("knapsack/informative_prompts" in h and "knapsack/prompts_skipped" in h for h in logged)


def test_a_pilot_that_takes_the_whole_budget_warns_that_the_knapsack_allocates_nothing(tiny_args) -> None:
    """k x candidates = B: every prompt gets k, exactly the uniform split (G = 4, 16 rollouts, 8 candidates)."""
    with pytest.warns(
        UserWarning,
        match=r"knapsack_pilot_rollouts=2 x 8 prompts = generation_batch_size=16.*"
        r"allocates none; lower knapsack_pilot_rollouts or knapsack_candidate_factor",
    ):
        tiny_args(KnapsackGRPOConfig, knapsack_candidate_factor=2, knapsack_pilot_rollouts=2)
    with pytest.warns(UserWarning, match=r"knapsack_pilot_rollouts=4 x 4 prompts .*pilot_rollouts\.$"):
        tiny_args(KnapsackGRPOConfig, knapsack_candidate_factor=1, knapsack_pilot_rollouts=4)


def test_the_informative_rollouts_value_with_candidates_warns_with_what_it_measured(tiny_args) -> None:
    fields = {"knapsack_value_function": "informative_rollouts"}
    with pytest.warns(UserWarning, match=r"'informative_rollouts'.*lost 20 points.*'nonzero_gradient'"):
        tiny_args(KnapsackGRPOConfig, knapsack_candidate_factor=2, **fields)
    assert (
        tiny_args(KnapsackGRPOConfig, knapsack_candidate_factor=None, **fields).knapsack_candidate_factor == 1
    )


def test_greedy_with_candidates_warns_that_it_is_a_heuristic(tiny_args) -> None:
    with pytest.warns(UserWarning, match=r"knapsack_solver='greedy'.*heuristic.*'cpsat' is exact"):
        tiny_args(KnapsackGRPOConfig, knapsack_candidate_factor=2, knapsack_solver="greedy")


# --------------------------------------------------------------------------- the default (issue 22)
@pytest.mark.parametrize(
    ("fields", "factor"),
    [
        ({}, 4),  # G = 4: 4 candidates per prompt slot, one copy each
        ({"num_generations": 8, "per_device_train_batch_size": 16}, 4),
        ({"num_generations": 2}, 2),  # G / 4 is no whole number of copies
        ({"knapsack_pilot_rollouts": 2}, 1),  # over 4x the prompts: beyond the budget; over 2x: all of it
        ({"knapsack_pilot_rollouts": 1}, 2),  # over 4x the prompts: the whole budget; over 2x: half of it
        ({"knapsack_solver": "greedy"}, 1),  # greedy is a heuristic over candidates: no default warning
        ({"knapsack_mode": "uniform"}, 1),
        ({"knapsack_preset": "reference"}, 1),
        ({"knapsack_token_cost": True}, 1),
        ({"knapsack_enabled": False}, 1),
        ({"knapsack_candidate_factor": 2}, 2),  # explicit: kept
    ],
)
def test_the_default_candidate_factor_is_the_largest_the_settings_allow(tmp_path, fields, factor) -> None:
    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=16)
    args = KnapsackGRPOConfig(**{"num_generations": 4, **common, **fields})
    assert args.knapsack_candidate_factor == factor
    assert args.knapsack_candidate_factor_defaulted is ("knapsack_candidate_factor" not in fields)


def test_the_default_arm_is_what_the_config_defaults_run(tmp_path) -> None:
    """The demo's second arm (methods.DEFAULT_ARM) sets exactly what a default config resolves to."""
    from knapsack_trl.experiments.methods import ARMS, DEFAULT_ARM

    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=16)
    default = KnapsackGRPOConfig(num_generations=8, **common).to_dict()
    arm = KnapsackGRPOConfig(num_generations=8, **common, **ARMS[DEFAULT_ARM].config_fields(8)).to_dict()
    assert default == arm
    within = KnapsackGRPOConfig(num_generations=8, **common, **ARMS["knapsack"].config_fields(8))
    assert within.knapsack_candidate_factor == 1  # the within-batch arms stay within the batch


def test_compare_runs_uniform_against_the_default_arm_without_methods() -> None:
    from knapsack_trl.experiments import compare
    from knapsack_trl.experiments.methods import DEFAULT_ARM

    for argv, extra in (([], ()), (["--oracle"], ("oracle",))):
        assert compare._methods(compare._parser().parse_args(argv)) == ("uniform", DEFAULT_ARM, *extra)


def test_a_defaulted_factor_is_lowered_to_what_the_dataset_holds(
    tiny_model, tiny_tokenizer, train_dataset, tiny_args
) -> None:
    """16 prompts, P = 4: a default of 4 needs 16 candidates (kept), 2 needs 8; fewer than 8 gives 1; a dataset
    without a length gives 1. Each change is a warning naming the field; an explicit factor is refused
    instead (the test above)."""
    for rows, expected in ((16, 4), (12, 2), (6, 1), (None, 1)):
        dataset = train_dataset.to_iterable_dataset() if rows is None else train_dataset.select(range(rows))
        fields = {"knapsack_candidate_factor": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = make(tiny_model, tiny_tokenizer, dataset, tiny_args, **fields)
        assert trainer.args.knapsack_candidate_factor == expected, rows
        notes = [str(w.message) for w in caught if "knapsack_candidate_factor (default)" in str(w.message)]
        assert len(notes) == (expected != 4), (rows, notes)

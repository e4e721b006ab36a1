"""Agent runs through the knapsack trainer: tools, rollout_func and environment_factory (single, dict, owned data).

The policy is the tiny Llama of ``knapsack_trl.tasks.arithmetic`` on the calculator world's tokenizer and
chat template (``knapsack_trl.tasks.calculator``), warmed up for a few seconds on whole dialogues so that
its generations call the tool for real: TRL's own tool loop parses, executes and feeds back every call.
The assertions are on our side: allocation, pairing of rollouts with prompts, advantages per variable
group against the numpy reference, the tracker, the cost and the metrics.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import pytest
from datasets import Dataset
from helpers import inject_random_allocations, numpy_grpo, record_lasts

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer
from knapsack_trl.tasks import calculator as world
from knapsack_trl.trainer.plan import UNIDENTIFIED, row_task_id

pytestmark = pytest.mark.slow
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

B, G = 16, 4  # rollouts per generation batch, num_generations: 4 prompts per batch


@pytest.fixture(scope="module")
def calc_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model warmed up on calculator dialogues (200 steps, about 8 s), saved offline: it then
    calls the tool on nearly every prompt and copies the expression exactly about 60% of the time."""
    from knapsack_trl.experiments.harness import warm_up
    from knapsack_trl.tasks.arithmetic import build_model, save_tiny

    tokenizer = world.build_tokenizer()
    model = build_model(tokenizer)
    warm_up(model, tokenizer, world.sft_rows(4000), 200, batch_size=64, lr=3e-3, progress=False)
    return save_tiny(tmp_path_factory.mktemp("calc") / "model", model, tokenizer)


@pytest.fixture
def make_trainer(calc_dir: str, tiny_args: Any):
    """Factory: a KnapsackGRPOTrainer on the warmed model, the calculator tokenizer and CPU-sized settings."""
    from transformers import AutoModelForCausalLM

    def make(train_dataset: Any = None, reward_funcs: Any = None, **kwargs: Any) -> KnapsackGRPOTrainer:
        fields = {"max_completion_length": 32, "max_steps": 4, "temperature": 1.0}
        fields.update({k: kwargs.pop(k) for k in list(kwargs) if k.startswith(("knapsack_", "max_"))})
        args = tiny_args(KnapsackGRPOConfig, **fields)
        return KnapsackGRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(calc_dir),
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            processing_class=world.build_tokenizer(),
            **kwargs,
        )

    return make


@pytest.fixture(scope="module")
def calc_rows() -> Dataset:
    return Dataset.from_list(world.calculator_rows(8))


class Recorder:
    """A reward function that records what TRL scores (prompts, completions, columns) and scores exact calls."""

    __name__ = "recorded_exact_call"

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        self.batches.append({"prompts": prompts, "completions": completions, **kwargs})
        return world.exact_call_reward(completions, kwargs["answer"], kwargs["expression"])


def first_call(completion: list[dict[str, Any]]) -> str | None:
    for message in completion:
        for call in message.get("tool_calls") or []:
            return call["function"]["arguments"].get("x")
    return None


def assert_advantages_match_reference(last: dict[str, Any], sizes: list[int]) -> None:
    rpf = last["rewards_per_func"].numpy()
    expected = numpy_grpo(rpf, sizes, np.ones(rpf.shape[1]), "group", "sum_then_normalize")
    np.testing.assert_allclose(last["advantages"].numpy(), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- tools
def test_tools_pair_each_rollout_with_its_prompt_and_match_the_reference(make_trainer, calc_rows) -> None:
    reward = Recorder()
    trainer = make_trainer(calc_rows, reward, tools=[world.calc], knapsack_n_min=0)
    drawn = inject_random_allocations(trainer, seed=0)
    lasts = record_lasts(trainer)
    trainer.train()

    assert len(drawn) == len(lasts) == len(reward.batches) == 4
    assert len({tuple(s) for s in drawn}) > 1 and any((s == 0).any() for s in drawn)  # a prompt with none
    expression = {row["prompt_id"]: row["prompt"][0]["content"].rstrip("=") for row in calc_rows}
    own = foreign = calls = 0
    for sizes, last, batch in zip(drawn, lasts, reward.batches, strict=True):
        assert last["rollouts"] == sizes.tolist() and sum(last["rollouts"]) == B
        rows = [pid for pid, n in zip(last["prompt_ids"], sizes.tolist(), strict=True) for _ in range(n)]
        assert [p[0]["content"] for p in batch["prompts"]] == [expression[pid] + "=" for pid in rows]
        assert batch["prompt_id"] == rows  # each rollout scored with its own row's columns
        others = set(expression[pid] for pid in last["prompt_ids"])
        for pid, completion, n_calls in zip(rows, batch["completions"], last["tool_calls"], strict=True):
            tool_messages = [m for m in completion if m["role"] == "tool"]
            assert n_calls == len(tool_messages)
            x = first_call(completion)
            if tool_messages:  # the result TRL fed back is the value of this rollout's own call
                calls += 1
                assert tool_messages[0]["content"] == world.calc(x) or "error" in tool_messages[0]["content"]
            own += x == expression[pid]
            foreign += x in others - {expression[pid]}
        assert_advantages_match_reference(last, sizes.tolist())
    assert calls > 32 and own > 16 and foreign == 0  # real tool calls, each copied from its own prompt
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for key in (
        "knapsack/informative_prompts",
        "knapsack/rollouts_max",
        "knapsack/tool_calls_per_rollout",
        "tools/call_frequency",
    ):
        assert all(key in h for h in logged), key
    assert any("knapsack/tool_calls_per_rollout_above_uniform" in h for h in logged)
    assert any("knapsack/tool_calls_per_rollout_below_uniform" in h for h in logged)


def test_tools_tracker_learns_per_prompt_and_costs_count_every_turn(make_trainer) -> None:
    # Half the prompts cannot be solved (no call evaluates to their answer): the allocation has a reason to move.
    rows = [{**row, "answer": "-1"} if k % 2 else row for k, row in enumerate(world.calculator_rows(8))]
    calc_rows = Dataset.from_list(rows)
    reward = Recorder()
    trainer = make_trainer(
        calc_rows,
        reward,
        tools=[world.calc],
        max_steps=6,
        knapsack_tracker_window=64,
        knapsack_token_cost=True,  # the costs below are what the token budget is spent on
        knapsack_solver="cpsat",
    )
    outputs = []
    generate = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: outputs.append(generate(inputs)) or outputs[-1]
    trainer.train()

    history = list(trainer.knapsack_history)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for key in ("knapsack/informative_prompts", "knapsack/rollouts_min", "knapsack/rollouts_mean"):
        assert all(key in h for h in logged), key
    assert all(h["rollouts"] == [G] * 4 for h in history[:2])  # nothing seen yet: uniform
    assert any(h["rollouts"] != [G] * 4 for h in history[2:])  # then the allocation moves
    successes: dict[str, list[float]] = {}
    costs: dict[str, list[float]] = {}
    for batch, output in zip(reward.batches, outputs, strict=True):
        generated = (output["completion_mask"] * output["tool_mask"]).sum(1).tolist()
        scores = world.exact_call_reward(batch["completions"], batch["answer"], batch["expression"])
        for pid, score, cost in zip(batch["prompt_id"], scores, generated, strict=True):
            successes.setdefault(pid, []).append(score)
            costs.setdefault(pid, []).append(cost)
    state = trainer.knapsack_allocator.tracker.state_dict()["prompts"]
    assert set(state) == set(calc_rows["prompt_id"]) == set(successes)
    for pid, entry in state.items():  # the tracker's history is each prompt's own outcomes, in order
        assert entry["outcomes"] == "".join(str(int(x)) for x in successes[pid])
        assert entry["lengths"] == costs[pid]
    tool_rows = [o["tool_mask"].eq(0).any(1) for o in outputs]
    assert sum(int(t.sum()) for t in tool_rows) > 32
    # A rollout that called the tool costs its turn before the call plus its turn after (tool result excluded).
    two_turns = [
        c
        for o, t in zip(outputs, tool_rows, strict=True)
        for c, m in zip(o["tool_mask"], t, strict=True)
        if m
    ]
    assert all(int(mask.eq(0).sum()) > 0 for mask in two_turns)


def test_a_tool_that_raises_is_a_per_rollout_failure(make_trainer, calc_rows) -> None:
    def calc(x: str) -> str:
        """A calculator that is down.

        Args:
            x: The expression.
        """
        raise RuntimeError("calculator offline")

    reward = Recorder()
    trainer = make_trainer(
        calc_rows, reward, tools=[calc], max_steps=2, max_completion_length=64, knapsack_n_min=0
    )
    drawn = inject_random_allocations(trainer, seed=5)
    lasts = record_lasts(trainer)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["tools/failure_frequency"] == 1.0 for h in logged)
    for sizes, last, batch in zip(drawn, lasts, reward.batches, strict=True):
        rows = [pid for pid, n in zip(last["prompt_ids"], sizes.tolist(), strict=True) for _ in range(n)]
        assert batch["prompt_id"] == rows
        results = [m["content"] for c in batch["completions"] for m in c if m["role"] == "tool"]
        assert all("error" in r for r in results) and any("calculator offline" in r for r in results)
        assert_advantages_match_reference(last, sizes.tolist())


# --------------------------------------------------------------------------- rollout_func
def test_rollout_func_gets_one_row_per_rollout(make_trainer, calc_rows) -> None:
    """A two-part rollout: the policy's generation, then environment feedback (``env_mask`` 0), which the
    rollout's cost leaves out."""
    import torch

    seen: list[int] = []
    generated: list[int] = []

    def rollout_func(prompts: list, trainer: Any) -> dict[str, Any]:
        """Generates as TRL documents: one prompt per ``num_generations`` rows, that many completions each."""
        tokenizer, group = trainer.processing_class, trainer.num_generations
        unique = prompts[::group]
        seen.append(len(prompts))
        encoded = tokenizer.apply_chat_template(
            unique,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            padding=True,
            return_tensors="pt",
        )
        model = trainer.accelerator.unwrap_model(trainer.model)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=16, do_sample=True, num_return_sequences=group)
        width = encoded["input_ids"].shape[1]
        prompt_ids = [
            ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])
        ]
        policy = []
        for row in out[:, width:].tolist():
            policy.append(
                row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row
            )
        feedback = tokenizer("<result>0</result>")["input_ids"]
        generated.extend(len(ids) for ids in policy)
        return {
            "prompt_ids": [p for p in prompt_ids for _ in range(group)],
            "completion_ids": [ids + feedback for ids in policy],
            "logprobs": None,
            "env_mask": [[1] * len(ids) + [0] * len(feedback) for ids in policy],
            "source": [u[0]["content"] for u in unique for _ in range(group)],
        }

    def source_reward(prompts: list, completions: list, source: list, **kwargs: Any) -> list[float]:
        assert [p[0]["content"] for p in prompts] == source  # each completion scored with its own prompt
        return [float(len(world.completion_text(c)) % 2) for c in completions]

    trainer = make_trainer(
        calc_rows, source_reward, rollout_func=rollout_func, knapsack_n_min=0, knapsack_tracker_window=64
    )
    drawn = inject_random_allocations(trainer, seed=11)
    lasts = record_lasts(trainer)
    trainer.train()
    assert seen == [B] * 4 and trainer.num_generations == G
    costs: dict[str, list[float]] = {}
    for k, (sizes, last) in enumerate(zip(drawn, lasts, strict=True)):
        assert last["rollouts"] == sizes.tolist()
        assert_advantages_match_reference(last, sizes.tolist())
        rows = [pid for pid, n in zip(last["prompt_ids"], sizes.tolist(), strict=True) for _ in range(n)]
        for pid, n_tokens in zip(rows, generated[B * k : B * (k + 1)], strict=True):
            costs.setdefault(pid, []).append(float(n_tokens))
    state = trainer.knapsack_allocator.tracker.state_dict()["prompts"]
    assert {pid: e["lengths"] for pid, e in state.items()} == costs  # the policy's tokens, feedback excluded


# --------------------------------------------------------------------------- environments
class MulEnv(world.CalculatorEnv):
    """The calculator environment, counting its instances' resets to check one instance per rollout."""

    resets: ClassVar[list[tuple[int, str]]] = []

    def reset(self, **row: Any) -> str | None:
        observation = super().reset(**row)
        MulEnv.resets.append((id(self), self.answer))
        return observation


class HalfHardEnv(MulEnv):
    """Odd tasks cannot be solved (their answer is no product): a pool with something to allocate."""

    def reset(self, **row: Any) -> str | None:
        observation = super().reset(**row)
        if int(row["task"]) % 2:
            self.answer = "-1"
        return observation


class AddEnv(world.CalculatorEnv):
    """A second environment for the dict form (its own class: its own reward column in TRL)."""


def test_environment_with_a_dataset_one_instance_per_rollout(make_trainer, calc_rows) -> None:
    MulEnv.resets = []
    trainer = make_trainer(
        calc_rows, None, environment_factory=MulEnv, knapsack_n_min=0, knapsack_tracker_window=64
    )
    drawn = inject_random_allocations(trainer, seed=2)
    lasts = record_lasts(trainer)
    trainer.train()
    answer = {row["prompt_id"]: row["answer"] for row in calc_rows}
    for k, (sizes, last) in enumerate(zip(drawn, lasts, strict=True)):
        batch = MulEnv.resets[k * B : (k + 1) * B]
        assert len({instance for instance, _ in batch}) == B  # one environment per rollout
        rows = [pid for pid, n in zip(last["prompt_ids"], sizes.tolist(), strict=True) for _ in range(n)]
        assert [a for _, a in batch] == [answer[pid] for pid in rows]  # each reset got its own row
        assert trainer.reward_func_names == ["MulEnv"]  # get_reward is the only reward
        assert_advantages_match_reference(last, sizes.tolist())
    state = trainer.knapsack_allocator.tracker.state_dict()["prompts"]
    rewards = {}
    for last in lasts:
        rows = [pid for pid, n in zip(last["prompt_ids"], last["rollouts"], strict=True) for _ in range(n)]
        for pid, r in zip(rows, last["rewards_per_func"][:, 0].tolist(), strict=True):
            rewards.setdefault(pid, []).append(r)
    outcomes = {pid: "".join(str(int(x)) for x in r) for pid, r in rewards.items()}
    assert {pid: e["outcomes"] for pid, e in state.items()} == outcomes  # get_reward feeds the tracker
    assert any(0 < np.mean(r) < 1 for r in rewards.values())


def test_environment_dict_routes_rows_and_allocates_on_them(make_trainer) -> None:
    rows = [
        {**row, "environment": "add" if k % 2 else "mul"} for k, row in enumerate(world.calculator_rows(8))
    ]
    dataset = Dataset.from_list(rows)
    trainer = make_trainer(
        dataset, None, environment_factory={"mul": MulEnv, "add": AddEnv}, knapsack_n_min=0
    )
    drawn = inject_random_allocations(trainer, seed=4)
    lasts = record_lasts(trainer)
    envs: list[list[str]] = []
    calculate = trainer._calculate_rewards

    def capture(inputs, prompts, completions, completion_ids):
        envs.append([type(e).__name__ for e in trainer.environments])
        assert [i["environment"] for i in inputs] == [{"MulEnv": "mul", "AddEnv": "add"}[n] for n in envs[-1]]
        return calculate(inputs, prompts, completions, completion_ids)

    trainer._calculate_rewards = capture
    trainer.train()
    route = {row["prompt_id"]: row["environment"] for row in rows}
    for sizes, last, names in zip(drawn, lasts, envs, strict=True):
        expanded = [
            route[pid] for pid, n in zip(last["prompt_ids"], sizes.tolist(), strict=True) for _ in range(n)
        ]
        assert [{"MulEnv": "mul", "AddEnv": "add"}[n] for n in names] == expanded
        assert_advantages_match_reference(last, sizes.tolist())


def test_environment_owned_rows_are_keyed_on_the_row(make_trainer) -> None:
    rows = [{"environment": "mul", "task": k} for k in range(8)]
    trainer = make_trainer(
        Dataset.from_list(rows), None, environment_factory={"mul": HalfHardEnv}, max_steps=6
    )
    trainer.train()
    ids = {row_task_id(row, "prompt_id") for row in rows}
    assert len(ids) == 8 and UNIDENTIFIED not in ids
    state = trainer.knapsack_allocator.tracker.state_dict()["prompts"]
    assert set(state) == ids and sum(e["total"] for e in state.values()) == 6 * B
    history = list(trainer.knapsack_history)
    assert any(h["rollouts"] != [G] * 4 for h in history[2:])


def test_environment_without_a_dataset_is_uniform_with_one_warning(make_trainer, monkeypatch) -> None:
    from knapsack_trl.trainer import agents

    warnings: list[str] = []
    monkeypatch.setattr(agents.logger, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    trainer = make_trainer(None, None, environment_factory=world.CalculatorEnv, max_steps=3)
    trainer.train()
    assert [h["rollouts"] for h in trainer.knapsack_history] == [[G] * 4] * 3
    assert sum("name no task" in w for w in warnings) == 1
    assert trainer.knapsack_allocator.tracker.state_dict()["prompts"] == {}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["knapsack/unidentified_prompts"] == 4 for h in logged)


# --------------------------------------------------------------------------- bad input
def test_no_dataset_and_no_environment_raises_trls_error(make_trainer) -> None:
    with pytest.raises(
        ValueError, match=r"`train_dataset` is required unless an `environment_factory` is provided"
    ):
        make_trainer(None, world.calculator_reward)


def test_environment_dict_without_an_environment_column_fails_at_start(make_trainer, calc_rows) -> None:
    with pytest.raises(
        ValueError, match=r"'environment' column.*\['add', 'mul'\]|\['add', 'mul'\].*'environment' column"
    ):
        make_trainer(calc_rows, None, environment_factory={"mul": MulEnv, "add": AddEnv})


class DriftingEnv(world.CalculatorEnv):
    """Ignores its row: every reset draws a fresh problem, so the copies of one row get different tasks."""

    def reset(self, **row: Any) -> str | None:
        return super().reset(task=int(self._rng.randrange(10**6)))


def test_a_task_that_changes_between_copies_of_a_row_is_refused(make_trainer) -> None:
    rows = [{"task_name": f"t{k}", "prompt_id": f"t{k}"} for k in range(8)]
    trainer = make_trainer(Dataset.from_list(rows), None, environment_factory=DriftingEnv, max_steps=1)
    with pytest.raises(ValueError, match=r"different prompts.*reset\(\).*knapsack_prompt_id_column"):
        trainer.train()


def test_a_task_that_changes_between_copies_is_refused_with_a_pilot_round(make_trainer) -> None:
    """The stable-task check holds across a pilot round's two generation calls (it was switched off there)."""
    rows = [{"task_name": f"t{k}", "prompt_id": f"t{k}"} for k in range(8)]
    trainer = make_trainer(
        Dataset.from_list(rows), None, environment_factory=DriftingEnv, max_steps=1, knapsack_pilot_rollouts=2
    )
    with pytest.raises(ValueError, match=r"different prompts.*reset\(\).*knapsack_prompt_id_column"):
        trainer.train()


# --------------------------------------------------------------------------- recipes
def test_a_recipe_names_agent_parts_by_dotted_path() -> None:
    from knapsack_trl.recipe import KnapsackScriptArguments, RecipeError, recipe_agents

    calc, env = "knapsack_trl.tasks.calculator.calc", "knapsack_trl.tasks.calculator:CalculatorEnv"
    kwargs = recipe_agents(KnapsackScriptArguments(tools=calc, environment_factory=env))
    assert kwargs == {"tools": [world.calc], "environment_factory": world.CalculatorEnv}
    assert recipe_agents(KnapsackScriptArguments()) == {}
    with pytest.raises(RecipeError, match=r"tools: cannot import 'no_such_pkg\.calc'"):
        recipe_agents(KnapsackScriptArguments(tools=["no_such_pkg.calc"]))
    with pytest.raises(
        RecipeError, match=r"rollout_func: 'knapsack_trl\.tasks\.calculator\.CHARS' is not a callable"
    ):
        recipe_agents(KnapsackScriptArguments(rollout_func="knapsack_trl.tasks.calculator.CHARS"))
    with pytest.raises(RecipeError, match="set trainer_type: grpo"):
        recipe_agents(KnapsackScriptArguments(tools=[calc], trainer_type="rloo"))


# --------------------------------------------------------------------------- two processes
@pytest.mark.multiprocess
def test_two_processes_keep_each_rollout_with_its_prompt(calc_dir: str, tmp_path) -> None:
    """Environment rollouts permuted across two gloo processes: both ranks take the same allocation, each
    rank's environments hold the answers of the rows it was given, and the gathered tool calls, costs
    and task hashes line up (a misaligned gather would fail the stable-task check)."""
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker = Path(__file__).with_name("agents_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    command += ["127.0.0.1", "--master_port", str(port), str(worker), calc_dir, str(tmp_path)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    answer = {row["prompt_id"]: row["answer"] for row in world.calculator_rows(8)}
    answer = {pid: ("-1" if k % 2 else a) for k, (pid, a) in enumerate(answer.items())}
    assert set(ranks[0]["tracker"]) == set(answer)
    for g0, g1 in zip(ranks[0]["generations"], ranks[1]["generations"], strict=True):
        for key in (
            "prompt_ids",
            "rollouts",
            "order",
            "global_advantages",
            "tool_calls",
            "lengths",
            "rewards",
        ):
            assert g0[key] == g1[key], key
        assert sum(g0["rollouts"]) == 32
        canonical = [pid for pid, n in zip(g0["prompt_ids"], g0["rollouts"], strict=True) for _ in range(n)]
        for rank, g in enumerate((g0, g1)):  # each rank's environments were reset with the rows it was given
            rows = [canonical[c] for c in g0["order"][16 * rank : 16 * (rank + 1)]]
            assert g["answers"] == [answer[pid] for pid in rows]
        assert all(r == 0 for pid, r in zip(canonical, g0["rewards"], strict=True) if answer[pid] == "-1")
    generations = ranks[0]["generations"]
    assert len(generations) == 3 and all(sum(g["tool_calls"]) > 0 for g in generations)
    assert any(g["order"] != list(range(32)) for g in generations)  # rollouts moved between processes


def test_environment_row_ids() -> None:
    """The id table of docs/agents.md: the id column, else the whole row (non-JSON fields left out), else none."""
    from knapsack_trl.core.tracker import prompt_id
    from knapsack_trl.trainer.plan import PLACEHOLDER_PROMPT

    assert row_task_id({"environment": "mul", "prompt_id": 7, "task": 1}, "prompt_id") == "7"
    assert row_task_id({"environment": "mul", "task": 1}, "prompt_id") == prompt_id(
        {"environment": "mul", "task": 1}
    )
    assert row_task_id({"task": 1, "image": object()}, "prompt_id") == row_task_id({"task": 1}, "prompt_id")
    assert row_task_id({"task": 1}, "prompt_id") != row_task_id({"task": 2}, "prompt_id")
    prompt = [{"role": "user", "content": "12*34="}]
    assert row_task_id({"prompt": prompt, "answer": "408"}, "prompt_id") == prompt_id(
        {"prompt": prompt, "answer": "408"}
    )
    for row in (
        {"prompt": PLACEHOLDER_PROMPT},
        {"environment": "mul"},
        {"prompt": PLACEHOLDER_PROMPT, "environment": "a"},
    ):
        assert row_task_id(row, "prompt_id") == UNIDENTIFIED

"""The step-speed benchmark: its arithmetic against hand-computed values, and that each speed setting
changes what it claims (the recipe fields, the attention implementation, the matmul dtype under
autocast, the phases a step is split into). Never a timing: the speed-up itself is measured by
``python -m knapsack_trl.benchmarks.step_speed`` (docs/own_model_cpu.md#speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from knapsack_trl.experiments.benchmarks import step_speed
from knapsack_trl.experiments.benchmarks.step_speed import (
    PHASES,
    SETTINGS,
    logp_difference,
    other_seconds,
    paired_ratios,
    spread,
    summarize,
)
from knapsack_trl.recipe import parse_args

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_RECIPES = sorted((ROOT / "recipes" / "tiny").glob("smollm2-*.yaml"))
TINY = ROOT / "recipes" / "tiny" / "arithmetic-uniform.yaml"


def _run(setting: str, round_: int, step_seconds: list[float], logps: list[list[float]]) -> dict[str, Any]:
    steps = [
        {
            "step_seconds": t,
            "cpu_seconds": t / 2,
            "phases": {"generation": t / 2, "backward": t / 4, "other": t / 4},
            "loss": 0.5,
            "reward": 0.25,
            "grad_norm": 1.0,
            "mean_length": 12.0,
        }
        for t in step_seconds
    ]
    return {
        "setting": setting,
        "round": round_,
        "steps": steps,
        "warmup_step": {**steps[0], "loss": 0.5 + round_},
        "check_logps": logps,
        "peak_rss_mb": 1000.0 + round_,
        "model": {},
    }


def test_the_report_arithmetic_against_hand_computed_values() -> None:
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5, "max": 10.0}
    assert other_seconds(10.0, {"generation": 4.0, "loss": 3.0, "other": 99.0}) == 3.0
    assert other_seconds(1.0, {"generation": 1.5}) == 0.0  # rounding never makes it negative
    ref, near = [[-1.0, -2.0], [-0.5]], [[-1.25, -2.0], [-0.25]]
    assert logp_difference(near, ref) == {"max_abs": 0.25, "mean_abs": pytest.approx(0.5 / 3)}
    with pytest.raises(ValueError):  # a different check set is not comparable
        logp_difference([[-1.0]], ref)
    runs = [
        _run("a", 0, [10.0, 12.0], ref),
        _run("b", 0, [5.0, 7.0], near),
        _run("b", 1, [4.0], near),  # round 1 comes second in the list but first in time
        _run("a", 1, [8.0, 8.0, 9.0], ref),
        _run("b", 2, [3.0], near),  # a round without the reference is not paired
    ]
    # per round: median of b / median of a = 6/11 and 4/8
    assert paired_ratios(runs, "b", "a") == pytest.approx([6 / 11, 0.5])
    summary = summarize(runs, ["a", "b"])
    assert summary["a"]["step_seconds"] == {"min": 8.0, "median": 9.0, "max": 12.0}
    assert summary["a"]["paired_ratio"] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert summary["b"]["step_seconds"] == {"min": 3.0, "median": 4.5, "max": 7.0}
    assert summary["b"]["paired_ratio"]["median"] == pytest.approx((6 / 11 + 0.5) / 2)
    assert summary["b"]["steps_timed"] == 4 and summary["b"]["peak_rss_mb"] == 1002.0
    assert summary["b"]["first_step"] == {"loss": 0.5, "grad_norm": 1.0, "reward": 0.25, "mean_length": 12.0}
    assert summary["b"]["phases_median"]["generation"] == 2.25 and summary["b"]["phases_median"]["loss"] == 0
    assert set(summary["b"]["phases_median"]) == set(PHASES)
    assert summary["a"]["logp_vs_reference"] == {"max_abs": 0.0, "mean_abs": 0.0}
    assert summary["b"]["logp_vs_reference"]["max_abs"] == 0.25
    table = step_speed.format_summary(summary, "a").splitlines()
    assert table[0].startswith("| setting | step s min / median / max | ratio to a")
    assert table[3].startswith("| b | 3.0 / 4.5 / 7.0 | 0.52 (0.50-0.55) | 2.25 |")


def _fields(recipe: Path, setting: str) -> dict[str, Any]:
    _, args, model_args = parse_args(
        ["--config", str(recipe), *SETTINGS[setting].flags, "--output_dir", "/tmp/unused"]
    )
    return {
        "bf16": args.bf16,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        "micro_batches": (args.per_device_train_batch_size, args.gradient_accumulation_steps),
        "generation_batch_size": args.generation_batch_size,
        "num_generations": args.num_generations,
        "steps_per_generation": args.steps_per_generation,
        "gradient_checkpointing": args.gradient_checkpointing,
        "completion_logps_only": args.knapsack_completion_logps_only,
    }


@pytest.mark.parametrize("recipe", SMOLLM2_RECIPES, ids=lambda p: p.stem)
def test_today_restates_the_old_smollm2_recipe_and_recipe_is_the_new_defaults(recipe: Path) -> None:
    today, recipe_now = _fields(recipe, "today"), _fields(recipe, "recipe")
    assert today == {
        "bf16": False,
        "attn_implementation": "sdpa",
        "dtype": "float32",
        "micro_batches": (8, 4),
        "generation_batch_size": 32,
        "num_generations": 8,
        "steps_per_generation": 4,
        "gradient_checkpointing": True,
        "completion_logps_only": False,
    }
    assert recipe_now == {
        **today,
        "bf16": True,
        "attn_implementation": "eager",
        "micro_batches": (16, 2),
        "steps_per_generation": 2,
        "gradient_checkpointing": False,
        "completion_logps_only": True,
    }
    assert _fields(recipe, "recipe_full_logps") == {**recipe_now, "completion_logps_only": False}
    # the speed settings keep the budget: same rollouts per step, same prompts per step
    for name in SETTINGS:
        fields = _fields(recipe, name)
        assert (fields["generation_batch_size"], fields["num_generations"]) == (32, 8), name


@pytest.fixture
def amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU has AMX, so bf16 settings stay bf16 whatever machine runs the test."""
    import knapsack_trl.recipe.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"amx_bf16"})


@pytest.mark.slow
@pytest.mark.usefixtures("amx")
def test_each_setting_changes_what_it_claims_in_a_real_trainer(tmp_path: Path) -> None:
    """Two steps of the tiny recipe per setting, in this process: the trainer's model and accelerator
    carry the setting (attention, autocast, the dtype matmuls run in per phase), and the phases add up
    to the step."""
    flags = ["--max_completion_length", "4", "--dataset_num_rows", "16"]
    records = {
        name: step_speed.worker(str(TINY), name, 1, str(tmp_path / name), flags)
        for name in ("today", "today_bf16_eager", "recipe_generate_autocast")
    }
    today, bf16, gen = (records[n] for n in ("today", "today_bf16_eager", "recipe_generate_autocast"))
    assert today["model"]["attn_implementation"] == "sdpa" and today["model"]["mixed_precision"] == "no"
    assert today["model"]["matmul_dtype"] == {"generation": "torch.float32", "loss": "torch.float32"}
    assert bf16["model"]["attn_implementation"] == "eager" and bf16["model"]["mixed_precision"] == "bf16"
    # autocast computes in bf16 while the weights stay fp32 (the optimizer updates fp32 weights)
    assert bf16["model"]["matmul_dtype"] == {"generation": "torch.bfloat16", "loss": "torch.bfloat16"}
    assert bf16["model"]["dtype"] == "torch.float32"
    assert gen["model"]["mixed_precision"] == "no"  # the tiny recipe is fp32: one context changes nothing
    # bf16 moves the log-probabilities, by less than the tiny model's spread of them
    moved = logp_difference(bf16["check_logps"], today["check_logps"])
    assert 0 < moved["max_abs"] < 0.1
    assert logp_difference(gen["check_logps"], today["check_logps"])["max_abs"] == 0.0
    for record in records.values():
        (step,) = record["steps"]
        phases = step["phases"]
        assert set(phases) == set(PHASES) - {"scoring_forward"}  # TRL skips old log-probs here (beta 0)
        assert all(phases[p] > 0 for p in ("generation", "reward", "loss", "backward", "optimizer"))
        assert phases["allocation"] == 0.0  # the uniform recipe: knapsack off
        assert math.isclose(sum(phases.values()), step["step_seconds"]) or phases["other"] == 0.0
        assert step["mean_length"] <= 4 and 0 <= step["reward"] <= 1


@pytest.mark.slow
def test_reference_log_probs_are_timed_as_scoring_forwards(tmp_path: Path) -> None:
    """With beta > 0 TRL scores every rollout with the reference model: that forward is its own phase."""
    flags = ["--max_completion_length", "4", "--dataset_num_rows", "16", "--beta", "0.04"]
    record = step_speed.worker(str(TINY), "today", 1, str(tmp_path), flags)
    assert record["steps"][0]["phases"]["scoring_forward"] > 0
    assert record["model"]["matmul_dtype"].get("scoring") is None  # the policy itself is not rescored


def test_a_thread_setting_reaches_only_its_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert "OMP_NUM_THREADS" not in step_speed._child_env("today")
    assert step_speed._child_env("today_threads1")["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="unknown settings"):
        step_speed.run(str(TINY), ["today", "fastest"])


@pytest.mark.slow
def test_run_alternates_processes_and_keeps_every_record_on_disk(tmp_path: Path) -> None:
    """Two rounds of two settings in real worker processes (the tiny recipe): the order rotates, each
    record lands in the JSON as it ends, and the summary pairs the rounds."""
    path = tmp_path / "speed.json"
    seen: list[str] = []
    flags = ["--max_completion_length", "2", "--dataset_num_rows", "16"]
    result = step_speed.run(
        str(TINY),
        ["today", "today_threads1"],
        rounds=2,
        steps=1,
        extra=flags,
        progress=seen.append,
        json_path=str(path),
        threads=2,
    )
    assert [line.split(":")[0] for line in seen] == [
        "round 0 today",
        "round 0 today_threads1",
        "round 1 today_threads1",
        "round 1 today",
    ]
    on_disk = json.loads(path.read_text())
    assert on_disk["settings"] == {
        "config": str(TINY),
        "settings": ["today", "today_threads1"],
        "rounds": 2,
        "steps": 1,
        "threads": 2,
    }
    assert [(r["setting"], r["round"]) for r in on_disk["runs"]] == [
        (r["setting"], r["round"]) for r in result["runs"]
    ]
    threads = {r["setting"]: r["model"]["torch_threads"] for r in on_disk["runs"]}
    assert threads == {"today": 2, "today_threads1": 1}  # --threads for all, a setting's own wins
    assert (
        len(on_disk["summary"]["today_threads1"]["paired_ratio"]) == 3
        and on_disk["summary"]["today"]["steps_timed"] == 2
    )

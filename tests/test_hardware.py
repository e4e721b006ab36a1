"""A recipe against the machine: the dry run refuses what the real run refuses (bf16, fp16, vLLM without a
GPU), ``--assume-gpu`` checks a GPU recipe for its host, and ``--cpu-smoke`` makes any recipe a CPU run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from knapsack_trl import cli
from knapsack_trl.recipe import CommandLine, cpu_smoke_flags, gpu_available, hardware_problems
from knapsack_trl.recipe.hardware import cpu_bf16_flags, cpu_flags

ROOT = Path(__file__).resolve().parents[1]
GPU_RECIPES = sorted(
    [*(ROOT / "recipes" / "gsm8k").glob("*.yaml"), *(ROOT / "recipes" / "humaneval").glob("*.yaml")]
)
TINY = ROOT / "recipes" / "tiny" / "arithmetic-knapsack.yaml"
no_gpu = pytest.mark.skipif(gpu_available(), reason="checks what a machine without a GPU refuses")


@pytest.fixture(autouse=True)
def _restore_environ(monkeypatch: pytest.MonkeyPatch) -> Any:
    saved = dict(os.environ)
    monkeypatch.chdir(ROOT)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["train", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _variant(tmp_path: Path, **changes: Any) -> Path:
    recipe = {**yaml.safe_load(TINY.read_text()), **changes, "output_dir": str(tmp_path / "out")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@no_gpu
@pytest.mark.parametrize("with_dry_run", [True, False], ids=["dry-run", "real run"])
def test_a_bf16_recipe_fails_the_same_way_in_the_dry_run_and_the_real_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_dry_run: bool
) -> None:
    recipe = _variant(tmp_path, use_cpu=False, bf16=True)
    rc, out, err = _train(["--config", str(recipe), *(["--dry-run"] if with_dry_run else [])], capsys)
    assert rc == 2 and out == ""
    assert "bf16: true needs a GPU with bf16 support" in err and "--cpu-smoke" in err
    assert not (tmp_path / "out").exists()  # refused before any model is built


@no_gpu
def test_a_gpu_recipe_fails_the_dry_run_here_unless_checked_for_its_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = ROOT / "recipes" / "gsm8k" / "qwen2.5-0.5b-knapsack.yaml"
    rc, _, err = _train(["--config", str(recipe), "--dry-run"], capsys)
    assert rc == 2 and "bf16: true needs a GPU" in err and "--assume-gpu" in err
    rc, out, err = _train(["--config", str(recipe), "--dry-run", "--assume-gpu"], capsys)
    assert rc == 0, err
    assert any(
        "--assume-gpu: bf16, fp16, vLLM and device checks were skipped" in n
        for n in yaml.safe_load(out)["notes"]
    )
    rc, _, err = _train(["--config", str(recipe), "--assume-gpu"], capsys)
    assert rc == 2 and "--assume-gpu only goes with --dry-run" in err


def test_what_a_machine_without_a_gpu_refuses_after_the_config_is_built() -> None:
    args = SimpleNamespace(fp16=True, fp16_full_eval=False, use_vllm=True, vllm_mode="colocate")
    model = SimpleNamespace(load_in_4bit=True, load_in_8bit=False)
    problems = hardware_problems(args, model, has_gpu=False)
    assert [p.split(" ")[0] for p in problems] == ["fp16:", "use_vllm:", "load_in_4bit"]
    assert all("--cpu-smoke" in p for p in problems)
    assert hardware_problems(args, model, has_gpu=True) == []
    fine = SimpleNamespace(fp16=False, fp16_full_eval=False, use_vllm=False, vllm_mode="server")
    assert hardware_problems(fine, SimpleNamespace(), has_gpu=False) == []


@no_gpu
def test_the_dry_run_refuses_vllm_and_fp16_without_a_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _variant(tmp_path, use_vllm=True, fp16=True)
    rc, _, err = _train(["--config", str(recipe), "--dry-run"], capsys)
    assert rc == 2 and "fp16: true needs a GPU" in err and "use_vllm: true needs a GPU" in err


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_cpu_smoke_turns_every_gpu_recipe_into_a_valid_cpu_run(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _train(["--config", str(recipe), "--dry-run", "--cpu-smoke"], capsys)
    assert rc == 0, err
    report = yaml.safe_load(out)
    raw = yaml.safe_load(recipe.read_text())
    resolved, budget = report["resolved"], report["budget"]
    assert resolved["use_cpu"] is True and resolved["bf16"] is False and resolved["use_vllm"] is False
    assert resolved["max_steps"] == 2 and resolved["push_to_hub"] is False and resolved["dtype"] == "float32"
    assert resolved["output_dir"] == raw["output_dir"] + "-cpu-smoke"
    assert budget["prompts_per_batch"] == 2 and budget["num_generations"] == raw["num_generations"]
    assert budget["generation_batch_size"] == 2 * raw["num_generations"]
    if raw["knapsack_enabled"] and not raw.get("knapsack_pilot_rollouts"):  # the default: 4x candidates
        assert budget["knapsack_candidate_factor"].startswith("4 (the default")
        assert budget["candidates_per_batch"] == 8
        assert budget["feasible"].startswith(f"B = {budget['generation_batch_size']} in whole groups")
    elif raw["knapsack_enabled"]:
        n_min, n_max = raw["knapsack_n_min"], raw["knapsack_n_max"]
        assert (
            budget["feasible"]
            == f"n_min*P = {2 * n_min} <= B = {budget['generation_batch_size']} <= n_max*P = {2 * n_max}"
        )
    notes = report["notes"]
    assert (
        "--cpu-smoke: bf16: True -> false" in notes
        and f"--cpu-smoke: max_steps: {raw['max_steps']} -> 2" in notes
    )


def test_cpu_smoke_keeps_steps_per_generation_recipes_valid(tmp_path: Path) -> None:
    recipe = _variant(tmp_path, steps_per_generation=4)
    flags, _ = cpu_smoke_flags(CommandLine.read(["--config", str(recipe)]))
    assert "--generation_batch_size" not in flags
    assert flags[flags.index("--steps_per_generation") + 1] == "2"


@pytest.mark.slow
def test_cpu_smoke_trains_a_gpu_style_recipe_for_two_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _variant(tmp_path, use_cpu=False, bf16=True, use_vllm=True, max_steps=50, report_to="wandb")
    rc, out, err = _train(["--config", str(recipe), "--cpu-smoke"], capsys)
    assert rc == 0, err[-3000:]
    assert "knapsack-trl: --cpu-smoke: bf16: True -> false" in out
    assert "knapsack-trl: --cpu-smoke: report_to: wandb -> none" in out
    smoke = tmp_path / "out-cpu-smoke"
    history = json.loads((smoke / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "reward" in e]
    assert [e["step"] for e in steps] == [1, 2]
    assert all(e["knapsack/rollouts_mean"] == 8 for e in steps)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bf16 autocast on a CPU


CPUINFO_AMX = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n"
CPUINFO_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n"


def test_cpu_flags_reads_the_flags_line_of_proc_cpuinfo(tmp_path: Path) -> None:
    (tmp_path / "amx").write_text(CPUINFO_AMX)
    assert cpu_flags(tmp_path / "amx") == {"fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "missing") == set()  # no /proc/cpuinfo (macOS, Windows): no AMX known


@pytest.mark.parametrize(
    ("settings", "flags", "turned_off"),
    [
        ({"use_cpu": True, "bf16": True}, {"amx_bf16", "avx512_bf16"}, False),
        ({"use_cpu": True, "bf16": True}, {"avx512_bf16"}, True),  # bf16 without AMX: slower than fp32
        ({"use_cpu": True, "bf16": True}, set(), True),
        ({"use_cpu": True, "bf16": False}, set(), False),
        ({"use_cpu": False, "bf16": True}, set(), False),  # a GPU run: not this function's business
        ({"bf16": True}, set(), False),
    ],
)
def test_cpu_bf16_is_kept_only_on_a_cpu_with_amx(
    tmp_path: Path, settings: dict[str, Any], flags: set[str], turned_off: bool
) -> None:
    recipe = _variant(tmp_path, **{"use_cpu": None, "bf16": None, **settings})
    added, notes = cpu_bf16_flags(CommandLine.read(["--config", str(recipe)]), flags)
    assert added == (["--bf16", "false"] if turned_off else [])
    assert len(notes) == int(turned_off) and all("amx_bf16" in n and "fp32" in n for n in notes)
    # a flag on the command line counts as the recipe's value would
    added, _ = cpu_bf16_flags(CommandLine.read(["--config", str(recipe), "--bf16", "false"]), flags)
    assert added == []


@pytest.mark.parametrize("has_amx", [True, False], ids=["amx", "no-amx"])
def test_the_dry_run_shows_bf16_resolved_for_this_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, has_amx: bool
) -> None:
    import knapsack_trl.recipe.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"amx_bf16"} if has_amx else {"avx512_bf16"})
    rc, out, err = _train(["--config", str(_variant(tmp_path, use_cpu=True, bf16=True)), "--dry-run"], capsys)
    assert rc == 0, err
    report = yaml.safe_load(out)
    turned_off = [n for n in report["notes"] if n.startswith("bf16: true -> false: this CPU has no AMX")]
    assert report["resolved"]["bf16"] is has_amx and len(turned_off) == int(not has_amx)

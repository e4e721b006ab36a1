"""Short runs and local data: warm-ups longer than the run, the effective n_max cap, compare's evaluation
defaults on CPU, and a held-out part split off a single local file."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from knapsack_trl import cli
from knapsack_trl.recipe import (
    KnapsackScriptArguments,
    RecipeError,
    effective_n_max,
    fit_short_run,
    load_recipe_dataset,
    parse_args,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny" / "arithmetic-knapsack.yaml"


def _config(tmp_path: Path, *flags: str) -> Any:
    return parse_args(["--config", str(TINY), "--output_dir", str(tmp_path / "out"), *flags])[1]


def test_a_warmup_longer_than_the_run_is_cut_so_the_learning_rate_moves(tmp_path: Path) -> None:
    import torch
    from transformers import get_scheduler

    args = _config(tmp_path, "--lr_scheduler_type", "cosine", "--warmup_steps", "10", "--max_steps", "5")
    (note,) = fit_short_run(args)
    assert "warmup_steps=10 >= max_steps=5" in note and "lowered to 0" in note
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=args.get_warmup_steps(5), num_training_steps=5
    )
    assert scheduler.get_last_lr()[0] == 1.0  # step 1 trains at the peak, not at 0
    keep = _config(tmp_path, "--lr_scheduler_type", "cosine", "--warmup_steps", "2", "--max_steps", "20")
    assert fit_short_run(keep) == [] and keep.warmup_steps == 2
    constant = _config(tmp_path, "--warmup_steps", "10", "--max_steps", "5")  # constant: no warm-up at all
    assert fit_short_run(constant) == [] and constant.warmup_steps == 10


def _brute_force_cap(budget: int, prompts: int, n_min: int, n_max: int) -> int:
    """The most rollouts any one prompt gets over every allocation that satisfies the constraints."""
    return max(max(n) for n in itertools.product(range(n_min, n_max + 1), repeat=prompts) if sum(n) == budget)


@pytest.mark.parametrize(("n_max", "batch"), [(128, 32), (16, 32), (12, 24), (20, 24)])
def test_the_dry_run_prints_the_cap_the_batch_allows(
    tmp_path: Path, n_max: int, batch: int, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--knapsack_n_max", str(n_max), "--per_device_train_batch_size", str(batch // 2)]
    args = _config(tmp_path, *flags)
    expected = _brute_force_cap(batch, batch // 8, 2, min(n_max, batch))
    assert effective_n_max(args).startswith(f"{expected} (min of n_max {n_max} ")
    rc = cli.main(["train", "--config", str(TINY), *flags, "--output_dir", str(tmp_path / "o"), "--dry-run"])
    report = yaml.safe_load(capsys.readouterr().out)
    assert rc == 0 and report["budget"]["effective_n_max"].startswith(f"{expected} ")
    if n_max == 128:
        assert expected == 26  # the case: 4 prompts, B = 32, n_min = 2


def test_compare_scales_its_evaluation_to_a_cpu_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from knapsack_trl.experiments import compare

    def namespace(**given: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"eval_rows": None, "eval_samples": None, "eval_every": None, **given})

    run = SimpleNamespace(use_cpu=True, generation_batch_size=32, num_generations=8, max_steps=10)
    ns = namespace()
    compare._scale_eval(ns, run)
    assert (ns.eval_rows, ns.eval_samples, ns.eval_every) == (16, 8, 5)  # 128 rollouts = 4 steps' worth
    ns = namespace(eval_rows=40, eval_every=3)
    compare._scale_eval(ns, run)
    assert (ns.eval_rows, ns.eval_samples, ns.eval_every) == (40, 8, 3)  # given flags are kept
    monkeypatch.setattr(compare.torch.cuda, "is_available", lambda: True)
    ns = namespace()
    compare._scale_eval(ns, SimpleNamespace(**{**vars(run), "use_cpu": False}))
    assert (ns.eval_rows, ns.eval_samples, ns.eval_every) == (256, 16, None)


# ------------------------------------------------------------------------------------------------
# A single local file


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        path.write_text("prompt,answer\n" + "".join(f"{r['prompt']},{r['answer']}\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_single_file_is_split_into_disjoint_seeded_parts(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(50)]
    args = KnapsackScriptArguments(dataset_name=str(_write(tmp_path / f"data{suffix}", rows)))
    train = load_recipe_dataset(args, seed=3)
    test = load_recipe_dataset(args, split="test", seed=3)
    assert (len(train), len(test)) == (45, 5)
    assert sorted([*train["prompt"], *test["prompt"]], key=lambda p: int(p.split("+")[0])) == [
        r["prompt"] for r in rows
    ]
    assert load_recipe_dataset(args, split="test", seed=3)["prompt"] == test["prompt"]
    assert load_recipe_dataset(args, split="test", seed=4)["prompt"] != test["prompt"]
    err = capsys.readouterr().err
    assert (
        "is a single file of 50 rows: 5 held out as split 'test' (dataset_test_fraction=0.1, seed 3)" in err
    )


def test_dataset_num_rows_cuts_the_train_part_only_and_a_zero_fraction_says_so(tmp_path: Path) -> None:
    rows = [{"prompt": f"{i}+2=", "answer": str(i + 2)} for i in range(40)]
    path = str(_write(tmp_path / "data.jsonl", rows))
    args = KnapsackScriptArguments(dataset_name=path, dataset_num_rows=10, dataset_test_fraction=0.25)
    assert len(load_recipe_dataset(args)) == 10
    assert len(load_recipe_dataset(args, split="test")) == 10  # not cut by dataset_num_rows
    whole = KnapsackScriptArguments(dataset_name=path, dataset_test_fraction=0)
    assert len(load_recipe_dataset(whole)) == 40
    with pytest.raises(RecipeError, match=r"0 held out.*set dataset_test_fraction > 0"):
        load_recipe_dataset(whole, split="test")
    with pytest.raises(RecipeError, match=r"dataset_test_fraction=1.0 must be in \[0, 1\)"):
        KnapsackScriptArguments(dataset_name=path, dataset_test_fraction=1.0)


def test_the_dry_run_reports_the_split_of_a_single_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    recipe = ROOT / "recipes" / "tiny" / "gsm8k-format.yaml"
    rc = cli.main(["train", "--config", str(recipe), "--output_dir", str(tmp_path / "o"), "--dry-run"])
    report = yaml.safe_load(capsys.readouterr().out)
    assert rc == 0
    assert report["dataset"]["rows"] == 18
    assert "single file of 20 rows: 2 held out as split 'test'" in report["dataset"]["split"]


def test_compare_says_how_to_fix_a_test_split_that_repeats_the_training_prompts(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    from knapsack_trl.experiments import compare

    rows = Dataset.from_list([{"prompt": f"{i}+3=", "answer": str(i + 3)} for i in range(8)])
    DatasetDict({"train": rows, "test": rows}).save_to_disk(str(tmp_path / "same"))
    args = KnapsackScriptArguments(dataset_name=str(tmp_path / "same"))
    with pytest.raises(
        SystemExit, match=r"Set dataset_test_split to a split with other prompts.*dataset_test_fraction"
    ):
        compare._heldout_rows(args, load_recipe_dataset(args), 0, 16)


@pytest.mark.slow
def test_compare_cuts_a_long_warmup_and_scales_its_evaluation_on_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from knapsack_trl.experiments import compare

    monkeypatch.chdir(ROOT)
    argv = ["--config", str(TINY), "--seeds", "1", "--methods", "uniform", "--warmup-steps", "0"]
    argv += ["--output-dir", str(tmp_path / "report"), "--no-progress"]
    argv += ["--max_steps", "2", "--lr_scheduler_type", "cosine", "--warmup_steps", "10"]
    assert compare.main(argv) == 0
    err = capsys.readouterr().err
    assert "knapsack-trl compare: warmup_steps=10 >= max_steps=2" in err
    report = (tmp_path / "report" / "report.md").read_text()
    # 32 rollouts per step, 8 per prompt: 8 samples of max(16, 4 * 32 / 8) = 16 held-out prompts
    assert "- `held-out prompts`: 16" in report and "- `held-out samples per prompt`: 8" in report

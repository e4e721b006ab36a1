"""Rows from wherever a task's data lives: a local file or folder, or the HF hub; and the checks on them.

Local sources: JSON / JSONL (optionally gzipped) / CSV / parquet files and ``save_to_disk`` folders, so
every task works offline. Task loaders (:mod:`.gsm8k`, :mod:`.humaneval`) build their columns on top.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def messages(system_prompt: str | None, user: str) -> list[dict[str, str]]:
    """A conversation TRL recognises: an optional system message and one user message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": user}]


def records_from(
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


def check_columns(records: Sequence[dict[str, Any]], columns: Sequence[str], source: str) -> None:
    """Refuse an empty dataset or one without the columns the loader needs, naming both."""
    if not records:
        raise ValueError(f"{source}: the dataset is empty")
    present = set(records[0])
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing} (found: {sorted(present)})")


def text_field(record: dict[str, Any], column: str, source: str, index: int) -> str:
    """A string cell, or an error naming the file, row and column."""
    value = record.get(column)
    if not isinstance(value, str):
        raise ValueError(f"{source}: row {index} column {column!r} is {type(value).__name__}, expected text")
    return value


def to_dataset(rows: list[dict[str, Any]]) -> Any:
    """A ``datasets.Dataset`` from finished rows."""
    from datasets import Dataset

    return Dataset.from_list(rows)

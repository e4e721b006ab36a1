"""GSM8K: the loader and the prompt format (the answer parser and the reward: :mod:`knapsack_trl.tasks.gsm8k.reward`).

Rows have a ``prompt`` column (conversational messages, to which TRL applies the chat template itself, or
plain text), the gold ``answer`` the reward reads, and a stable ``prompt_id``: a content hash of the
prompt, so the success-rate history of a prompt accumulates across epochs, processes and restarts.
Sources: the HF hub for real users (``openai/gsm8k``), or any local file or folder (:mod:`.records`).
"""

from __future__ import annotations

from typing import Any

from knapsack_trl.core.tracker import prompt_id
from knapsack_trl.tasks.gsm8k.reward import extract_gsm8k_gold
from knapsack_trl.tasks.records import check_columns, messages, records_from, text_field, to_dataset

GSM8K_HUB = "openai/gsm8k"
GSM8K_HUB_CONFIG = "main"
GSM8K_INSTRUCTION = "Solve the problem step by step, then give the final answer as a number in \\boxed{}."
_GSM8K_COLUMNS = ("question", "answer")


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
    records, source = records_from(path, split, hub_default=(GSM8K_HUB, config), hub_config=config)
    check_columns(records, _GSM8K_COLUMNS, source)
    rows = []
    for i, record in enumerate(records):
        question = text_field(record, "question", source, i).strip()
        gold = extract_gsm8k_gold(text_field(record, "answer", source, i))
        prompt = gsm8k_prompt(
            question, conversational=conversational, system_prompt=system_prompt, instruction=instruction
        )
        rows.append({"prompt": prompt, "question": question, "answer": gold, "prompt_id": prompt_id(prompt)})
    return to_dataset(rows)


def gsm8k_prompt(
    question: str,
    *,
    conversational: bool = True,
    system_prompt: str | None = None,
    instruction: str = GSM8K_INSTRUCTION,
) -> str | list[dict[str, str]]:
    """The prompt for one GSM8K question: chat messages, or ``Question: ...`` text for base models."""
    if conversational:
        return messages(system_prompt, f"{question}\n\n{instruction}" if instruction else question)
    parts = [system_prompt] if system_prompt else []
    parts += (
        [f"Question: {question}", instruction, "Answer:"]
        if instruction
        else [f"Question: {question}", "Answer:"]
    )
    return "\n".join(parts)

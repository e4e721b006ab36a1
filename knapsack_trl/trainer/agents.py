"""What a knapsack trainer needs for TRL's agent runs: tools, ``rollout_func`` and ``environment_factory``.

- **Cost**: a multi-turn rollout's completion holds the policy's turns and the tool results between
  them. Its cost is what the policy generated, every turn (TRL's ``tool_mask`` 1 tokens, or a
  ``rollout_func``'s ``env_mask``): the tokens TRL's own ``completions/mean_length`` counts.
- **Tool calls per rollout**: one per tool message TRL appended to the completion.
- **Stable tasks**: an environment's ``reset`` may write the task into the prompt; the copies of one row
  must get the same one, or the row's history would mix tasks (checked on each batch).
- **Rows that name no task** (:data:`.plan.UNIDENTIFIED`): uniform, never tracked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from knapsack_trl.core.tracker import prompt_id
from knapsack_trl.trainer.plan import UNIDENTIFIED


def rollout_costs(tool_mask: list[list[int]] | None, completion_ids: list[list[int]]) -> list[float]:
    """Per rollout: the tokens the policy generated, all turns (tool-result tokens excluded)."""
    if tool_mask is None:
        return [float(len(ids)) for ids in completion_ids]
    return [float(sum(mask)) for mask in tool_mask]


def tool_call_counts(completions: list[Any]) -> list[float]:
    """Per rollout: the tool calls TRL executed (one tool message each)."""
    return [
        float(sum(1 for m in c if isinstance(m, dict) and m.get("role") == "tool"))
        if isinstance(c, (list, tuple))
        else 0.0
        for c in completions
    ]


def prompt_hashes(prompts: list[Any]) -> list[str]:
    """Per rollout: a hash of the prompt it was generated from (after ``reset`` extended it)."""
    return [prompt_id(p) for p in prompts]


def check_stable_tasks(prompt_ids: list[str], sizes: np.ndarray, hashes: list[str], column: str) -> None:
    """Raise when the copies of one row were given different prompts by their environments' ``reset``."""
    start = 0
    for pid, n in zip(prompt_ids, sizes.tolist(), strict=True):
        group = hashes[start : start + n]
        start += n
        if pid != UNIDENTIFIED and len(set(group)) > 1:
            raise ValueError(
                f"The {n} rollouts of row {pid!r} were given {len(set(group))} different prompts by their "
                "environments' reset(): the row's id (knapsack_prompt_id_column, else a hash of the row) would "
                "key the history of several tasks. Make reset() a function of the row TRL passes it (e.g. a "
                "`task` or seed column that fixes the task), or set knapsack_enabled=False."
            )


def tool_call_metrics(counts: np.ndarray, sizes: np.ndarray, group: int) -> dict[str, float]:
    """Mean tool calls per rollout, overall and by allocation size against the uniform ``group``."""
    per_row = np.repeat(sizes, sizes)
    out = {"tool_calls_per_rollout": float(counts.mean())}
    for name, rows in (
        ("below_uniform", per_row < group),
        ("at_uniform", per_row == group),
        ("above_uniform", per_row > group),
    ):
        if rows.any():
            out[f"tool_calls_per_rollout_{name}"] = float(counts[rows].mean())
    return out


def split_unidentified(
    prompt_ids: list[str], budget: int, group: int, allocate: Any
) -> tuple[Any, np.ndarray, dict[str, float]]:
    """The allocation with unidentified rows held at ``group`` rollouts each and the rest allocated by
    ``allocate(ids, budget)``; returns ``(allocation or None, sizes, metrics)``."""
    known = np.array([pid != UNIDENTIFIED for pid in prompt_ids])
    if known.all():
        allocation = allocate(prompt_ids, budget)
        return allocation, np.asarray(allocation.rollouts_per_prompt, dtype=np.int64), allocation.metrics()
    sizes = np.full(len(prompt_ids), group, dtype=np.int64)
    metrics: dict[str, float] = {}
    if known.any():
        ids = [pid for pid, k in zip(prompt_ids, known, strict=True) if k]
        part = allocate(ids, budget - group * int((~known).sum()))
        sizes[known] = np.asarray(part.rollouts_per_prompt, dtype=np.int64)
        metrics = part.metrics()
    metrics.update(
        rollouts_min=float(sizes.min()),
        rollouts_mean=float(sizes.mean()),
        rollouts_max=float(sizes.max()),
        unidentified_prompts=float((~known).sum()),
    )
    return None, sizes, metrics

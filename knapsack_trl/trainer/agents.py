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
import torch
from accelerate.utils import gather, gather_object
from transformers.utils import logging

from knapsack_trl.core.tracker import prompt_id
from knapsack_trl.trainer.plan import UNIDENTIFIED, GenerationBatch
from knapsack_trl.trainer.trl_bridge import Capture, train_metrics

logger = logging.get_logger(__name__)


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
    """Per rollout: a hash of the prompt it was generated from (after ``reset`` extended it); empty for a
    prompt that is not JSON (images), which is then not checked."""
    hashes = []
    for prompt in prompts:
        try:
            hashes.append(prompt_id(prompt))
        except TypeError:
            hashes.append("")
    return hashes


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


class KnapsackAgentMixin:
    """The agent-run parts of :class:`.mixin.KnapsackTrainerMixin`: ids of environment rows, what each
    rollout cost and called, and the checks and metrics on them."""

    def _knapsack_agent_setup(self) -> None:
        self._knapsack_warned_unidentified = False

    def _knapsack_uses_environment(self) -> bool:
        """Whether TRL runs an ``environment_factory`` (rows are then keyed by :func:`.plan.row_task_id`)."""
        return getattr(self, "environment_factories", None) is not None

    def _knapsack_warn_unidentified(self, prompt_ids: list[str]) -> None:
        if UNIDENTIFIED in prompt_ids and not self._knapsack_warned_unidentified:
            self._knapsack_warned_unidentified = True
            logger.warning(
                "Some training rows name no task (TRL's placeholder rows when the environment owns the data and no "
                "train_dataset is given, or rows with only an 'environment' field): they get num_generations "
                "rollouts each and no history. For allocation on them, pass a train_dataset whose rows fix the task "
                f"reset() builds (e.g. a 'task' column, or an id in {self.args.knapsack_prompt_id_column!r})."
            )

    def knapsack_record_rollouts(
        self, capture: Capture, prompts: list, completions: list, completion_ids: list
    ) -> None:
        """Called by the bridge once a round is scored: per rollout, gathered (process-major), the cost
        (generated tokens, all turns), tool calls, and in environment runs a hash of the prompt ``reset`` built."""
        world = self.accelerator.num_processes
        per_rollout = torch.tensor(
            [rollout_costs(capture.tool_mask, completion_ids), tool_call_counts(completions)],
            dtype=torch.float32,
            device=capture.rewards.device,
        ).T
        per_rollout = gather(per_rollout) if world > 1 else per_rollout
        capture.rollouts["lengths"], capture.rollouts["tool_calls"] = per_rollout[:, 0], per_rollout[:, 1]
        if self._knapsack_uses_environment():
            hashes = prompt_hashes(prompts)
            capture.rollouts["prompt_hashes"] = gather_object(hashes) if world > 1 else hashes

    def _knapsack_agent_step(self, batch: GenerationBatch) -> np.ndarray | None:
        """Environment runs: every row's copies got one task, across all the batch's rounds. Tool runs: tool
        calls per rollout (canonical order), logged by allocation size."""
        joined = batch.joined
        if joined.prompt_hashes is not None:
            hashes = joined.canonical_list(joined.prompt_hashes)
            check_stable_tasks(batch.prompt_ids, joined.sizes, hashes, self.args.knapsack_prompt_id_column)
        if joined.tool_calls is None or not getattr(self, "tools", None):
            return None
        calls = joined.canonical(joined.tool_calls).cpu().numpy()
        metrics = train_metrics(self)
        for name, value in tool_call_metrics(calls, joined.sizes, self.num_generations).items():
            metrics[f"knapsack/{name}"].append(value)
        return calls

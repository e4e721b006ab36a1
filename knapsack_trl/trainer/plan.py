"""One generation batch's plan, identical on every process: gather, dedupe, decide once, broadcast, slice.

TRL's ``RepeatSampler`` hands out ``P = generation_batch_size // num_generations`` prompts with
``num_generations`` copies each, spread over the processes. Only prompt ids (hashed once per run of
equal prompts) and each group's first row travel between processes; the main process decides, every
process receives the same sizes and row order, and each keeps an equal slice, so shapes never change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from accelerate.utils import broadcast_object_list, gather_object

from knapsack_trl.core.tracker import prompt_id


@dataclass
class GenerationPlan:
    """One generation batch's allocation, identical on every process."""

    step: int
    prompt_ids: list[str]  # the P prompts, canonical order
    sizes: np.ndarray  # (P,) rollouts per prompt
    order: np.ndarray  # (B,) canonical row at each global position (process-major)
    local_rows: list[dict[str, Any]]
    metrics: dict[str, float]
    allocation: Any = None  # the core Allocation (main process only; None elsewhere)
    log_positions: np.ndarray | None = None  # global position of each row TRL logged (None: the same order)


def row_prompt_id(row: dict[str, Any], column: str) -> str:
    """The stable id of a dataset row: its ``column`` value, else a content hash of its ``prompt``."""
    value = row.get(column)
    if value is not None:
        return str(value)
    if "prompt" in row:
        return prompt_id(row["prompt"])
    raise ValueError(
        f"A training row has neither {column!r} (knapsack_prompt_id_column) nor 'prompt' (keys: "
        f"{sorted(row)}); knapsack allocation needs a stable prompt id."
    )


# The rows TRL trains on when an environment owns the data and no train_dataset is given.
PLACEHOLDER_PROMPT = [{"role": "user", "content": ""}]
# The id of a row that names no task (allocated uniformly, never tracked).
UNIDENTIFIED = "<unidentified>"


def row_task_id(row: dict[str, Any], column: str) -> str:
    """An environment run's row id: its ``column`` value, else a content hash of all its fields.

    TRL calls ``reset(**row)`` with the row's fields, so a deterministic environment's task is a function
    of them; the allocation is decided before ``reset`` runs, so nothing later can key it. Fields that are
    not JSON (images) are left out. A row whose only fields are TRL's placeholder prompt and/or
    ``environment`` names no task: :data:`UNIDENTIFIED`.
    """
    value = row.get(column)
    if value is not None:
        return str(value)
    fields = {k: v for k, v in row.items() if not (k == "prompt" and v == PLACEHOLDER_PROMPT) and _is_json(v)}
    if not set(fields) - {"environment"}:
        return UNIDENTIFIED
    return prompt_id(fields)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _row_key(row: dict[str, Any], column: str, environment: bool) -> Any:
    """What the id is derived from (cheap to compare between neighbouring rows)."""
    value = row.get(column)
    if value is not None:
        return ("id", value)
    return ("row", row) if environment else ("prompt", row.get("prompt"))


def local_prompt_ids(inputs: list[dict[str, Any]], column: str, environment: bool = False) -> list[str]:
    """Each row's prompt id, hashed once per run of equal rows (the sampler repeats each prompt);
    ``environment``: ids by :func:`row_task_id`."""
    ids: list[str] = []
    previous: Any = None
    id_of = row_task_id if environment else row_prompt_id
    for row in inputs:
        key = _row_key(row, column, environment)
        ids.append(ids[-1] if ids and key == previous else id_of(row, column))
        previous = key
    return ids


def gather_prompts(
    accelerator: Any, inputs: list[dict[str, Any]], group: int, column: str, environment: bool = False
) -> tuple[list[str], list[dict[str, Any]]]:
    """The generation batch's P prompt ids and first rows, in sampler order, on every process."""
    world, rank, local = accelerator.num_processes, accelerator.process_index, len(inputs)
    budget = local * world
    if budget % group:
        raise RuntimeError(
            f"The generation batch has {budget} rows, not a multiple of num_generations={group}; the knapsack "
            "trainer relies on TRL's RepeatSampler (do not replace the train sampler)."
        )
    local_ids = local_prompt_ids(inputs, column, environment)
    starts = [inputs[j] for j in range(local) if (rank * local + j) % group == 0]
    parts = gather_object([(local_ids, starts)]) if world > 1 else [(local_ids, starts)]
    ids = [pid for part_ids, _ in parts for pid in part_ids]
    prompt_ids = ids[::group]
    for k, pid in enumerate(prompt_ids):
        if any(other != pid for other in ids[k * group : (k + 1) * group]):
            raise RuntimeError(
                f"Rows {k * group}..{(k + 1) * group - 1} of the generation batch are not {group} copies of one "
                "prompt; the knapsack trainer relies on TRL's RepeatSampler (do not replace the train sampler)."
            )
    return prompt_ids, [row for _, part_rows in parts for row in part_rows]


def decide_on_main(accelerator: Any, decide: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """``decide()`` on the main process, its result broadcast to every process (None elsewhere first)."""
    payload = [decide() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(payload, from_process=0)
    return payload[0]


def local_slice(
    accelerator: Any, unique_rows: list[dict[str, Any]], sizes: np.ndarray, order: np.ndarray
) -> list[dict[str, Any]]:
    """This process's rows: the canonical expansion (``sizes[i]`` copies of prompt ``i``) reordered by
    ``order``, sliced equally (copies: TRL may write extra fields)."""
    local = int(order.size) // accelerator.num_processes
    canonical = np.repeat(np.arange(len(unique_rows)), sizes)
    mine = order[accelerator.process_index * local : (accelerator.process_index + 1) * local]
    return [dict(unique_rows[canonical[c]]) for c in mine]


def balance_rows(costs: np.ndarray, num_processes: int) -> np.ndarray:
    """A permutation giving each process ``B / num_processes`` rows with near-equal total ``costs``.

    Longest-first greedy with a cardinality cap; rows stay in canonical order within a process. Returns
    the identity when that is already at least as balanced (so uniform cases stay exactly stock).
    """
    b = costs.size
    per = b // num_processes
    identity = np.arange(b)
    loads = np.zeros(num_processes)
    counts = np.zeros(num_processes, dtype=np.int64)
    owner = np.empty(b, dtype=np.int64)
    for row in np.argsort(-costs, kind="stable"):
        open_ = np.flatnonzero(counts < per)
        rank = open_[np.argmin(loads[open_])]
        owner[row] = rank
        loads[rank] += costs[row]
        counts[rank] += 1
    order = np.concatenate([np.flatnonzero(owner == r) for r in range(num_processes)])
    identity_max = costs.reshape(num_processes, per).sum(axis=1).max()
    return order if loads.max() < identity_max - 1e-9 else identity

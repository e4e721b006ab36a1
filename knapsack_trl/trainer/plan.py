"""One generation batch, identical on every process: gather, dedupe, decide once, broadcast, slice, join.

TRL's ``RepeatSampler`` hands out ``P = generation_batch_size // num_generations`` prompts with
``num_generations`` copies each (with ``c`` candidates per chosen prompt: ``c x P`` prompts with
``num_generations / c`` copies), spread over the processes. Only prompt ids (hashed once per run of
equal prompts) and each group's first row travel between processes; the main process decides, every
process receives the same sizes and row order, and each keeps an equal slice, so shapes never change.
:class:`GenerationBatch` carries a batch through these steps; :mod:`.rounds` joins its rounds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object

from knapsack_trl.core.tracker import prompt_id
from knapsack_trl.trainer.rounds import GeneratedRound, JoinedRounds, join_rounds


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


@dataclass
class GenerationBatch:
    """One generation batch from the sampler's rows to the trained batch, the same on every process.

    :meth:`gather` builds it; each :meth:`decide` (main process, broadcast) gives a round's sizes and row
    order; :meth:`local_rows` is this process's share of a round; the trainer appends each generated
    round to :attr:`rounds`; :meth:`join` makes one batch of them (:attr:`joined`).
    """

    step: int
    budget: int  # rollouts of the whole batch (generation_batch_size)
    prompt_ids: list[str]  # the batch's prompts, canonical order
    unique_rows: list[dict[str, Any]]  # each prompt's first row
    head_features: Any = None  # the value head's features of the prompts (None without a head)
    head_p: np.ndarray | None = None  # the head's p per prompt (None: no head, or not ready)
    rounds: list[GeneratedRound] = field(default_factory=list)
    decision: Any = None  # the core's last decision (main process; None elsewhere)
    metrics: dict[str, float] = field(default_factory=dict)  # that decision's metrics (every process)
    joined: JoinedRounds | None = None

    @classmethod
    def gather(
        cls,
        accelerator: Any,
        inputs: list[dict[str, Any]],
        copies: int,
        column: str,
        step: int,
        environment: bool = False,
    ) -> GenerationBatch:
        """The batch's prompts from every process's sampler rows (``copies`` rows per prompt)."""
        prompt_ids, unique_rows = gather_prompts(accelerator, inputs, copies, column, environment)
        return cls(step, len(inputs) * accelerator.num_processes, prompt_ids, unique_rows)

    def decide(
        self, accelerator: Any, decide: Callable[[], tuple[Any, np.ndarray, np.ndarray, dict[str, float]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``decide()`` on the main process -> (decision, rows per prompt, order, metrics), broadcast; returns
        the round's sizes and order. A decision other than None becomes the batch's (with its metrics)."""
        decision = None

        def main() -> tuple[list[int], list[int], dict[str, float]]:
            nonlocal decision
            decision, sizes, order, metrics = decide()
            return np.asarray(sizes).tolist(), np.asarray(order).tolist(), metrics

        size_list, order_list, metrics = decide_on_main(accelerator, main)
        sizes, order = np.asarray(size_list, dtype=np.int64), np.asarray(order_list, dtype=np.int64)
        used = sum(int(r.sizes.sum()) for r in self.rounds)
        if (
            sizes.size != len(self.prompt_ids)
            or order.size != int(sizes.sum())
            or used + sizes.sum() > self.budget
        ):
            raise RuntimeError(
                f"The allocation gives {int(sizes.sum())} rollouts to {sizes.size} prompts after {used}; the batch "
                f"has {self.budget} rollouts for {len(self.prompt_ids)} prompts."
            )
        if metrics:
            self.decision, self.metrics = decision, metrics
        return sizes, order

    def local_rows(self, accelerator: Any, sizes: np.ndarray, order: np.ndarray) -> list[dict[str, Any]]:
        """This process's rows of a round (:func:`local_slice`)."""
        return local_slice(accelerator, self.unique_rows, sizes, order)

    def join(
        self,
        num_processes: int,
        pad_token_id: int | None,
        metrics: dict[str, list[float]],
        reward_weights: torch.Tensor,
        reward_func_names: list[str],
    ) -> dict[str, Any]:
        """The rounds as one TRL output (:func:`.rounds.join_rounds`); :attr:`joined` holds the rest."""
        used = sum(int(r.sizes.sum()) for r in self.rounds)
        if used != self.budget:
            raise RuntimeError(f"The batch's rounds hold {used} rollouts; expected {self.budget}.")
        output, self.joined = join_rounds(
            self.rounds, num_processes, pad_token_id, metrics, reward_weights, reward_func_names
        )
        return output

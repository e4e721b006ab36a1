"""The override logic shared by :class:`KnapsackGRPOTrainer` and :class:`KnapsackRLOOTrainer`.

TRL's ``RepeatSampler`` still hands out ``P = generation_batch_size // num_generations`` prompts with
``num_generations`` copies each. At generation time (training only) the trainer:

1. gathers every process's prompt ids and the first row of each group (the global batch is in sampler
   order) and dedupes them to the P prompts;
2. decides the rollouts per prompt ``n_i`` on the main process and broadcasts them, so every process
   takes the identical allocation (sum of n_i = generation_batch_size: shapes never change);
3. expands the prompts into ``n_i`` rows each (*canonical* order), optionally permutes the rows across
   processes to balance expected completion tokens, and gives each process an equal slice;
4. calls TRL's own ``_generate_and_score_completions`` on that slice, catching the gathered reward
   matrix in ``_calculate_rewards``;
5. recomputes the advantages per variable group with TRL's rules (:mod:`.advantages`), overwrites
   ``output["advantages"]`` and the group-dependent metrics, logs ``knapsack/*`` metrics and feeds the
   success-rate tracker.

Because every process keeps ``generation_batch_size / num_processes`` rollouts, DDP, gradient
accumulation, ``steps_per_generation``, ``num_iterations``, every ``loss_type`` normaliser and vLLM's
limits are untouched. Evaluation stays stock.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather, gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from knapsack_trl.trainer.advantages import AdvantageResult, nonzero_variance, prompt_weights
from knapsack_trl.trainer.config import KnapsackConfigMixin

logger = logging.get_logger(__name__)

STATE_FILE = "knapsack_state.json"
_STATE_VERSION = 1


@dataclass
class GenerationPlan:
    """One generation batch's allocation, identical on every process."""

    step: int
    prompt_ids: list[str]  # the P prompts, canonical order
    sizes: np.ndarray  # (P,) rollouts per prompt
    order: np.ndarray  # (B,) canonical row at each global position (process-major)
    local_rows: list[dict[str, Any]]
    metrics: dict[str, float]


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


def check_dataset(dataset: Any, args: KnapsackConfigMixin) -> None:
    """Fail at start-up when rows carry neither a stable prompt id nor prompt text to hash."""
    if not args.knapsack_enabled:
        return
    if dataset is None:
        raise ValueError(
            "Knapsack allocation needs a train_dataset with a prompt id or prompt text per row (training from an "
            "environment's placeholder rows would give every prompt the same id); set knapsack_enabled=False."
        )
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an IterableDataset without features: checked on the first batch instead
        return
    if args.knapsack_prompt_id_column not in columns and "prompt" not in columns:
        raise ValueError(
            f"The training dataset has neither a {args.knapsack_prompt_id_column!r} column "
            f"(knapsack_prompt_id_column) nor a 'prompt' column to hash (columns: {columns}). Knapsack allocation "
            "keys each prompt's success history on a stable id: add an id column (e.g. the row index) and point "
            "knapsack_prompt_id_column at it, or set knapsack_enabled=False."
        )


class KnapsackTrainerMixin:
    """Mixed in before ``GRPOTrainer`` / ``RLOOTrainer``; call :meth:`_knapsack_setup` after their ``__init__``."""

    args: KnapsackConfigMixin
    knapsack_allocator: Any

    # ------------------------------------------------------------------ set-up
    def _knapsack_setup(self) -> None:
        args = self.args
        self.knapsack_history: deque[dict[str, Any]] = deque(maxlen=args.knapsack_history_size)
        self.knapsack_last: dict[str, Any] | None = None
        self._knapsack_active = False
        self._knapsack_rewards: torch.Tensor | None = None
        self._knapsack_lengths: torch.Tensor | None = None
        self.knapsack_allocator = None
        self.knapsack_value_head = None
        if not args.knapsack_enabled:
            return
        from knapsack_trl.core.allocator import KnapsackRolloutAllocator

        # Epoch-based runs learn max_steps only in train(): schedules get a stand-in horizon until then
        # (``_knapsack_allocate`` rebuilds the allocator with the real one, keeping the tracker).
        self.knapsack_allocator = KnapsackRolloutAllocator(
            args.knapsack_allocator_config(total_steps=self._knapsack_horizon() or 1), args.knapsack_tracker()
        )
        self._knapsack_head_features: torch.Tensor | None = None
        self._knapsack_head_p: np.ndarray | None = None
        if args.knapsack_value_estimator != "history":
            from knapsack_trl.value_head import ValueHeadEstimator

            self.knapsack_value_head = ValueHeadEstimator.from_model(
                self.model, args.knapsack_value_head_config()
            )

    def _knapsack_horizon(self) -> int | None:
        max_steps = getattr(getattr(self, "state", None), "max_steps", 0) or self.args.max_steps
        return max_steps if max_steps and max_steps > 0 else None

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        column = self.args.knapsack_prompt_id_column
        if self.args.knapsack_enabled and column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, column]

    def _knapsack_prompt_key(self, row: dict[str, Any]) -> Any:
        """The raw value the id is derived from (cheap to compare between neighbouring rows)."""
        value = row.get(self.args.knapsack_prompt_id_column)
        return ("id", value) if value is not None else ("prompt", row.get("prompt"))

    def _knapsack_prompt_id(self, row: dict[str, Any]) -> str:
        from knapsack_trl.core.tracker import prompt_id

        column = self.args.knapsack_prompt_id_column
        value = row.get(column)
        if value is not None:
            return str(value)
        if "prompt" in row:
            return prompt_id(row["prompt"])
        raise ValueError(
            f"A training row has neither {column!r} (knapsack_prompt_id_column) nor 'prompt' (keys: "
            f"{sorted(row)}); knapsack allocation needs a stable prompt id."
        )

    # ------------------------------------------------------------------ allocation
    def _knapsack_allocate(self, prompt_ids: list[str], budget: int, step: int) -> Any:
        """Main process only: the core allocation (tests override this to inject allocations)."""
        horizon = self._knapsack_horizon()
        cfg = self.knapsack_allocator.config
        if (
            self.args.knapsack_total_steps is None
            and (cfg.n_max_schedule or cfg.exploration_schedule)
            and cfg.total_steps != horizon
        ):
            from knapsack_trl.core.allocator import KnapsackRolloutAllocator

            self.knapsack_allocator = KnapsackRolloutAllocator(
                self.args.knapsack_allocator_config(total_steps=horizon), self.knapsack_allocator.tracker
            )
        from knapsack_trl.value_head import estimator_prior

        head_p = self._knapsack_head_p
        observed = None
        if head_p is not None:  # the head stands in where the validity rule ignores a prompt's history
            total = self.knapsack_allocator.tracker.stats(prompt_ids).total_observations
            observed = np.where(total >= self.args.knapsack_min_observations, total, 0)
        prior = estimator_prior(self.args.knapsack_value_estimator, head_p, observed)
        return self.knapsack_allocator.allocate(
            prompt_ids,
            budget,
            step=step,
            prior_success_rate=prior,
            uniform=self.args.knapsack_mode == "uniform",
        )

    def _knapsack_order(self, prompt_ids: list[str], sizes: np.ndarray) -> np.ndarray:
        """Main process only: global position -> canonical row (token balancing across processes)."""
        world = self.accelerator.num_processes
        budget = int(sizes.sum())
        if world == 1 or not self.args.knapsack_balance_tokens:
            return np.arange(budget)
        lengths = self.knapsack_allocator.tracker.stats(prompt_ids).mean_length
        if np.isnan(lengths).all():
            return np.arange(budget)
        lengths = np.where(np.isnan(lengths), np.nanmean(lengths), lengths)
        return balance_rows(np.repeat(lengths, sizes), world)

    def _knapsack_plan(self, inputs: list[dict[str, Any]]) -> GenerationPlan:
        """Gather, dedupe, allocate on the main process, broadcast, expand and slice."""
        acc = self.accelerator
        world, rank, local = acc.num_processes, acc.process_index, len(inputs)
        group = self.num_generations
        budget = local * world
        if budget % group:
            raise RuntimeError(
                f"The generation batch has {budget} rows, not a multiple of num_generations={group}; the knapsack "
                "trainer relies on TRL's RepeatSampler (do not replace the train sampler)."
            )
        # Only ids (hashed once per run of equal prompts) and each group's first row travel between processes.
        local_ids: list[str] = []
        previous: Any = None
        for row in inputs:
            key = self._knapsack_prompt_key(row)
            local_ids.append(
                local_ids[-1] if local_ids and key == previous else self._knapsack_prompt_id(row)
            )
            previous = key
        offset = rank * local
        starts = [inputs[j] for j in range(local) if (offset + j) % group == 0]
        parts = gather_object([(local_ids, starts)]) if world > 1 else [(local_ids, starts)]
        ids = [pid for part_ids, _ in parts for pid in part_ids]
        unique_rows = [row for _, part_rows in parts for row in part_rows]
        prompt_ids = ids[::group]
        for k, pid in enumerate(prompt_ids):
            if any(other != pid for other in ids[k * group : (k + 1) * group]):
                raise RuntimeError(
                    f"Rows {k * group}..{(k + 1) * group - 1} of the generation batch are not {group} copies of one "
                    "prompt; the knapsack trainer relies on TRL's RepeatSampler (do not replace the train sampler)."
                )
        step = int(self.state.global_step)
        self._knapsack_head_p = self._knapsack_score_prompts(unique_rows)
        if acc.is_main_process:
            allocation = self._knapsack_allocate(prompt_ids, budget, step)
            sizes = np.asarray(allocation.rollouts_per_prompt, dtype=np.int64)
            payload = [
                (sizes.tolist(), self._knapsack_order(prompt_ids, sizes).tolist(), allocation.metrics())
            ]
        else:
            payload = [None]
        if world > 1:
            broadcast_object_list(payload, from_process=0)
        size_list, order_list, metrics = payload[0]
        sizes = np.asarray(size_list, dtype=np.int64)
        order = np.asarray(order_list, dtype=np.int64)
        if sizes.size != len(prompt_ids) or int(sizes.sum()) != budget or order.size != budget:
            raise RuntimeError(
                f"The allocation gives {int(sizes.sum())} rollouts to {sizes.size} prompts; expected {budget} "
                f"rollouts for {len(prompt_ids)} prompts."
            )
        canonical = np.repeat(np.arange(len(prompt_ids)), sizes)
        mine = order[rank * local : (rank + 1) * local]
        local_rows = [dict(unique_rows[canonical[c]]) for c in mine]  # copies: TRL may write extra fields
        return GenerationPlan(step, prompt_ids, sizes, order, local_rows, metrics)

    def _knapsack_score_prompts(self, unique_rows: list[dict[str, Any]]) -> np.ndarray | None:
        """Every process: the value head's features and p for the batch's prompts (None without a head).

        All processes take part (the forward is sharded and all-gathered), so the features, and the
        head's updates on them, are identical everywhere.
        """
        self._knapsack_head_features = None
        if self.knapsack_value_head is None:
            return None
        from knapsack_trl.value_head import tokenize_prompts

        ids, mask = tokenize_prompts(
            self.processing_class, [row["prompt"] for row in unique_rows], device=self.accelerator.device
        )
        self._knapsack_head_features = self.knapsack_value_head.features(
            self.model, ids, mask, shared_inputs=True
        )
        return self.knapsack_value_head.predict_or_none(self._knapsack_head_features)

    # ------------------------------------------------------------------ TRL overrides
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # type: ignore[misc]
        if self._knapsack_active:
            self._knapsack_rewards = rewards_per_func
            lengths = torch.tensor(
                [len(ids) for ids in completion_ids_list], dtype=torch.float32, device=rewards_per_func.device
            )
            self._knapsack_lengths = gather(lengths) if self.accelerator.num_processes > 1 else lengths
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if not (self.args.knapsack_enabled and self.model.training):
            return super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        start = time.perf_counter()
        plan = self._knapsack_plan(inputs)
        plan_seconds = time.perf_counter() - start
        self._knapsack_active = True
        self._knapsack_rewards = self._knapsack_lengths = None
        try:
            self._knapsack_before_generation()
            output = super()._generate_and_score_completions(plan.local_rows)  # type: ignore[misc]
        finally:
            self._knapsack_active = False
        start = time.perf_counter()
        self._knapsack_finish(plan, output)
        plan_seconds += time.perf_counter() - start
        self._metrics["train"]["knapsack/overhead_seconds"].append(plan_seconds)
        return output

    def _knapsack_before_generation(self) -> None:
        """Hook for per-trainer state reset before TRL generates (RLOO clears its KL capture)."""

    def _knapsack_advantages(
        self, rewards_per_func: torch.Tensor, sizes: torch.Tensor, order: torch.Tensor, output: dict[str, Any]
    ) -> AdvantageResult:
        """Canonical-order advantages with the trainer's own rules (implemented by each trainer)."""
        raise NotImplementedError

    def _knapsack_finish(self, plan: GenerationPlan, output: dict[str, Any]) -> None:
        if self._knapsack_rewards is None:
            raise RuntimeError(
                "_calculate_rewards was not called during generation; cannot compute advantages."
            )
        acc = self.accelerator
        device = self._knapsack_rewards.device
        order = torch.as_tensor(plan.order, device=device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=device)
        sizes = torch.as_tensor(plan.sizes, device=device)
        rewards_per_func = self._knapsack_rewards[inverse]  # global (process-major) -> canonical

        result = self._knapsack_advantages(rewards_per_func, sizes, order, output)
        advantages = result.advantages
        if self.args.knapsack_prompt_weighting == "prompt":
            advantages = advantages * prompt_weights(plan.sizes, self.num_generations).to(advantages)
        global_advantages = advantages[order]
        local = output["advantages"].numel()
        output["advantages"] = global_advantages[
            acc.process_index * local : (acc.process_index + 1) * local
        ].to(output["advantages"].dtype)
        # TRL's completion log is a deque of length B: this replaces the fixed-group values it just wrote.
        self._logs["advantages"].extend(global_advantages.tolist())

        metrics = self._metrics["train"]
        metrics["frac_reward_zero_std"][-1] = result.is_std_zero.float().mean().item()
        present = sizes > 0
        nonzero = nonzero_variance(result.group_reward_std)
        # Prompts whose group has mixed rewards: the ones that give a gradient (the figure that counts).
        metrics["knapsack/informative_prompts"].append(nonzero[present].float().sum().item())
        metrics["knapsack/informative_prompts_share"].append(nonzero[present].float().mean().item())
        # Rollout-level: the share of rollouts in such groups (the paper's figure; it rises whenever
        # rollouts pile onto prompts that were mixed anyway).
        metrics["knapsack/effective_ratio_rollouts"].append(
            nonzero[present].float().mul(sizes[present]).sum().item() / order.numel()
        )
        for name, value in plan.metrics.items():
            metrics[f"knapsack/{name}"].append(float(value))

        from knapsack_trl.trainer.advantages import aggregate_rewards

        scalar_rewards = aggregate_rewards(rewards_per_func, self.reward_weights)
        lengths = self._knapsack_lengths[inverse] if self._knapsack_lengths is not None else None
        if self._knapsack_head_features is not None:
            from knapsack_trl.value_head import group_successes

            successes, counts = group_successes(
                scalar_rewards, plan.sizes, self.args.knapsack_success_threshold
            )
            for name, value in self.knapsack_value_head.update(
                self._knapsack_head_features, successes, counts
            ).items():
                metrics[name].append(value)
            self._knapsack_head_features = None
        if acc.is_main_process:
            row_ids = [pid for pid, n in zip(plan.prompt_ids, plan.sizes.tolist()) for _ in range(n)]
            self.knapsack_allocator.observe(
                row_ids,
                scalar_rewards.tolist(),
                None if lengths is None else lengths.tolist(),
                step=plan.step,
            )
        record = {"step": plan.step, "prompt_ids": plan.prompt_ids, "rollouts": plan.sizes.tolist()}
        self.knapsack_history.append(record)
        self.knapsack_last = {
            **record,
            "order": plan.order,
            "rewards_per_func": rewards_per_func.detach().cpu(),
            "advantages": advantages.detach().cpu(),
            "global_advantages": global_advantages.detach().cpu(),
            "kl": None if result.kl is None else result.kl.detach().cpu(),
        }

    # ------------------------------------------------------------------ checkpoints
    def knapsack_state_dict(self) -> dict[str, Any]:
        """Everything the allocation depends on, JSON-able (the tracker; later a value head)."""
        return {"version": _STATE_VERSION, "allocator": self.knapsack_allocator.state_dict()}

    def load_knapsack_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`knapsack_state_dict`."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"{STATE_FILE} version {state.get('version')!r} is not supported ({_STATE_VERSION})."
            )
        self.knapsack_allocator.load_state_dict(state["allocator"])

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        if self.knapsack_allocator is not None and self.args.should_save and self.accelerator.is_main_process:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(self.knapsack_state_dict(), f, allow_nan=False)
            if self.knapsack_value_head is not None:
                self.knapsack_value_head.save(folder)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        if self.knapsack_allocator is None or checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if self.knapsack_value_head is not None and not self.knapsack_value_head.load(checkpoint):
            logger.warning(f"Resuming from {checkpoint} without a saved value head: it starts untrained.")
        if os.path.exists(path):
            with open(path) as f:
                self.load_knapsack_state_dict(json.load(f))
        elif self.accelerator.is_main_process:
            logger.warning(
                f"Resuming from {checkpoint}, which has no {STATE_FILE} (not written by a knapsack trainer): "
                "the success-rate history starts empty, so the first allocations are uniform."
            )

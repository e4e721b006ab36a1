"""What a knapsack trainer does with each generation batch, shared by :class:`KnapsackGRPOTrainer` and
:class:`KnapsackRLOOTrainer`. TRL's private methods are reached only through :mod:`.trl_bridge`, which
calls :meth:`KnapsackTrainerMixin.knapsack_generate_batch` in place of TRL's
``_generate_and_score_completions`` while training.

One generation batch (:class:`.plan.GenerationBatch`), identical on every process:

1. **gather** every process's prompt ids and the first row of each prompt;
2. **decide** on the main process and broadcast: rollouts per prompt (sum = ``generation_batch_size``, so
   shapes never change) and where each rollout goes (optionally balancing expected tokens across
   processes); with ``knapsack_candidate_factor`` c the batch holds c times the prompts and a prompt may get
   none;
3. **slice**: each process generates and scores its equal share through TRL's own method; with
   ``knapsack_pilot_rollouts`` k this runs twice, k rollouts per prompt first, then the rest decided on the
   pilot's rewards;
4. **join** the rounds into one batch, recompute the advantages per variable group with TRL's rules
   (:mod:`.advantages`), log ``knapsack/*`` metrics, feed the tracker and the value head, tell the listeners.

Because every process keeps ``generation_batch_size / num_processes`` rollouts, DDP, gradient
accumulation, ``steps_per_generation``, ``num_iterations``, every ``loss_type`` normaliser and vLLM's
limits are untouched. Evaluation stays stock.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.calibration import group_successes
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.state import CHECKPOINT_STATE_VERSION, check_version
from knapsack_trl.trainer.advantages import (
    AdvantageResult,
    aggregate_rewards,
    prompt_weights,
)
from knapsack_trl.trainer.agents import KnapsackAgentMixin, split_unidentified
from knapsack_trl.trainer.allocation_log import FINAL_STATE_FILE, AllocationLog
from knapsack_trl.trainer.batch_metrics import log_batch_metrics, log_finite, run_constant_metrics
from knapsack_trl.trainer.config import KnapsackConfigMixin, field_error
from knapsack_trl.trainer.hooks import AllocationEvent, AllocationListener
from knapsack_trl.trainer.plan import PLACEHOLDER_PROMPT, UNIDENTIFIED, GenerationBatch, balance_rows
from knapsack_trl.trainer.prompt_features import tokenize_prompts
from knapsack_trl.trainer.rounds import GeneratedRound
from knapsack_trl.trainer.trl_bridge import (
    ADVANTAGES,
    Capture,
    completion_log,
    train_metrics,
)
from knapsack_trl.trainer.value_head import ValueHeadEstimator, estimator_prior

logger = logging.get_logger(__name__)

STATE_FILE = "knapsack_state.json"


class KnapsackTrainerMixin(KnapsackAgentMixin):
    """Mixed in before a :mod:`.trl_bridge` bridge and ``GRPOTrainer`` / ``RLOOTrainer``; call
    :meth:`_knapsack_setup` after their ``__init__``."""

    args: KnapsackConfigMixin
    knapsack_allocator: Any

    # ------------------------------------------------------------------ set-up
    def _knapsack_setup(self) -> None:
        args = self.args
        self.knapsack_history: deque[dict[str, Any]] = deque(maxlen=args.knapsack_history_size)
        self.knapsack_last: dict[str, Any] | None = None
        self._knapsack_listeners: list[AllocationListener] = []
        self._knapsack_agent_setup()
        self.knapsack_allocator = None
        self.knapsack_pilot = None
        self.knapsack_value_head = None
        self._knapsack_first_logged = False
        self.knapsack_allocation_log: AllocationLog | None = None
        if not args.knapsack_enabled:
            return
        self._knapsack_constants = run_constant_metrics(args)
        if args.knapsack_log_allocations:
            self.knapsack_allocation_log = AllocationLog(args.output_dir, self.accelerator.is_main_process)
            self.add_knapsack_listener(self.knapsack_allocation_log)
        try:
            self.knapsack_pilot = args.knapsack_pilot_round()
        except SettingError as err:
            raise field_error(err) from None
        # Epoch-based runs learn max_steps only in train(): schedules get a stand-in horizon until then.
        self.knapsack_allocator = KnapsackRolloutAllocator(
            args.knapsack_allocator_config(total_steps=args.knapsack_horizon() or 1), args.knapsack_tracker()
        )
        if args.knapsack_value_estimator != "history":
            self.knapsack_value_head = ValueHeadEstimator.from_model(
                self.model, args.knapsack_value_head_config()
            )

    def add_knapsack_listener(self, listener: AllocationListener) -> None:
        """Call ``listener(event)`` after every generation batch (:class:`AllocationEvent`), on every process."""
        self._knapsack_listeners.append(listener)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """TRL's ``train``; with ``knapsack_log_allocations`` the allocation log restarts at the run's first
        batch and the tracker's final state is written to ``output_dir/knapsack_state_final.json``."""
        log = self.knapsack_allocation_log
        if log is not None:
            log.restart()
        output = super().train(*args, **kwargs)  # type: ignore[misc]
        if log is not None and self.accelerator.is_main_process:
            self._knapsack_write_state(os.path.join(self.args.output_dir, FINAL_STATE_FILE))
        return output

    def finish(self) -> None:
        """End a run so that every process exits: trackers finish, then the process group is destroyed.

        Without ``end()`` a multi-process run can abort at exit. Before it, every process waits for the
        others (only the main one saves) and then sleeps briefly with the GIL released: a gloo worker
        thread that is still freeing a finished collective needs the GIL, and torch's process-group
        destructor joins that thread while holding it, a deadlock seen in about 1 in 3 two-process CPU runs.
        """
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
            time.sleep(0.5)
        if hasattr(self, "end"):
            self.end()

    # ------------------------------------------------------------------ one generation batch
    def knapsack_generate_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """The training batch TRL gets in place of its ``_generate_and_score_completions(inputs)``: the
        sampler's rows re-allocated, generated, scored and joined, advantages per variable group."""
        start = time.perf_counter()
        batch = self._knapsack_gather(inputs)
        self._knapsack_score_prompts(batch)
        pilot = self.knapsack_pilot
        if pilot is None:
            sizes, order = batch.decide(self.accelerator, lambda: self._knapsack_decide_allocation(batch))
            self._knapsack_generate(batch, sizes, order, group=self.num_generations)
        else:
            if UNIDENTIFIED in batch.prompt_ids:
                raise ValueError(
                    "knapsack_pilot_rollouts needs a task id for every row, and some rows name none (an "
                    "environment's placeholder rows): pass a train_dataset whose rows fix the task, or set "
                    "knapsack_pilot_rollouts=0."
                )
            sizes = pilot.pilot_sizes()
            _, order = batch.decide(
                self.accelerator, lambda: (None, sizes, self._knapsack_order(batch, sizes), {})
            )
            self._knapsack_generate(batch, sizes, order, group=1)
            if pilot.second_round_budget:
                sizes, order = batch.decide(
                    self.accelerator, lambda: self._knapsack_decide_second_round(batch)
                )
                self._knapsack_generate(batch, sizes, order, group=1)
            else:
                batch.decide(self.accelerator, lambda: self._knapsack_decide_second_round(batch))
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        output = batch.join(
            self.accelerator.num_processes,
            tokenizer.pad_token_id,
            train_metrics(self),
            self.reward_weights,
            self.reward_func_names,
        )
        self._knapsack_finish(batch, output)
        metrics = train_metrics(self)
        generation = sum(r.seconds for r in batch.rounds)
        metrics["knapsack/overhead_seconds"].append(time.perf_counter() - start - generation)
        if pilot is not None:
            metrics["knapsack/pilot_seconds"].append(batch.rounds[0].seconds)
            metrics["knapsack/second_round_seconds"].append(
                batch.rounds[1].seconds if len(batch.rounds) > 1 else 0.0
            )
        return output

    def _knapsack_gather(self, inputs: list[dict[str, Any]]) -> GenerationBatch:
        """Every process's prompt ids and first rows, as one batch (the sampler hands ``c x P`` prompts with
        candidates, ``num_generations / c`` copies each)."""
        batch = GenerationBatch.gather(
            self.accelerator,
            inputs,
            self.num_generations // self.args.knapsack_candidate_factor,
            self.args.knapsack_prompt_id_column,
            int(self.state.global_step),
            environment=self._knapsack_uses_environment(),
        )
        self._knapsack_warn_unidentified(batch.prompt_ids)
        return batch

    def _knapsack_prior(self, prompt_ids: list[str], head_p: np.ndarray | None) -> np.ndarray | None:
        """Main process only: the schedules' horizon brought up to date, and the value head's prior."""
        allocator = self.knapsack_allocator
        horizon = self.args.knapsack_horizon(getattr(getattr(self, "state", None), "max_steps", None))
        if allocator.config.total_steps != horizon and horizon is not None:
            allocator.set_total_steps(horizon)
        observed = None
        if head_p is not None:  # the head stands in where the validity rule ignores a prompt's history
            observed = allocator.valid_history(prompt_ids).astype(np.float64)
        return estimator_prior(self.args.knapsack_value_estimator, head_p, observed)

    def _knapsack_decide_allocation(self, batch: GenerationBatch) -> tuple[Any, np.ndarray, np.ndarray, dict]:
        """Main process only: the one-round allocation (rows that name no task keep ``num_generations``)."""
        candidates = self.args.knapsack_candidate_factor > 1
        known = np.array([pid != UNIDENTIFIED for pid in batch.prompt_ids])

        def allocate(ids: list[str], budget: int) -> Any:
            head_p = None if batch.head_p is None else batch.head_p[known]
            options = {"allow_skip": True} if candidates else {}
            try:
                return self.knapsack_allocator.allocate(
                    ids,
                    budget,
                    step=batch.step,
                    prior_success_rate=self._knapsack_prior(ids, head_p),
                    uniform=self.args.knapsack_mode == "uniform",
                    **options,
                )
            except SettingError as err:
                raise field_error(err) from None

        allocation, sizes, metrics = split_unidentified(
            batch.prompt_ids, batch.budget, self.num_generations, allocate
        )
        return allocation, sizes, self._knapsack_order(batch, sizes), metrics

    def _knapsack_decide_second_round(
        self, batch: GenerationBatch
    ) -> tuple[Any, np.ndarray, np.ndarray, dict]:
        """Main process only: the second round's rollouts from the pilot's gathered rewards."""
        pilot = batch.rounds[0]
        rewards = (
            aggregate_rewards(pilot.canonical_rewards(), self.reward_weights).detach().cpu().double().numpy()
        )
        try:
            second = self.knapsack_pilot.decide(
                self.knapsack_allocator,
                batch.prompt_ids,
                rewards,
                step=batch.step,
                prior_success_rate=self._knapsack_prior(batch.prompt_ids, batch.head_p),
                uniform=self.args.knapsack_mode == "uniform",
            )
        except SettingError as err:
            raise field_error(err) from None
        extra = np.asarray(second.extra_rollouts, dtype=np.int64)
        return second, extra, self._knapsack_order(batch, extra), second.metrics()

    def _knapsack_order(self, batch: GenerationBatch, sizes: np.ndarray) -> np.ndarray:
        """Main process only: global position -> canonical row (token balancing across processes)."""
        world = self.accelerator.num_processes
        budget = int(sizes.sum())
        if world == 1 or not self.args.knapsack_balance_tokens:
            return np.arange(budget)
        lengths = self.knapsack_allocator.tracker.stats(batch.prompt_ids).mean_length
        if np.isnan(lengths).all():
            return np.arange(budget)
        lengths = np.where(np.isnan(lengths), np.nanmean(lengths), lengths)
        return balance_rows(np.repeat(lengths, sizes), world)

    def _knapsack_generate(
        self, batch: GenerationBatch, sizes: np.ndarray, order: np.ndarray, group: int
    ) -> None:
        """One round: ``sizes[i]`` rows of prompt ``i`` laid out across processes by ``order``, generated and
        scored by TRL with its group size set to ``group`` (1 for a round that is not whole groups)."""
        clock = time.perf_counter()
        marks = {name: len(values) for name, values in train_metrics(self).items()}
        output, capture = self.knapsack_stock_generation(
            batch.local_rows(self.accelerator, sizes, order), group
        )
        kl = self._knapsack_round_kl(capture, output)
        batch.rounds.append(
            GeneratedRound(sizes, order, output, capture, kl, marks, time.perf_counter() - clock)
        )

    def _knapsack_score_prompts(self, batch: GenerationBatch) -> None:
        """Every process: the value head's features and p for the batch's prompts (none without a head).

        All processes take part (the forward is sharded and all-gathered), so the features, and the
        head's updates on them, are identical everywhere.
        """
        if self.knapsack_value_head is None:
            return
        ids, mask = tokenize_prompts(
            self.processing_class,
            [row.get("prompt", PLACEHOLDER_PROMPT) for row in batch.unique_rows],
            device=self.accelerator.device,
        )
        batch.head_features = self.knapsack_value_head.features(self.model, ids, mask, shared_inputs=True)
        batch.head_p = self.knapsack_value_head.predict_or_none(batch.head_features)

    # ------------------------------------------------------------------ per-trainer hooks
    def _knapsack_round_kl(self, capture: Capture, output: dict[str, Any]) -> torch.Tensor | None:
        """Hook: this process's per-row sequence KL of one round (RLOO folds it into the reward), else None."""
        return None

    def _knapsack_advantages(
        self, rewards_per_func: torch.Tensor, sizes: torch.Tensor, kl: torch.Tensor | None
    ) -> AdvantageResult:
        """Canonical-order advantages with the trainer's own rules (implemented by each trainer)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ after generation
    def _knapsack_finish(self, batch: GenerationBatch, output: dict[str, Any]) -> None:
        """Advantages per variable group into TRL's output, then metrics, learning, records, listeners."""
        joined = batch.joined
        device = joined.rewards.device
        order = torch.as_tensor(joined.order, device=device)
        sizes = torch.as_tensor(joined.sizes, device=device)
        rewards_per_func = joined.canonical(joined.rewards)
        kl = None if joined.kl is None else joined.canonical(joined.kl)
        tool_calls = self._knapsack_agent_step(batch)
        result = self._knapsack_advantages(rewards_per_func, sizes, kl)
        advantages = result.advantages
        if self.args.knapsack_prompt_weighting == "prompt":
            advantages = advantages * prompt_weights(joined.sizes, self.num_generations).to(advantages)
        global_advantages = advantages[order]
        local = output[ADVANTAGES].numel()
        rank = self.accelerator.process_index
        output[ADVANTAGES] = global_advantages[rank * local : (rank + 1) * local].to(output[ADVANTAGES].dtype)
        # TRL's completion log is a deque of length B: this replaces the fixed-group values it just wrote.
        logged = global_advantages[torch.as_tensor(joined.log_positions, device=device)]
        completion_log(self, ADVANTAGES).extend(logged.tolist())
        rewards = aggregate_rewards(rewards_per_func, self.reward_weights).detach().cpu().double().numpy()
        self._knapsack_log_metrics(batch, result, sizes, rewards)
        lengths = None if joined.lengths is None else joined.canonical(joined.lengths).cpu().numpy()
        self._knapsack_learn(batch, rewards, lengths)
        record = {"step": batch.step, "prompt_ids": batch.prompt_ids, "rollouts": joined.sizes.tolist()}
        self.knapsack_history.append(record)
        self.knapsack_last = {
            **record,
            "order": joined.order,
            "rewards_per_func": rewards_per_func.detach().cpu(),
            "advantages": advantages.detach().cpu(),
            "global_advantages": global_advantages.detach().cpu(),
            "kl": None if result.kl is None else result.kl.detach().cpu(),
            "tool_calls": tool_calls,
        }
        event = AllocationEvent(
            batch.step, batch.prompt_ids, joined.sizes, rewards, lengths, batch.decision, batch.metrics
        )
        for listener in self._knapsack_listeners:
            listener(event)

    def _knapsack_log_metrics(
        self, batch: GenerationBatch, result: AdvantageResult, sizes: torch.Tensor, rewards: np.ndarray
    ) -> None:
        """The batch's ``knapsack/*`` metrics (:func:`.batch_metrics.log_batch_metrics`)."""
        first = not self._knapsack_first_logged
        self._knapsack_first_logged = True
        log_batch_metrics(
            train_metrics(self), batch, result, sizes, rewards, self._knapsack_constants, first=first
        )

    def _knapsack_learn(
        self, batch: GenerationBatch, rewards: np.ndarray, lengths: np.ndarray | None
    ) -> None:
        """The value head trains on every process (identical data); the tracker observes on the main one.
        Successes are counted with the tracker's threshold, the one its history was recorded with."""
        sizes = batch.joined.sizes
        if batch.head_features is not None:
            threshold = self.knapsack_allocator.tracker.success_threshold
            successes, counts = group_successes(rewards, sizes, threshold)
            update = self.knapsack_value_head.update(batch.head_features, successes, counts)
            for name, value in update.items():
                log_finite(train_metrics(self), name, value)
        if self.accelerator.is_main_process:
            row_ids = [pid for pid, n in zip(batch.prompt_ids, sizes.tolist()) for _ in range(n)]
            keep = [k for k, pid in enumerate(row_ids) if pid != UNIDENTIFIED]  # no task, no history
            self.knapsack_allocator.observe(
                [row_ids[k] for k in keep],
                rewards[keep].tolist(),
                None if lengths is None else lengths[keep].tolist(),
                step=batch.step,
            )

    # ------------------------------------------------------------------ checkpoints
    def knapsack_state_dict(self) -> dict[str, Any]:
        """Everything the allocation depends on, JSON-able (the tracker; the value head has its own file)."""
        return {"version": CHECKPOINT_STATE_VERSION, "allocator": self.knapsack_allocator.state_dict()}

    def load_knapsack_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`knapsack_state_dict`."""
        check_version(state, [CHECKPOINT_STATE_VERSION], STATE_FILE)
        self.knapsack_allocator.load_state_dict(state["allocator"])

    def _knapsack_write_state(self, path: str) -> None:
        """:meth:`knapsack_state_dict` as JSON at ``path`` (the checkpoints' format)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.knapsack_state_dict(), f, allow_nan=False)

    def knapsack_save_checkpoint(self, folder: str) -> None:
        """After TRL saved checkpoint ``folder``: the allocator's state and the value head, main process."""
        if self.args.should_save and self.accelerator.is_main_process:
            self._knapsack_write_state(os.path.join(folder, STATE_FILE))
            if self.knapsack_value_head is not None:
                self.knapsack_value_head.save(folder)

    def knapsack_load_checkpoint(self, checkpoint: str) -> None:
        """When TRL resumes from ``checkpoint``: the allocator's state and the value head, every process."""
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

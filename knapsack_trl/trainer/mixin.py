"""The override logic shared by :class:`KnapsackGRPOTrainer` and :class:`KnapsackRLOOTrainer`.

At generation time (training only) the trainer:

1. gathers every process's prompt ids and the first row of each group and decides the rollouts per
   prompt on the main process, broadcast so every process takes the identical allocation (sum =
   ``generation_batch_size``: shapes never change; :mod:`.plan`);
2. expands the prompts into ``n_i`` rows each, optionally permuted across processes to balance
   expected completion tokens, and gives each process an equal slice;
3. calls TRL's own ``_generate_and_score_completions`` on that slice, catching the gathered reward
   matrix in ``_calculate_rewards``;
4. recomputes the advantages per variable group with TRL's rules (:mod:`.advantages`), logs
   ``knapsack/*`` metrics, feeds the tracker and the value head, and tells the listeners (:mod:`.hooks`).

With ``knapsack_pilot_rollouts`` (:meth:`_knapsack_two_rounds`) steps 2-3 run twice: ``k`` rows per
prompt first, then the rest of the batch decided on the pilot's rewards; the two TRL outputs are
joined into one batch (:mod:`.rounds`) before step 4.

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
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl.trainer.utils import get_config_model_id

from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.calibration import group_mean_rewards, group_successes
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.pilot import allocate_second_round
from knapsack_trl.core.state import CHECKPOINT_STATE_VERSION, check_version
from knapsack_trl.trainer.advantages import (
    AdvantageResult,
    aggregate_rewards,
    nonzero_variance,
    prompt_weights,
)
from knapsack_trl.trainer.agents import KnapsackAgentMixin, split_unidentified
from knapsack_trl.trainer.allocation_log import FINAL_STATE_FILE, AllocationLog
from knapsack_trl.trainer.config import KnapsackConfigMixin, check_trl_version, field_error
from knapsack_trl.trainer.hooks import AllocationEvent, AllocationListener
from knapsack_trl.trainer.plan import (
    PLACEHOLDER_PROMPT,
    UNIDENTIFIED,
    GenerationPlan,
    balance_rows,
    decide_on_main,
    local_slice,
)
from knapsack_trl.trainer.prompt_features import tokenize_prompts
from knapsack_trl.trainer.rounds import (
    GeneratedRound,
    final_rows,
    interleave,
    log_positions,
    merge_outputs,
    merge_round_metrics,
    merged_order,
)
from knapsack_trl.trainer.value_head import ValueHeadEstimator, estimator_prior

logger = logging.get_logger(__name__)

STATE_FILE = "knapsack_state.json"
# The mean over the batch's prompts of each prompt's mean reward: every prompt weighs the same, whatever
# its rollouts (TRL's ``reward`` averages rollouts, so it follows the allocation).
PROMPT_MEAN_REWARD = "knapsack/reward_prompt_mean"
# Logged at the first batch, then only in batches where the value differs from this one.
USUALLY = {"solver_optimal": 1.0}


def run_constant_metrics(args: KnapsackConfigMixin) -> frozenset[str]:
    """The allocation metrics (no prefix) this config fixes for the whole run: logged at the first batch only."""
    names = set()
    if args.knapsack_n_max_schedule is None:
        names.add("n_max")
    if args.knapsack_exploration_schedule is None:
        names.add("exploration_share")
    if args.knapsack_rule != "buckets" or not args.knapsack_fallback or args.knapsack_mode == "uniform":
        names.add("fallback_rollouts")
    if args.knapsack_solver == "dp" or args.knapsack_mode == "uniform":
        names.add("solver_optimal")
    return frozenset(names)


def log_finite(metrics: dict[str, list[float]], name: str, value: float) -> None:
    """Append ``value`` unless it is NaN or infinite: TRL logs a metric with no finite value as None."""
    value = float(value)
    if np.isfinite(value):
        metrics[name].append(value)


def knapsack_args(
    trainer_name: str,
    config_class: type,
    model: Any,
    args: Any,
    train_dataset: Any,
    environment_factory: Any = None,
) -> Any:
    """The trainer's ``args`` (TRL's default output dir when None), checked before TRL's set-up runs."""
    check_trl_version()
    if args is None:
        model_name = model if isinstance(model, str) else get_config_model_id(model.config)
        args = config_class(f"{model_name.split('/')[-1]}-{trainer_name.removesuffix('Trainer')}")
    if not isinstance(args, config_class):
        raise TypeError(
            f"{trainer_name} needs a {config_class.__name__}, got {type(args).__name__}; build "
            f"{config_class.__name__}(...) with the same arguments (knapsack_enabled=False gives the stock trainer)."
        )
    check_train_dataset(train_dataset, args, environment_factory)
    return args


def check_train_dataset(dataset: Any, args: KnapsackConfigMixin, environment_factory: Any = None) -> None:
    """Fail at start-up when rows carry neither a stable prompt id nor prompt text to hash.

    Without a dataset TRL decides: its own error, or (an environment owns the data) its placeholder rows,
    which name no task and so are allocated uniformly. Environment rows need no prompt: their id is a hash
    of the row :func:`.plan.row_task_id`.
    """
    if not args.knapsack_enabled or dataset is None:
        return
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an IterableDataset without features: checked on the first batch instead
        return
    if isinstance(environment_factory, dict) and "environment" not in columns:
        raise ValueError(
            f"environment_factory is a dict of {sorted(map(str, environment_factory))}, so each training row must "
            f"name its environment in an 'environment' column; the dataset has none (columns: {columns}). Add the "
            "column, or pass a single environment factory."
        )
    if environment_factory is not None:
        return
    if args.knapsack_prompt_id_column not in columns and "prompt" not in columns:
        raise ValueError(
            f"The training dataset has neither a {args.knapsack_prompt_id_column!r} column "
            f"(knapsack_prompt_id_column) nor a 'prompt' column to hash (columns: {columns}). Knapsack allocation "
            "keys each prompt's success history on a stable id: add an id column (e.g. the row index) and point "
            "knapsack_prompt_id_column at it, or set knapsack_enabled=False."
        )


class KnapsackTrainerMixin(KnapsackAgentMixin):
    """Mixed in before ``GRPOTrainer`` / ``RLOOTrainer``; call :meth:`_knapsack_setup` after their ``__init__``."""

    args: KnapsackConfigMixin
    knapsack_allocator: Any

    # ------------------------------------------------------------------ set-up
    def _knapsack_setup(self) -> None:
        args = self.args
        self.knapsack_history: deque[dict[str, Any]] = deque(maxlen=args.knapsack_history_size)
        self.knapsack_last: dict[str, Any] | None = None
        self._knapsack_listeners: list[AllocationListener] = []
        self._knapsack_active = False
        self._knapsack_rewards: torch.Tensor | None = None
        self._knapsack_lengths: torch.Tensor | None = None
        self._knapsack_head_features: torch.Tensor | None = None
        self._knapsack_head_p: np.ndarray | None = None
        self._knapsack_agent_setup()
        self.knapsack_allocator = None
        self.knapsack_value_head = None
        self._knapsack_first_logged = False
        self.knapsack_allocation_log: AllocationLog | None = None
        if not args.knapsack_enabled:
            return
        self._knapsack_constants = run_constant_metrics(args)
        if args.knapsack_log_allocations:
            self.knapsack_allocation_log = AllocationLog(args.output_dir, self.accelerator.is_main_process)
            self.add_knapsack_listener(self.knapsack_allocation_log)
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

    def _knapsack_write_state(self, path: str) -> None:
        """:meth:`knapsack_state_dict` as JSON at ``path`` (the checkpoints' format)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.knapsack_state_dict(), f, allow_nan=False)

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

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        column = self.args.knapsack_prompt_id_column
        if self.args.knapsack_enabled and column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, column]

    # ------------------------------------------------------------------ allocation
    def _knapsack_prior(self, prompt_ids: list[str]) -> np.ndarray | None:
        """Main process only: the schedules' horizon brought up to date, and the value head's prior."""
        allocator = self.knapsack_allocator
        horizon = self.args.knapsack_horizon(getattr(getattr(self, "state", None), "max_steps", None))
        if allocator.config.total_steps != horizon and horizon is not None:
            allocator.set_total_steps(horizon)
        head_p = self._knapsack_head_p
        observed = None
        if head_p is not None:  # the head stands in where the validity rule ignores a prompt's history
            total = allocator.tracker.stats(prompt_ids).total_observations
            observed = np.where(total >= self.args.knapsack_min_observations, total, 0)
        return estimator_prior(self.args.knapsack_value_estimator, head_p, observed)

    def _knapsack_allocate(self, prompt_ids: list[str], budget: int, step: int) -> Any:
        """Main process only: the core allocation (tests override this to inject allocations)."""
        prior = self._knapsack_prior(prompt_ids)
        try:
            return self.knapsack_allocator.allocate(
                prompt_ids,
                budget,
                step=step,
                prior_success_rate=prior,
                uniform=self.args.knapsack_mode == "uniform",
            )
        except SettingError as err:
            raise field_error(err) from None

    def _knapsack_allocate_second_round(
        self, prompt_ids: list[str], successes: np.ndarray, scored: np.ndarray, budget: int, step: int
    ) -> Any:
        """Main process only: the second round's rollouts from the pilot's outcomes (tests override this)."""
        prior = self._knapsack_prior(prompt_ids)
        try:
            return allocate_second_round(
                self.knapsack_allocator,
                prompt_ids,
                successes,
                self.args.knapsack_pilot_rollouts,
                budget,
                step=step,
                prior_success_rate=prior,
                pilot_scored=scored,
                uniform=self.args.knapsack_mode == "uniform",
            )
        except SettingError as err:
            raise field_error(err) from None

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
        budget = len(inputs) * acc.num_processes
        prompt_ids, unique_rows = self._knapsack_gather(inputs)
        step = int(self.state.global_step)
        self._knapsack_head_p = self._knapsack_score_prompts(unique_rows)
        self._knapsack_warn_unidentified(prompt_ids)
        allocation = None

        def decide() -> tuple[list[int], list[int], dict[str, float]]:
            nonlocal allocation
            allocation, sizes, metrics = split_unidentified(
                prompt_ids, budget, self.num_generations, lambda ids, b: self._knapsack_allocate(ids, b, step)
            )
            return sizes.tolist(), self._knapsack_order(prompt_ids, sizes).tolist(), metrics

        size_list, order_list, metrics = decide_on_main(acc, decide)
        sizes = np.asarray(size_list, dtype=np.int64)
        order = np.asarray(order_list, dtype=np.int64)
        if sizes.size != len(prompt_ids) or int(sizes.sum()) != budget or order.size != budget:
            raise RuntimeError(
                f"The allocation gives {int(sizes.sum())} rollouts to {sizes.size} prompts; expected {budget} "
                f"rollouts for {len(prompt_ids)} prompts."
            )
        rows = local_slice(acc, unique_rows, sizes, order)
        return GenerationPlan(step, prompt_ids, sizes, order, rows, metrics, allocation)

    def _knapsack_two_rounds(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """A pilot round of ``k`` rollouts per prompt, then the rest of the batch by the knapsack on what the
        pilot showed; one output of the batch's rows, advantages per final group (pilot included)."""
        acc = self.accelerator
        clock = time.perf_counter()
        prompt_ids, unique_rows = self._knapsack_gather(inputs)
        if UNIDENTIFIED in prompt_ids:
            raise ValueError(
                "knapsack_pilot_rollouts needs a task id for every row, and some rows name none (an environment's "
                "placeholder rows): pass a train_dataset whose rows fix the task, or set knapsack_pilot_rollouts=0."
            )
        step = int(self.state.global_step)
        self._knapsack_head_p = self._knapsack_score_prompts(unique_rows)
        pilot = np.full(len(prompt_ids), self.args.knapsack_pilot_rollouts, dtype=np.int64)
        (order,) = decide_on_main(acc, lambda: (self._knapsack_order(prompt_ids, pilot).tolist(),))
        overhead = time.perf_counter() - clock
        self._knapsack_before_generation()
        rounds = [self._knapsack_run_round(unique_rows, pilot, np.asarray(order, dtype=np.int64))]
        clock = time.perf_counter()
        budget = len(inputs) * acc.num_processes - int(pilot.sum())
        extra, order, metrics, second = self._knapsack_second_round(prompt_ids, rounds[0], budget, step)
        overhead += time.perf_counter() - clock
        if budget:
            rounds.append(self._knapsack_run_round(unique_rows, extra, order))
        clock = time.perf_counter()
        output, merged, positions = self._knapsack_join(rounds)
        plan = GenerationPlan(step, prompt_ids, pilot + extra, merged, [], metrics, second, positions)
        self._knapsack_finish(plan, output)
        train = self._metrics["train"]
        train["knapsack/overhead_seconds"].append(overhead + time.perf_counter() - clock)
        train["knapsack/pilot_seconds"].append(rounds[0].seconds)
        train["knapsack/second_round_seconds"].append(rounds[1].seconds if len(rounds) > 1 else 0.0)
        return output

    def _knapsack_run_round(
        self, unique_rows: list[dict[str, Any]], sizes: np.ndarray, order: np.ndarray
    ) -> GeneratedRound:
        """Generate and score one round: ``sizes[i]`` rows of prompt ``i``, laid out across processes by ``order``."""
        clock = time.perf_counter()
        marks = {name: len(values) for name, values in self._metrics["train"].items()}
        rows = local_slice(self.accelerator, unique_rows, sizes, order)
        output = self._knapsack_generate_round(rows, regroup=True)
        return GeneratedRound(
            sizes,
            order,
            output,
            self._knapsack_rewards,
            self._knapsack_lengths,
            marks,
            time.perf_counter() - clock,
        )

    def _knapsack_second_round(
        self, prompt_ids: list[str], pilot: GeneratedRound, budget: int, step: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float], Any]:
        """Every process: the second round's rows per prompt, their order and metrics, decided on the main
        process from the pilot's gathered rewards (and the decision itself there, None elsewhere)."""
        inverse = torch.as_tensor(np.argsort(pilot.order, kind="stable"), device=pilot.rewards.device)
        rewards = (
            aggregate_rewards(pilot.rewards[inverse], self.reward_weights).detach().cpu().double().numpy()
        )
        second = None

        def decide() -> tuple[list[int], list[int], dict[str, float]]:
            nonlocal second
            successes, scored = group_successes(rewards, pilot.sizes, self.args.knapsack_success_threshold)
            second = self._knapsack_allocate_second_round(prompt_ids, successes, scored, budget, step)
            extra = np.asarray(second.extra_rollouts, dtype=np.int64)
            return extra.tolist(), self._knapsack_order(prompt_ids, extra).tolist(), second.metrics()

        extra_list, order_list, metrics = decide_on_main(self.accelerator, decide)
        extra, order = np.asarray(extra_list, dtype=np.int64), np.asarray(order_list, dtype=np.int64)
        if extra.size != len(prompt_ids) or int(extra.sum()) != budget or order.size != budget:
            raise RuntimeError(
                f"The second round gives {int(extra.sum())} rollouts to {extra.size} prompts; expected "
                f"{budget} rollouts for {len(prompt_ids)} prompts."
            )
        return extra, order, metrics, second

    def _knapsack_join(self, rounds: list[GeneratedRound]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """The rounds as one batch: TRL's output, the final canonical row at each global position, and
        where TRL's logged rows sit; the gathered rewards and lengths in that batch's order, TRL's
        per-call metrics folded to one entry."""
        world = self.accelerator.num_processes
        order = merged_order([r.order for r in rounds], final_rows([r.sizes for r in rounds]), world)
        self._knapsack_rewards = interleave([r.rewards for r in rounds], world)
        lengths = [r.lengths for r in rounds]
        self._knapsack_lengths = None if any(x is None for x in lengths) else interleave(lengths, world)
        self._knapsack_tool_calls = self._knapsack_prompt_hashes = None  # per round only
        output = rounds[0].output
        if len(rounds) > 1:
            output = merge_outputs([r.output for r in rounds], self._tokenizer.pad_token_id)
            merge_round_metrics(
                self._metrics["train"],
                [r.metric_marks for r in rounds],
                [float(r.rewards.shape[0]) for r in rounds],
                self._knapsack_rewards,
                self.reward_weights,
                self.reward_func_names,
            )
        return output, order, log_positions([int(r.sizes.sum()) for r in rounds], world)

    def _knapsack_score_prompts(self, unique_rows: list[dict[str, Any]]) -> np.ndarray | None:
        """Every process: the value head's features and p for the batch's prompts (None without a head).

        All processes take part (the forward is sharded and all-gathered), so the features, and the
        head's updates on them, are identical everywhere.
        """
        self._knapsack_head_features = None
        if self.knapsack_value_head is None:
            return None
        ids, mask = tokenize_prompts(
            self.processing_class,
            [row.get("prompt", PLACEHOLDER_PROMPT) for row in unique_rows],
            device=self.accelerator.device,
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
            self._knapsack_capture(prompts, completions, completion_ids_list, rewards_per_func.device)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if not (self.args.knapsack_enabled and self.model.training):
            return super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        if self.args.knapsack_pilot_rollouts:
            return self._knapsack_two_rounds(inputs)
        start = time.perf_counter()
        plan = self._knapsack_plan(inputs)
        plan_seconds = time.perf_counter() - start
        self._knapsack_before_generation()
        output = self._knapsack_generate_round(plan.local_rows, regroup=False)
        start = time.perf_counter()
        self._knapsack_finish(plan, output)
        plan_seconds += time.perf_counter() - start
        self._metrics["train"]["knapsack/overhead_seconds"].append(plan_seconds)
        return output

    def _knapsack_generate_round(self, rows: list[dict[str, Any]], regroup: bool) -> dict[str, Any]:
        """TRL's own generation and scoring of ``rows``, catching the gathered rewards and lengths.

        ``regroup``: a round whose rows are not whole groups of ``num_generations`` (a pilot round) runs
        with TRL's group size set to 1, so TRL's own advantages (replaced afterwards) need no full groups.
        """
        self._knapsack_active = True
        self._knapsack_rewards = self._knapsack_lengths = self._knapsack_tool_mask = None
        group = self.num_generations
        if regroup:
            self.num_generations = 1
        try:
            output = super()._generate_and_score_completions(rows)  # type: ignore[misc]
        finally:
            self._knapsack_active = False
            self.num_generations = group
        if self._knapsack_rewards is None:
            raise RuntimeError(
                "_calculate_rewards was not called during generation; cannot compute advantages."
            )
        self._knapsack_after_round(output)
        return output

    def _knapsack_before_generation(self) -> None:
        """Hook for per-trainer state reset before a batch's first round (RLOO clears its KL capture)."""

    def _knapsack_after_round(self, output: dict[str, Any]) -> None:
        """Hook called after each of TRL's generation calls (RLOO turns its captured log-probs into KL)."""

    def _knapsack_advantages(
        self, rewards_per_func: torch.Tensor, sizes: torch.Tensor, order: torch.Tensor, output: dict[str, Any]
    ) -> AdvantageResult:
        """Canonical-order advantages with the trainer's own rules (implemented by each trainer)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ after generation
    def _knapsack_finish(self, plan: GenerationPlan, output: dict[str, Any]) -> None:
        """Advantages per variable group into TRL's output, then metrics, learning, records, listeners."""
        device = self._knapsack_rewards.device
        order = torch.as_tensor(plan.order, device=device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=device)
        sizes = torch.as_tensor(plan.sizes, device=device)
        rewards_per_func = self._knapsack_rewards[inverse]  # global (process-major) -> canonical
        tool_calls = self._knapsack_agent_step(plan, inverse.cpu().numpy())
        result = self._knapsack_advantages(rewards_per_func, sizes, order, output)
        advantages = result.advantages
        if self.args.knapsack_prompt_weighting == "prompt":
            advantages = advantages * prompt_weights(plan.sizes, self.num_generations).to(advantages)
        global_advantages = advantages[order]
        local = output["advantages"].numel()
        rank = self.accelerator.process_index
        output["advantages"] = global_advantages[rank * local : (rank + 1) * local].to(
            output["advantages"].dtype
        )
        # TRL's completion log is a deque of length B: this replaces the fixed-group values it just wrote.
        if plan.log_positions is None:
            logged = global_advantages
        else:
            logged = global_advantages[torch.as_tensor(plan.log_positions, device=device)]
        self._logs["advantages"].extend(logged.tolist())
        rewards = aggregate_rewards(rewards_per_func, self.reward_weights).detach().cpu().double().numpy()
        self._knapsack_log_metrics(plan, result, sizes, rewards)
        lengths = None if self._knapsack_lengths is None else self._knapsack_lengths[inverse].cpu().numpy()
        self._knapsack_learn(plan, rewards, lengths)
        record = {"step": plan.step, "prompt_ids": plan.prompt_ids, "rollouts": plan.sizes.tolist()}
        self.knapsack_history.append(record)
        self.knapsack_last = {
            **record,
            "order": plan.order,
            "rewards_per_func": rewards_per_func.detach().cpu(),
            "advantages": advantages.detach().cpu(),
            "global_advantages": global_advantages.detach().cpu(),
            "kl": None if result.kl is None else result.kl.detach().cpu(),
            "tool_calls": tool_calls,
        }
        event = AllocationEvent(
            plan.step, plan.prompt_ids, plan.sizes, rewards, lengths, plan.allocation, plan.metrics
        )
        for listener in self._knapsack_listeners:
            listener(event)

    def _knapsack_log_metrics(
        self, plan: GenerationPlan, result: AdvantageResult, sizes: torch.Tensor, rewards: np.ndarray
    ) -> None:
        """The batch's ``knapsack/*`` metrics: finite values only, run constants at the first batch only."""
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
            nonzero[present].float().mul(sizes[present]).sum().item() / int(sizes.sum())
        )
        prompt_means = group_mean_rewards(rewards, plan.sizes)
        if not np.isnan(prompt_means).all():
            metrics[PROMPT_MEAN_REWARD].append(float(np.nanmean(prompt_means)))
        first = not self._knapsack_first_logged
        self._knapsack_first_logged = True
        for name, value in plan.metrics.items():
            if first or (name not in self._knapsack_constants and USUALLY.get(name) != value):
                log_finite(metrics, f"knapsack/{name}", value)

    def _knapsack_learn(self, plan: GenerationPlan, rewards: np.ndarray, lengths: np.ndarray | None) -> None:
        """The value head trains on every process (identical data); the tracker observes on the main one."""
        if self._knapsack_head_features is not None:
            successes, counts = group_successes(rewards, plan.sizes, self.args.knapsack_success_threshold)
            update = self.knapsack_value_head.update(self._knapsack_head_features, successes, counts)
            for name, value in update.items():
                log_finite(self._metrics["train"], name, value)
            self._knapsack_head_features = None
        if self.accelerator.is_main_process:
            row_ids = [pid for pid, n in zip(plan.prompt_ids, plan.sizes.tolist()) for _ in range(n)]
            keep = [k for k, pid in enumerate(row_ids) if pid != UNIDENTIFIED]  # no task, no history
            self.knapsack_allocator.observe(
                [row_ids[k] for k in keep],
                rewards[keep].tolist(),
                None if lengths is None else lengths[keep].tolist(),
                step=plan.step,
            )

    # ------------------------------------------------------------------ checkpoints
    def knapsack_state_dict(self) -> dict[str, Any]:
        """Everything the allocation depends on, JSON-able (the tracker; the value head has its own file)."""
        return {"version": CHECKPOINT_STATE_VERSION, "allocator": self.knapsack_allocator.state_dict()}

    def load_knapsack_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`knapsack_state_dict`."""
        check_version(state, [CHECKPOINT_STATE_VERSION], STATE_FILE)
        self.knapsack_allocator.load_state_dict(state["allocator"])

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        if self.knapsack_allocator is not None and self.args.should_save and self.accelerator.is_main_process:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self._knapsack_write_state(os.path.join(folder, STATE_FILE))
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

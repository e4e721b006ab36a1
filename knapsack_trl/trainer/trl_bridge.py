"""Everything knapsack-trl touches of TRL's private face, in one module: the audit list of a TRL upgrade.

TRL has no public hook for the group size, the rollouts per prompt or the advantages, so the trainers
override private methods. Each override here does one small thing and hands over to a public
``knapsack_*`` method of :class:`.mixin.KnapsackTrainerMixin`; when the knapsack state was never set up
(``knapsack_enabled=False``, or a trainer built with ``object.__new__`` as TRL's own tests do) every
override is exactly TRL's method. The one opt-in exception is ``knapsack_completion_logps_only`` (off by
default): the log-probabilities of the completion scored from its own positions' logits, with or without
the knapsack.

What lives here, and only here:

- the supported trl range and its check;
- the private methods overridden (``_generate_and_score_completions``, ``_calculate_rewards``,
  ``_generate_single_turn``, ``_generate``, ``_get_per_token_logps_and_entropies``, ``_get_train_sampler``,
  ``_set_signature_columns_if_needed``, ``_save_checkpoint``, ``_load_optimizer_and_scheduler``) and the
  private attributes read (``_metrics``, ``_logs``, ``_signature_columns``, ``_get_output_dir``);
- the one context manager that changes TRL's group size (``num_generations``) for the length of a call;
- the table of TRL's output keys and of the metric names the trainers rewrite.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import trl
from packaging.version import Version
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.trainer.utils import RepeatSampler

# ----------------------------------------------------------------------------------------------- versions
SUPPORTED_TRL = (">=1.16", "<1.17")
SKIP_VERSION_CHECK_ENV = "KNAPSACK_TRL_SKIP_VERSION_CHECK"


def check_trl_version(installed: str | None = None) -> None:
    """Refuse a trl outside the tested range: the overrides below touch private methods that move.

    Set ``KNAPSACK_TRL_SKIP_VERSION_CHECK=1`` to downgrade the error to a warning (for trying a newer trl;
    run the contract tests first).
    """
    installed = installed or trl.__version__
    low, high = (Version(bound.lstrip("<>=")) for bound in SUPPORTED_TRL)
    if low <= Version(Version(installed).base_version) < high:
        return
    message = (
        f"knapsack-trl supports trl {','.join(SUPPORTED_TRL)} but trl {installed} is installed. Its trainers "
        "override private GRPOTrainer/RLOOTrainer methods that change between trl releases. Install a supported "
        f"version (pip install 'trl{','.join(SUPPORTED_TRL)}'), or set {SKIP_VERSION_CHECK_ENV}=1 to try anyway "
        "(then run tests/test_trainer_grpo.py and tests/test_trainer_rloo.py)."
    )
    if os.environ.get(SKIP_VERSION_CHECK_ENV, "").strip().lower() in ("1", "true", "yes"):
        warnings.warn(message, stacklevel=2)
        return
    raise RuntimeError(message)


# TRL 1.16 reads transformers' deprecated gradient-checkpointing names around every generation; transformers
# 5.25 warns for each. They are TRL's to rename: silence exactly those three messages.
warnings.filterwarnings(
    "ignore",
    message=r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is deprecated",
    category=FutureWarning,
)


# ----------------------------------------------------------------------------------------------- TRL's names
# Output keys TRL 1.16 writes for text models, and how two generation rounds of each are joined.
LEFT_PADDED = ("prompt_ids", "prompt_mask")
RIGHT_PADDED = (
    "completion_ids",
    "completion_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
    "tool_mask",
)
ROW_VALUES = ("advantages", "old_logps")
SUMMED = ("num_items_in_batch",)
TOKEN_IDS = ("prompt_ids", "completion_ids")
ADVANTAGES = "advantages"
# Metrics TRL logs per generation call that a variable-group batch rewrites.
ZERO_STD_METRIC = "frac_reward_zero_std"
REWARD_METRIC = "reward"
REWARD_STD_METRIC = "reward_std"


def reward_function_metric(name: str, statistic: str) -> str:
    """TRL's per-reward-function metric name (``statistic``: ``mean`` or ``std``)."""
    return f"rewards/{name}/{statistic}"


# ----------------------------------------------------------------------------------------------- private state
def train_metrics(trainer: Any) -> dict[str, list[float]]:
    """TRL's per-step training metrics (averaged by ``log()``), which the trainers append to."""
    return trainer._metrics["train"]


def completion_log(trainer: Any, key: str) -> Any:
    """TRL's completion-table deque for ``key`` (length ``generation_batch_size``)."""
    return trainer._logs[key]


@contextlib.contextmanager
def group_size(trainer: Any, size: int) -> Iterator[None]:
    """TRL's ``num_generations`` set to ``size`` for the length of the block (its sampler, vLLM's server
    dedup and its own advantages read it), restored afterwards whatever happens."""
    saved = trainer.num_generations
    trainer.num_generations = size
    try:
        yield
    finally:
        trainer.num_generations = saved


# The arguments of TRL's ``_get_per_token_logps_and_entropies`` the completion-only path reads; any other one
# given as neither None nor False (images, token type ids, the MoE aux loss, whatever a later TRL adds) sends
# the call to TRL's own method.
TEXT_LOGPS_ARGS = ("model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy")


def _completion_only_args(trainer: Any, stock: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """The arguments of a ``_get_per_token_logps_and_entropies`` call that :func:`completion_logps` takes, or
    None for TRL's method: when ``knapsack_completion_logps_only`` is off (or the trainer has no ``args``, as
    one built without ``__init__``), any input but text is given (pixel values, image grids, token type ids,
    the MoE aux loss...), ``cast_lm_head_to_fp32`` is set, the model's forward takes no ``logits_to_keep``,
    or the completion is the whole sequence."""
    settings = getattr(trainer, "args", None)
    if not getattr(settings, "knapsack_completion_logps_only", False):
        return None
    if getattr(settings, "cast_lm_head_to_fp32", False):
        return None
    try:
        given = inspect.signature(stock).bind(*args, **kwargs).arguments
    except TypeError:
        return None  # TRL's method raises its own error
    if not set(TEXT_LOGPS_ARGS[:4]) <= given.keys():
        return None
    if any(v is not None and v is not False for k, v in given.items() if k not in TEXT_LOGPS_ARGS):
        return None
    if int(given["logits_to_keep"]) >= given["input_ids"].size(1):
        return None
    if not _takes_logits_to_keep(trainer, given["model"]):
        return None
    return {k: v for k, v in given.items() if k in TEXT_LOGPS_ARGS}


def _takes_logits_to_keep(trainer: Any, model: Any) -> bool:
    """Whether ``model``'s own forward (under accelerate's and PEFT's wrappers) takes ``logits_to_keep``."""
    inner = trainer.accelerator.unwrap_model(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(type(inner).forward).parameters


def completion_logps(
    trainer: Any,
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    batch_size: int | None = None,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, None]:
    """TRL's per-token log-probabilities and entropies of the last ``logits_to_keep`` tokens, from the logits of
    those positions only: the model's own forward (its logit scaling and softcapping included) on
    ``logits_to_keep + 1`` positions in TRL's autocast, in fp32 times ``1 / temperature`` as TRL's fused
    head does, then a log-softmax; 0 where the token is padding, as TRL's. ``(logps, entropies, None)``."""
    batch_size = batch_size or input_ids.size(0)
    scale = 1 / trainer.temperature
    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        with trainer.accelerator.autocast():
            logits = model(
                input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, use_cache=False
            ).logits
        log_probs = torch.log_softmax(logits[:, :-1].float() * scale, dim=-1)
        padding = mask[:, -logits_to_keep:] == 0
        token_logps = log_probs.gather(-1, ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1)
        all_logps.append(token_logps.masked_fill(padding, 0.0))
        if compute_entropy:
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            all_entropies.append(entropy.masked_fill(padding, 0.0))
    entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
    return torch.cat(all_logps, dim=0), entropies, None


def _knapsack_on(trainer: Any) -> bool:
    """Whether the knapsack state was set up (False for a disabled trainer or one built without ``__init__``)."""
    return getattr(trainer, "knapsack_allocator", None) is not None


@dataclass
class Capture:
    """What the overrides catch during one of TRL's generation calls, for the call's caller."""

    rewards: torch.Tensor | None = None  # (rows, reward functions), gathered over processes
    tool_mask: list[list[int]] | None = None  # per local rollout: 1 = a token the policy generated
    logps: list[torch.Tensor] = field(default_factory=list)  # RLOO: the policy's, then the reference's
    rollouts: dict[str, Any] = field(default_factory=dict)  # per-rollout extras the mixin records


class CandidateSampler(RepeatSampler):
    """TRL's sampler over ``passes`` shuffled passes of the dataset per epoch: with ``c`` candidates per
    chosen prompt an epoch keeps the steps it has without candidates (each prompt is a candidate ``c``
    times an epoch; a prompt skipped once comes back at its next pass)."""

    def __init__(self, *args: Any, passes: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes = int(passes)

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.passes):
            yield from super().__iter__()

    def __len__(self) -> int:
        return super().__len__() * self.passes


class _Bridge:
    """The overrides GRPO and RLOO share. ``_knapsack_capture`` is set only while the mixin runs one of
    TRL's generation calls (:meth:`knapsack_stock_generation`)."""

    _knapsack_capture: Capture | None = None

    def knapsack_stock_generation(
        self, rows: list[dict[str, Any]], group: int
    ) -> tuple[dict[str, Any], Capture]:
        """TRL's own generation and scoring of ``rows`` with TRL's group size set to ``group``, and what the
        overrides caught meanwhile (the gathered rewards always)."""
        capture = Capture()
        self._knapsack_capture = capture
        try:
            with group_size(self, group):
                output = super()._generate_and_score_completions(rows)  # type: ignore[misc]
        finally:
            self._knapsack_capture = None
        if capture.rewards is None:
            raise RuntimeError(
                "_calculate_rewards was not called during generation; cannot compute advantages."
            )
        return output, capture

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        """TRL's method, or with ``knapsack_completion_logps_only`` and text-only inputs the same numbers from
        the completion's positions only (:func:`completion_logps`; see :func:`_completion_only_args` for when
        TRL's method runs instead)."""
        stock = super()._get_per_token_logps_and_entropies  # type: ignore[misc]
        text = _completion_only_args(self, stock, args, kwargs)
        if text is None:
            return stock(*args, **kwargs)
        with profiling_context(self, "_get_per_token_logps_and_entropies"):
            return completion_logps(self, **text)

    def _generate_and_score_completions(self, inputs):
        if _knapsack_on(self) and self.model.training:
            return self.knapsack_generate_batch(inputs)
        return super()._generate_and_score_completions(inputs)  # type: ignore[misc]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # type: ignore[misc]
        capture = self._knapsack_capture
        if capture is not None:
            capture.rewards = rewards_per_func
            self.knapsack_record_rollouts(capture, prompts, completions, completion_ids_list)
        return rewards_per_func

    def _get_train_sampler(self, *args, **kwargs):
        factor = self.args.knapsack_candidate_factor if _knapsack_on(self) else 1
        if factor == 1:
            return super()._get_train_sampler(*args, **kwargs)  # type: ignore[misc]
        with group_size(self, self.num_generations // factor):
            sampler = super()._get_train_sampler(*args, **kwargs)  # type: ignore[misc]
        kept = {
            k: getattr(sampler, k)
            for k in ("mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed")
        }
        return CandidateSampler(sampler.data_source, passes=factor, **kept)

    def _set_signature_columns_if_needed(self, *args, **kwargs):
        result = super()._set_signature_columns_if_needed(*args, **kwargs)  # type: ignore[misc]
        if _knapsack_on(self):
            column = self.args.knapsack_prompt_id_column
            if column not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, column]
        return result

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        result = super()._save_checkpoint(model, trial, *args, **kwargs)  # type: ignore[misc]
        if _knapsack_on(self):
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self.knapsack_save_checkpoint(folder)
        return result

    def _load_optimizer_and_scheduler(self, checkpoint, *args, **kwargs):
        result = super()._load_optimizer_and_scheduler(checkpoint, *args, **kwargs)  # type: ignore[misc]
        if _knapsack_on(self) and checkpoint is not None:
            self.knapsack_load_checkpoint(checkpoint)
        return result


def _single_turn_signature() -> inspect.Signature:
    """Signature of ``GRPOTrainer._generate_single_turn``; it must take ``num_generations``."""
    signature = inspect.signature(GRPOTrainer._generate_single_turn)
    if "num_generations" not in signature.parameters:
        raise RuntimeError(
            "GRPOTrainer._generate_single_turn has no `num_generations` parameter in this trl version "
            f"(signature {signature}); KnapsackGRPOTrainer cannot ask vLLM for one completion per rollout."
        )
    return signature


class GRPOBridge(_Bridge):
    """GRPO's overrides: one completion per row while the mixin generates (vLLM's server mode dedupes by a
    fixed group otherwise); each rollout's mask of generated tokens (tool results and a ``rollout_func``'s
    ``env_mask`` 0 excluded) for its token cost; a ``rollout_func`` reads ``trainer.num_generations == 1``
    meanwhile, since its rows are the allocation's."""

    _single_turn = _single_turn_signature()

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if self._knapsack_capture is None:
            return super()._generate_single_turn(*args, **kwargs)  # type: ignore[misc]
        bound = self._single_turn.bind(self, *args, **kwargs)
        bound.arguments["num_generations"] = 1
        return super()._generate_single_turn(*bound.args[1:], **bound.kwargs)  # type: ignore[misc]

    def _generate(self, prompts: list) -> Any:
        capture = self._knapsack_capture
        if capture is None:
            return super()._generate(prompts)  # type: ignore[misc]
        with group_size(self, 1 if self.rollout_func is not None else self.num_generations):
            result = super()._generate(prompts)  # type: ignore[misc]
        capture.tool_mask = result[2]
        return result


class RLOOBridge(_Bridge):
    """RLOO's overrides: one completion per row while the mixin generates (RLOO reads the group size from
    ``self.num_generations``); the policy's and the reference's log-probs, whose KL RLOO folds into the
    reward."""

    def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any) -> Any:
        if self._knapsack_capture is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields)  # type: ignore[misc]
        with group_size(self, 1):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields)  # type: ignore[misc]

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)  # type: ignore[misc]
        capture = self._knapsack_capture
        if capture is not None and self.beta != 0.0:
            capture.logps.append(out[0])
        return out

"""``knapsack_*`` config fields shared by the GRPO and RLOO configs.

The fields live in one dataclass mixin so both trainers (and TrlParser / YAML recipes, which read the
dataclass fields and their ``help`` metadata) see the same names. ``num_generations`` keeps TRL's
meaning for the *sampler* and becomes the *average* rollouts per prompt: each generation batch holds
``P = generation_batch_size // num_generations`` distinct prompts, and the knapsack splits
``generation_batch_size`` rollouts among them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from trl import GRPOConfig, RLOOConfig

from knapsack_trl.core.budget import check_budget as check_split
from knapsack_trl.core.config import RULES, AllocatorConfig
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.pilot import PilotRound
from knapsack_trl.core.presets import PRESETS, Preset, get_preset
from knapsack_trl.core.tracker import ESTIMATES, SuccessRateTracker
from knapsack_trl.trainer.trl_bridge import SKIP_VERSION_CHECK_ENV, SUPPORTED_TRL, check_trl_version
from knapsack_trl.trainer.value_head import VALUE_ESTIMATORS, ValueHeadConfig

__all__ = [
    "SKIP_VERSION_CHECK_ENV",
    "SUPPORTED_TRL",
    "KnapsackConfigMixin",
    "KnapsackGRPOConfig",
    "KnapsackRLOOConfig",
    "check_trl_version",
    "field_error",
    "knapsack_fields_markdown",
]

MODES = ("knapsack", "uniform")
# knapsack_candidate_factor's default, in order of preference: 4 won the pre-registered levels comparison
# (docs/benchmark.md; never below its control in the simulator, docs/method.md), 2 where 4 does not fit.
DEFAULT_CANDIDATE_FACTORS = (4, 2)
# transformers >= 5.25 renamed gradient_checkpointing to activation_checkpointing (the old name warns).
_ACTIVATION_CHECKPOINTING = any(f.name == "activation_checkpointing" for f in fields(GRPOConfig))


PROMPT_WEIGHTINGS = ("rollout", "prompt")
# The tracker's constructor arguments and the config fields that carry them.
TRACKER_FIELDS = {
    "window": "knapsack_tracker_window",
    "ema_decay": "knapsack_tracker_ema_decay",
    "estimate": "knapsack_tracker_estimate",
    "prior_strength": "knapsack_prior_strength",
    "prior_mean": "knapsack_prior_mean",
    "success_threshold": "knapsack_success_threshold",
}
# Every setting name the core uses in its errors, as this config spells it.
FIELD_NAMES = {
    **{f.name: f"knapsack_{f.name}" for f in fields(AllocatorConfig)},
    **TRACKER_FIELDS,
    "preset": "knapsack_preset",
    "pilot_rollouts": "knapsack_pilot_rollouts",
    "budget": "generation_batch_size",
    "value_estimator": "knapsack_value_estimator",
    **{
        f"value_head_{name}": f"knapsack_value_head_{name}"
        for name in ("type", "layer", "lr", "prior_strength")
    },
}


def field_error(err: SettingError) -> ValueError:
    """A core :class:`SettingError` worded with this config's field names."""
    return err.renamed(FIELD_NAMES)


def preset_fields(preset: Preset) -> dict[str, Any]:
    """A core preset as ``knapsack_*`` field values (presets use no value head)."""
    out = {f"knapsack_{name}": value for name, value in preset.allocator.items()}
    out.update({TRACKER_FIELDS[name]: value for name, value in preset.tracker.items()})
    out["knapsack_value_estimator"] = "history"
    return out


@dataclass
class KnapsackConfigMixin:
    """Knapsack rollout allocation settings (all prefixed ``knapsack_``)."""

    knapsack_enabled: bool = field(
        default=True,
        metadata={
            "help": "Re-allocate each generation batch's rollouts across its prompts. False gives exactly the "
            "stock trainer's behaviour (every override passes straight through; knapsack_completion_logps_only, "
            "off by default, is the one setting that applies either way)."
        },
    )
    knapsack_mode: str = field(
        default="knapsack",
        metadata={
            "help": "`'knapsack'`: solve the knapsack each batch. `'uniform'`: same pipeline, tracking and metrics, "
            "but every prompt gets `num_generations` rollouts (an ablation baseline; reproduces the stock "
            "trainer's advantages exactly).",
            "choices": list(MODES),
        },
    )
    knapsack_preset: str | None = field(
        default=None,
        metadata={
            "help": "A named bundle of the fields below. `'reference'`: the Knapsack RL paper's rule as its code runs "
            "(buckets, the paper's value, the cost-based fallback, history from 8 outcomes, last-visit estimate "
            "over 16 without a prior, no value head), exact where that code is buggy. Fields left at their defaults "
            "take the preset's values; a field set to anything else must agree with it.",
            "choices": sorted(PRESETS),
        },
    )
    knapsack_rule: str = field(
        default="posterior",
        metadata={
            "help": "`'posterior'`: one knapsack over every prompt on its posterior (its own outcomes and a "
            "population prior fitted to every prompt's history); with the `nonzero_gradient` value this maximises "
            "the expected number of prompts with a gradient. `'buckets'`: the paper's rule (all-fail / all-success "
            "/ unseen prompts get fixed budgets, the mixed ones share the rest; see knapsack_fallback).",
            "choices": list(RULES),
        },
    )
    knapsack_solver: str = field(
        default="cpsat",
        metadata={
            "help": "Knapsack solver: `'cpsat'` (OR-Tools CP-SAT, exact, hinted with the greedy answer and pruned by a "
            "Lagrangian bound, about a millisecond per batch; the only one that supports knapsack_token_cost), "
            "`'dp'` (exact dynamic programme), `'greedy'` (marginal gains; exact when knapsack_n_min >= 1).",
            "choices": ["cpsat", "dp", "greedy"],
        },
    )
    knapsack_time_limit_s: float = field(
        default=1.0,
        metadata={
            "help": "Time limit for the CP-SAT solver, in CP-SAT's deterministic seconds (about a second of "
            "work, counted the same on a loaded and an idle machine, so a search cut short allocates alike on "
            "every run of a seed); 20x this in wall-clock seconds backs it up. A cut search returns the best "
            "allocation found (knapsack/solver_optimal logs 0)."
        },
    )
    knapsack_value_function: str = field(
        default="nonzero_gradient",
        metadata={
            "help": "Item value v(n, p): `'nonzero_gradient'` (P(the group has mixed rewards): counts the prompts that "
            "give a gradient), `'knapsack'` (the paper's: P(mixed) x p(1-p)^2) or `'informative_rollouts'` "
            "(n x P(mixed): the rollouts that get a non-zero advantage; with candidates it lost 20 held-out points "
            "to its control in the benchmark, and warns).",
        },
    )
    knapsack_n_min: int = field(
        default=2,
        metadata={
            "help": "Fewest rollouts any prompt of the batch gets. Keep >= 2: a group of one has zero advantage."
        },
    )
    knapsack_n_max: int = field(default=128, metadata={"help": "Most rollouts any prompt of the batch gets."})
    knapsack_zero_success_budget: int = field(
        default=2,
        metadata={
            "help": "Rollouts for a prompt whose recorded rollouts all failed (reference: `negative_n`)."
        },
    )
    knapsack_full_success_budget: int = field(
        default=2,
        metadata={
            "help": "Rollouts for a prompt whose recorded rollouts all succeeded (reference: `positive_n`)."
        },
    )
    knapsack_fallback: bool = field(
        default=True,
        metadata={
            "help": "Buckets rule: the reference's cost-based fallback. The mixed prompts get only what gives each a "
            "knapsack_fallback_confidence chance of a mixed group (capped at n_max); the surplus goes evenly to the "
            "all-fail and unseen prompts (else to the other non-mixed ones)."
        },
    )
    knapsack_fallback_confidence: float = field(
        default=0.9,
        metadata={
            "help": "Buckets rule: the fallback's chance of a mixed group, in (0, 1) (reference: alpha = 0.9)."
        },
    )
    knapsack_min_observations: int = field(
        default=1,
        metadata={
            "help": "A prompt's history is used from this many outcomes on; before that it counts as unseen "
            "(reference: 8)."
        },
    )
    knapsack_success_threshold: float = field(
        default=0.5,
        metadata={
            "help": "A rollout counts as a success when its reward (the weighted sum of the reward functions, as "
            "TRL aggregates it) is strictly above this threshold."
        },
    )
    knapsack_tracker_window: int | None = field(
        default=None,
        metadata={
            "help": "Success history per prompt as the last N outcomes (the reference: 16). None = the EMA of "
            "knapsack_tracker_ema_decay."
        },
    )
    knapsack_tracker_ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "EMA of each prompt's success and rollout counts, multiplied by this at every visit, in (0, 1). "
            "None = 0.9 unless knapsack_tracker_window is set."
        },
    )
    knapsack_tracker_estimate: str = field(
        default="window",
        metadata={
            "help": "With knapsack_tracker_window: `'window'` (the last N outcomes) or `'last_visit'` (the reference: "
            "the last visit's outcomes when it had at least N rollouts, else the last N).",
            "choices": list(ESTIMATES),
        },
    )
    knapsack_prior_strength: float = field(
        default=2.0, metadata={"help": "Beta prior pseudo-count k in the estimate (s + k*m) / (n + k)."}
    )
    knapsack_prior_mean: float = field(default=0.5, metadata={"help": "Beta prior mean m in the estimate."})
    knapsack_token_cost: bool = field(
        default=False,
        metadata={
            "help": "Also bound the batch's expected completion tokens by what the uniform allocation would spend "
            "(cost of a rollout = the prompt's mean completion length). Needs knapsack_solver='cpsat'."
        },
    )
    knapsack_n_max_schedule: str | None = field(
        default=None,
        metadata={
            "help": "Schedule for n_max over training, e.g. `'cosine:128:32'` or `'linear:64:16:500'` "
            "(kind:start:end[:steps]); steps default to knapsack_total_steps, else the run's max_steps."
        },
    )
    knapsack_exploration_schedule: str | None = field(
        default=None,
        metadata={
            "help": "Share of the budget reserved for unseen / never-solved prompts over training, e.g. "
            "`'linear:0.2:0'`. None = 0 (the reference behaviour)."
        },
    )
    knapsack_pilot_rollouts: int = field(
        default=0,
        metadata={
            "help": "Pilot round: every prompt of the generation batch first gets this many rollouts; their "
            "rewards update each prompt's posterior, and the rest of the batch goes by a knapsack on the "
            "chance that each prompt's final group (pilot included) is mixed. 0 = off (one round). Needs "
            "k x prompts per batch <= generation_batch_size and a multiple of the number of processes."
        },
    )
    knapsack_history_half_life: float | str | None = field(
        default=None,
        metadata={
            "help": "Steps over which a prompt's success history loses half its weight since its last visit, so a "
            "prompt not seen for a while (skipped, or not offered) is judged more by the population's current "
            "rates. A number of steps, 'off', or unset: 16 steps when choosing prompts from candidates "
            "(knapsack_candidate_factor > 1), off otherwise (allocations exactly as before)."
        },
    )
    knapsack_candidate_factor: int | None = field(
        default=None,
        metadata={
            "help": "Choose the prompts, not only their rollouts: each generation batch holds this many times the "
            "prompts (c x generation_batch_size / num_generations candidates, num_generations / c sampler copies "
            "each, the same rows), and the knapsack decides which get rollouts and how many; a prompt may get "
            "none (it leaves the batch before generation). 1 = every prompt of the batch gets rollouts. An "
            "epoch keeps its number of steps: each prompt is a candidate c times per epoch. Needs "
            "num_generations divisible by c and knapsack_n_min >= 2. None (the default) = 4, the best arm of "
            "the pre-registered comparison (docs/benchmark.md), where the settings allow it (knapsack_mode "
            "'knapsack', an exact solver, no preset or token cost, num_generations divisible by 4), else 2, "
            "else 1; at start-up a dataset too small or without a length lowers a defaulted factor (with a "
            "warning) where an explicit one is refused. The value in force is this field after the config is "
            "built."
        },
    )
    knapsack_total_steps: int | None = field(
        default=None,
        metadata={
            "help": "Horizon of the schedules. None = the trainer's max_steps, known when training starts."
        },
    )
    knapsack_prompt_id_column: str = field(
        default="prompt_id",
        metadata={
            "help": "Dataset column with a stable id per prompt. If the dataset has no such column, the id is a "
            "content hash of the `prompt` column."
        },
    )
    knapsack_prompt_weighting: str = field(
        default="rollout",
        metadata={
            "help": "`'rollout'`: every rollout weighs the same, so a prompt's weight grows with its rollouts "
            "(TRL's semantics). `'prompt'`: scale advantages by num_generations / n_i so each prompt weighs "
            "what it would under uniform allocation.",
            "choices": list(PROMPT_WEIGHTINGS),
        },
    )
    knapsack_balance_tokens: bool = field(
        default=True,
        metadata={
            "help": "With several processes, permute rollouts across processes (each keeps the same count) to "
            "balance their expected completion tokens, using each prompt's mean completion length so far."
        },
    )
    knapsack_value_estimator: str = field(
        default="history",
        metadata={
            "help": "Where p comes from: `'history'` (the tracker only; unseen prompts get the uniform budget), "
            "`'value_head'` (a small head on the policy's pooled prompt hidden states scores prompts with no "
            "history), `'blend'` (the head's p is every prompt's prior, with pseudo-count "
            "knapsack_value_head_prior_strength, so a prompt's own history takes over as it accumulates).",
            "choices": ["history", "value_head", "blend"],
        },
    )
    knapsack_value_head_type: str = field(
        default="mlp",
        metadata={"help": "Value head: `'linear'` or `'mlp'` (2 layers).", "choices": ["linear", "mlp"]},
    )
    knapsack_value_head_layer: int = field(
        default=-1,
        metadata={"help": "Hidden-state layer the value head pools (0 = embeddings, -1 = last)."},
    )
    knapsack_value_head_lr: float = field(
        default=1e-2, metadata={"help": "The value head's AdamW learning rate."}
    )
    knapsack_value_head_prior_strength: float | None = field(
        default=None,
        metadata={
            "help": "Pseudo-count of the head's prediction in `'blend'` mode. None = knapsack_prior_strength."
        },
    )
    knapsack_history_size: int = field(
        default=1000,
        metadata={"help": "Allocations kept in memory on every process (`trainer.knapsack_history`)."},
    )
    knapsack_log_allocations: bool = field(
        default=True,
        metadata={
            "help": "Write each generation batch's allocation (prompt ids, rollouts, rewards, the p used) to "
            "output_dir/knapsack_allocations.jsonl (main process; a resumed run continues it without duplicates) "
            "and the tracker's final state to output_dir/knapsack_state_final.json."
        },
    )
    knapsack_completion_logps_only: bool = field(
        default=False,
        metadata={
            "help": "Score only the completion: the per-token log-probabilities (and entropies) come from the "
            "logits of the last completion-length positions (the model called with logits_to_keep = completion "
            "length + 1, the logits divided by the temperature, then a log-softmax), not from TRL's fused LM head, "
            "which on a device without Triton (a CPU) projects every position of every sequence, prompt "
            "included, onto the vocabulary. The same numbers within float rounding, in less time on a CPU "
            "(docs/own_model_cpu.md#speed). It holds those logits in memory (rows x completion length x "
            "vocabulary floats): meant for CPUs; on a GPU with Triton TRL already scores only the completion. "
            "Text-only inputs: images, token type ids, a MoE aux loss or cast_lm_head_to_fp32 use TRL's method. "
            "Applies whether or not knapsack_enabled. False = TRL's method always."
        },
    )

    def __post_init__(self) -> None:
        check_trl_version()
        if _ACTIVATION_CHECKPOINTING and self.activation_checkpointing is None:
            # TRL 1.16 defaults transformers' deprecated alias (gradient_checkpointing=True), which warns on every
            # config from transformers 5.25: carry its value to the new name, which the alias then mirrors.
            self.activation_checkpointing, self.gradient_checkpointing = self.gradient_checkpointing, None
        super().__post_init__()  # type: ignore[misc]  # the TRL config's own checks set generation_batch_size
        self.knapsack_candidate_factor_defaulted = self.knapsack_candidate_factor is None
        if not self.knapsack_enabled:
            if self.knapsack_candidate_factor_defaulted:
                self.knapsack_candidate_factor = 1
            return
        try:
            self._check_knapsack_fields()
        except SettingError as err:
            raise field_error(err) from None

    def _check_knapsack_fields(self) -> None:
        if self.knapsack_preset is not None:
            self._apply_preset(self.knapsack_preset)
        if self.knapsack_mode not in MODES:
            raise ValueError(f"knapsack_mode={self.knapsack_mode!r} is not known; use one of {list(MODES)}.")
        if self.knapsack_prompt_weighting not in PROMPT_WEIGHTINGS:
            raise ValueError(
                f"knapsack_prompt_weighting={self.knapsack_prompt_weighting!r} is not known; use one of "
                f"{list(PROMPT_WEIGHTINGS)}."
            )
        if self.knapsack_history_size < 0:
            raise ValueError(f"knapsack_history_size={self.knapsack_history_size} must be >= 0.")
        if not self.knapsack_prompt_id_column:
            raise ValueError("knapsack_prompt_id_column is empty; name the dataset's prompt id column.")
        if self.knapsack_candidate_factor_defaulted:
            self.knapsack_candidate_factor = self._default_candidate_factor()
        self._check_allocation_settings()

    def _check_allocation_settings(self) -> None:
        """Build the core objects once: their constructors check every value (errors renamed above).
        Schedules without an explicit horizon get max_steps at train time; validate with a stand-in."""
        self._check_candidate_factor()
        allocator_config = self.knapsack_allocator_config(total_steps=self.knapsack_horizon() or 1)
        allocator_config.validate()
        self.knapsack_tracker()
        self.knapsack_value_head_config()
        check_budget(self, allocator_config.budget_schedule().lowest_n_max())
        pilot = self.knapsack_pilot_round()
        if pilot is not None and pilot.second_round_budget == 0:
            warnings.warn(
                f"knapsack_pilot_rollouts={pilot.pilot_rollouts} x {pilot.num_prompts} prompts = generation_batch_size"
                f"={pilot.budget}: the pilot round takes the whole budget, so every prompt gets "
                f"{pilot.pilot_rollouts} rollouts and the knapsack allocates none; lower knapsack_pilot_rollouts"
                + (" or knapsack_candidate_factor." if self.knapsack_candidate_factor > 1 else "."),
                stacklevel=4,
            )

    def _default_candidate_factor(self) -> int:
        """The largest of :data:`DEFAULT_CANDIDATE_FACTORS` these settings accept without an error or a
        warning, else 1 (every prompt gets rollouts, as before candidates)."""
        if self.knapsack_mode != "knapsack" or self.knapsack_solver == "greedy" or self.knapsack_preset:
            return 1
        for factor in DEFAULT_CANDIDATE_FACTORS:
            self.knapsack_candidate_factor = factor
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    self._check_allocation_settings()
            except (ValueError, SettingError, Warning):
                continue
            return factor
        return 1

    def lower_default_candidate_factor(self, dataset_size: int | None) -> str | None:
        """At start-up: a defaulted factor lowered to what ``dataset_size`` prompts (None: a dataset with no
        length) can hold, returning the note to show; None when nothing changes. An explicit factor is
        never lowered (the start-up check refuses it instead)."""
        old = self.knapsack_candidate_factor
        if not self.knapsack_candidate_factor_defaulted or old == 1:
            return None
        size = 0 if dataset_size is None else dataset_size
        self.knapsack_candidate_factor = next(
            (
                c
                for c in DEFAULT_CANDIDATE_FACTORS
                if c <= old and size >= c * self.knapsack_prompts_per_batch
            ),
            1,
        )
        if self.knapsack_candidate_factor == old:
            return None
        why = "has no length" if dataset_size is None else f"has {dataset_size} prompts"
        return (
            f"knapsack_candidate_factor (default) {old} -> {self.knapsack_candidate_factor}: the training "
            f"dataset {why}, too few for {old} x {self.knapsack_prompts_per_batch} candidates per batch."
        )

    def _check_candidate_factor(self) -> None:
        factor = self.knapsack_candidate_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(
                f"knapsack_candidate_factor={factor!r} must be a whole number >= 1 (1 = no candidates; 2 = the "
                "batch holds twice the prompts and the knapsack picks which get rollouts)."
            )
        if factor == 1:
            return
        if self.num_generations % factor or self.num_generations // factor < 1:
            raise ValueError(
                f"knapsack_candidate_factor={factor} must divide num_generations={self.num_generations}: the "
                f"sampler hands each of the c x prompts num_generations / c copies; pick a factor of "
                f"{self.num_generations} or change num_generations."
            )
        if self.knapsack_n_min < 2:
            raise ValueError(
                f"knapsack_candidate_factor={factor} with knapsack_n_min={self.knapsack_n_min}: a chosen prompt "
                "needs a group of at least 2 rollouts to give a gradient; set knapsack_n_min >= 2."
            )
        if self.knapsack_mode == "uniform":
            raise ValueError(
                f"knapsack_candidate_factor={factor} with knapsack_mode='uniform': uniform allocation has nothing "
                f"to choose. Its control is uniform with num_generations={self.num_generations // factor} at the "
                "same generation_batch_size; set knapsack_candidate_factor=1."
            )
        if self.knapsack_preset == "reference":
            raise ValueError(
                f"knapsack_candidate_factor={factor} with knapsack_preset='reference': the paper's rule allocates "
                "within the batch and has no candidates; drop the preset or set knapsack_candidate_factor=1."
            )
        if self.knapsack_token_cost:
            raise ValueError(
                f"knapsack_candidate_factor={factor} with knapsack_token_cost=True: the token cap is the uniform "
                "split's tokens, which choosing prompts changes; turn one of them off."
            )
        if self.knapsack_solver == "greedy":
            warnings.warn(
                f"knapsack_candidate_factor={factor} with knapsack_solver='greedy': a candidate's value is not "
                "concave from 0 rollouts, so greedy is a heuristic here (knapsack/solver_optimal logs 0); "
                "knapsack_solver='cpsat' is exact.",
                stacklevel=3,
            )
        if self.knapsack_value_function == "informative_rollouts":
            warnings.warn(
                f"knapsack_candidate_factor={factor} with knapsack_value_function='informative_rollouts': it piles the "
                "budget onto a few prompts and lost 20 points of held-out accuracy against its control in the "
                "benchmark (docs/benchmark.md); knapsack_value_function='nonzero_gradient' is the measured default.",
                stacklevel=3,
            )
        if self.knapsack_rule == "buckets" and self.num_generations // factor < self.knapsack_n_min:
            raise ValueError(
                f"knapsack_candidate_factor={factor} with knapsack_rule='buckets': unseen candidates get the uniform "
                f"share num_generations / c = {self.num_generations // factor}, below knapsack_n_min="
                f"{self.knapsack_n_min}; lower the factor or knapsack_n_min, or use knapsack_rule='posterior'."
            )

    @property
    def knapsack_prompts_per_batch(self) -> int:
        """P: prompts that get rollouts in a generation batch on average (``generation_batch_size //
        num_generations``)."""
        return self.generation_batch_size // self.num_generations

    @property
    def knapsack_candidates_per_batch(self) -> int:
        """Prompts the knapsack chooses among in a generation batch: ``knapsack_candidate_factor x P``."""
        return self.knapsack_candidate_factor * self.knapsack_prompts_per_batch

    def knapsack_pilot_round(self) -> PilotRound | None:
        """The core :class:`PilotRound` these fields describe (None without a pilot), checked."""
        if self.knapsack_pilot_rollouts == 0:
            return None
        return PilotRound.from_config(
            self.knapsack_allocator_config(total_steps=self.knapsack_horizon() or 1),
            self.knapsack_pilot_rollouts,
            self.knapsack_candidates_per_batch,
            self.generation_batch_size,
            self.world_size,
            allow_skip=self.knapsack_candidate_factor > 1,
        )

    def knapsack_horizon(self, max_steps: int | None = None) -> int | None:
        """The schedules' horizon: ``knapsack_total_steps``, else the run's ``max_steps`` (the trainer's
        state knows it once training starts in epoch-based runs), else unknown."""
        if self.knapsack_total_steps is not None:
            return self.knapsack_total_steps
        steps = max_steps if max_steps else self.max_steps
        return steps if steps and steps > 0 else None

    def _apply_preset(self, name: str) -> None:
        """Fields at their defaults take the preset's values; others must already agree with it."""
        defaults = {f.name: f.default for f in fields(KnapsackConfigMixin)}
        for config_field, value in preset_fields(get_preset(name)).items():
            current = getattr(self, config_field)
            if current == value:
                continue
            if current != defaults[config_field]:
                raise SettingError(
                    f"<preset>={name!r} sets {config_field}={value!r}, but {config_field}={current!r} was "
                    f"given; drop {config_field} or the preset."
                )
            setattr(self, config_field, value)

    def knapsack_allocator_config(self, total_steps: int | None = None) -> AllocatorConfig:
        """The core :class:`AllocatorConfig` these fields describe (``total_steps``: the schedules'
        horizon when ``knapsack_total_steps`` is unset)."""
        values = {f.name: getattr(self, f"knapsack_{f.name}") for f in fields(AllocatorConfig)}
        if values["total_steps"] is None:
            values["total_steps"] = total_steps
        return AllocatorConfig(**values)

    def knapsack_value_head_config(self) -> ValueHeadConfig:
        """The :class:`ValueHeadConfig` these fields describe (validates the estimator fields)."""
        if self.knapsack_value_estimator not in VALUE_ESTIMATORS:
            raise SettingError(
                f"<value_estimator>={self.knapsack_value_estimator!r} is not known; use one of "
                f"{list(VALUE_ESTIMATORS)}."
            )
        return ValueHeadConfig(
            head_type=self.knapsack_value_head_type,
            layer=self.knapsack_value_head_layer,
            lr=self.knapsack_value_head_lr,
            prior_strength=self.knapsack_value_head_prior_strength,
            seed=self.seed,
        )

    def knapsack_tracker(self) -> SuccessRateTracker:
        """A fresh core :class:`SuccessRateTracker` with these settings.

        In `'blend'` mode the head's prediction is the tracker's prior mean, so its pseudo-count is the
        tracker's prior strength.
        """
        values = {arg: getattr(self, name) for arg, name in TRACKER_FIELDS.items()}
        values["prior_strength"] = self.knapsack_value_head_config().tracker_prior_strength(
            self.knapsack_value_estimator, self.knapsack_prior_strength
        )
        return SuccessRateTracker(**values)


def check_budget(args: Any, n_max: int | None = None) -> None:
    """Raise if ``generation_batch_size`` rollouts cannot be split among its prompts within [n_min, n_max].

    With ``P = generation_batch_size // num_generations`` prompts per batch the budget is feasible iff
    ``n_min * P <= generation_batch_size <= n_max * P``, i.e. ``n_min <= num_generations <= n_max``.
    ``n_max``: the lowest value of ``knapsack_n_max`` / ``knapsack_n_max_schedule``.
    """
    prompts = args.knapsack_prompts_per_batch
    n_max = args.knapsack_n_max if n_max is None else int(n_max)
    try:
        check_split(args.generation_batch_size, prompts, args.knapsack_n_min, n_max)
    except SettingError as err:
        raise ValueError(
            f"{field_error(err)} With generation_batch_size // num_generations = {prompts} prompts per batch, "
            f"keep knapsack_n_min <= num_generations={args.num_generations} <= knapsack_n_max (lowest over "
            f"knapsack_n_max_schedule: {n_max})."
        ) from None


@dataclass
class KnapsackGRPOConfig(KnapsackConfigMixin, GRPOConfig):
    """:class:`trl.GRPOConfig` plus the ``knapsack_*`` fields; ``num_generations`` is the average budget."""


@dataclass
class KnapsackRLOOConfig(KnapsackConfigMixin, RLOOConfig):
    """:class:`trl.RLOOConfig` plus the ``knapsack_*`` fields; ``num_generations`` is the average budget."""


def knapsack_fields_markdown() -> str:
    """The ``knapsack_*`` fields of the trainer config as a markdown table, from their ``help`` metadata.

    docs/configuration.md embeds this table; a test checks the two agree, so the reference cannot drift
    from the code.
    """
    import dataclasses

    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(KnapsackGRPOConfig):
        if not f.name.startswith("knapsack_"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kind = kind.replace("|", "\\|")
        text = " ".join(str(f.metadata.get("help", "")).split()).replace("|", "\\|")
        choices = f.metadata.get("choices")
        if choices:
            text += " Choices: " + ", ".join(f"`{c}`" for c in choices) + "."
        lines.append(f"| `{f.name}` | `{kind}` | `{default!r}` | {text} |")
    return "\n".join(lines)

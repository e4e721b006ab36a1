"""The registry of named runs (arms) every experiment compares: one :class:`Arm` per name.

An arm is what a run sets on top of a recipe or the demo's settings: ``knapsack_*`` fields, and for the
uniform group-size arms a smaller ``num_generations`` on proportionally more prompts (the same rollout
budget per step). ``compare``, ``demo``, the report and the plots all read this one table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Arm:
    """A named run: its label and colour in reports, and the config fields it sets.

    ``group_divisor`` d: the arm runs ``num_generations // d`` rollouts per prompt on d times the prompts,
    the same ``generation_batch_size`` (uniform at a smaller group size). ``control``: the arm this one is
    judged against at the same budget. ``oracle``: allocates with the true success rates (the harness
    swaps in the oracle allocator).
    """

    name: str
    label: str
    color: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    group_divisor: int = 1
    control: str = "uniform"
    oracle: bool = False

    def config_fields(self, num_generations: int) -> dict[str, Any]:
        """The fields this arm sets on a run whose recipe has ``num_generations`` rollouts per prompt."""
        # An arm that names no candidate factor runs without candidates: the config's default (4, issue 22's
        # verdict) would otherwise turn every within-batch arm into a candidate arm.
        out = {"knapsack_candidate_factor": 1, **self.fields}
        if self.group_divisor != 1:
            if num_generations % self.group_divisor or num_generations // self.group_divisor < 2:
                raise ValueError(
                    f"arm {self.name!r} runs num_generations / {self.group_divisor}, but num_generations="
                    f"{num_generations} does not split into groups of at least 2; pick another arm or a "
                    f"num_generations divisible by {2 * self.group_divisor}."
                )
            out["num_generations"] = num_generations // self.group_divisor
        return out


def _arms(*arms: Arm) -> Mapping[str, Arm]:
    return MappingProxyType({a.name: a for a in arms})


# The uniform baseline runs the knapsack trainer's uniform mode: equal to stock TRL to the last bit
# (tests/test_trainer_grpo.py), and measured through the same listener as every other arm.
_UNIFORM = {"knapsack_enabled": True, "knapsack_mode": "uniform"}
ARMS: Mapping[str, Arm] = _arms(
    Arm("uniform", "uniform GRPO", "#4c72b0", _UNIFORM, control="uniform"),
    Arm("knapsack", "knapsack GRPO", "#dd8452", {"knapsack_enabled": True}),
    # The default posterior rule with the paper's objective p(1-p)^2 x P(mixed) instead of counting prompts.
    Arm(
        "paper_value",
        "knapsack, paper's objective",
        "#937860",
        {"knapsack_enabled": True, "knapsack_value_function": "knapsack"},
    ),
    Arm(
        "reference",
        "knapsack, reference preset",
        "#8172b3",
        {"knapsack_enabled": True, "knapsack_preset": "reference"},
    ),
    # Four rollouts per prompt first (the simulator's best k at 8 per prompt: docs/method.md), the rest
    # of the batch on what they showed.
    Arm(
        "pilot", "knapsack, pilot round", "#c44e52", {"knapsack_enabled": True, "knapsack_pilot_rollouts": 4}
    ),
    Arm(
        "value_head",
        "knapsack, value head (blend)",
        "#da8bc3",
        {"knapsack_enabled": True, "knapsack_value_estimator": "blend"},
    ),
    Arm("oracle", "knapsack, oracle p", "#55a868", {"knapsack_enabled": True}, oracle=True),
    # Choosing prompts: c x the prompts in the same rows, the knapsack decides which get rollouts; each is
    # judged against its control, stock uniform over c x the prompts with num_generations / c each. CP-SAT:
    # a prompt's value is not concave from 0, so greedy is no longer exact.
    Arm(
        "candidates2",
        "knapsack, 2x candidates",
        "#e6a117",
        {"knapsack_enabled": True, "knapsack_solver": "cpsat", "knapsack_candidate_factor": 2},
        control="uniform_half",
    ),
    Arm(
        "candidates4",
        "knapsack, 4x candidates",
        "#b5651d",
        {"knapsack_enabled": True, "knapsack_solver": "cpsat", "knapsack_candidate_factor": 4},
        control="uniform_quarter",
    ),
    Arm(
        "candidates2_head",
        "knapsack, 2x candidates, value head",
        "#cc79a7",
        {
            "knapsack_enabled": True,
            "knapsack_solver": "cpsat",
            "knapsack_candidate_factor": 2,
            "knapsack_value_estimator": "blend",
        },
        control="uniform_half",
    ),
    # A pilot of 2 over every candidate (half the budget at c = 2), the rest committed on what it showed.
    Arm(
        "pilot_candidates2",
        "knapsack, pilot over 2x candidates",
        "#a02c2c",
        {
            "knapsack_enabled": True,
            "knapsack_solver": "cpsat",
            "knapsack_candidate_factor": 2,
            "knapsack_pilot_rollouts": 2,
        },
        control="uniform_half",
    ),
    Arm(
        "candidates2_rollouts",
        "knapsack, 2x candidates, informative rollouts",
        "#6b8e23",
        {
            "knapsack_enabled": True,
            "knapsack_solver": "cpsat",
            "knapsack_candidate_factor": 2,
            "knapsack_value_function": "informative_rollouts",
        },
        control="uniform_half",
    ),
    # Stock uniform at a smaller group on more prompts, the same budget: the baselines candidates must beat.
    Arm("uniform_half", "uniform GRPO, half the group", "#64b5cd", _UNIFORM, group_divisor=2),
    Arm("uniform_quarter", "uniform GRPO, a quarter of the group", "#8c8c8c", _UNIFORM, group_divisor=4),
)
METHOD_ORDER = tuple(ARMS)
# The arm KnapsackGRPOConfig's defaults run (knapsack_candidate_factor 4 with CP-SAT, where num_generations
# allows it): the best arm of the pre-registered levels comparison (docs/benchmark.md). The demo's second arm.
DEFAULT_ARM = "candidates4"


def default_methods(oracle: bool) -> tuple[str, ...]:
    """What an experiment command runs without ``--methods``: uniform against the library's default (and
    the oracle with ``--oracle``)."""
    return ("uniform", DEFAULT_ARM, "oracle") if oracle else ("uniform", DEFAULT_ARM)


def parse_methods(text: str | None, default: Sequence[str], command: str) -> tuple[str, ...]:
    """``--methods`` of an experiment command: comma-separated, ``uniform`` plus any other known arm;
    ``default`` when unset. A SystemExit naming the choices otherwise."""
    if not text:
        return tuple(default)
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in ARMS]
    if unknown or "uniform" not in chosen:
        raise SystemExit(
            f"knapsack-trl {command}: --methods takes uniform plus any of {', '.join(METHOD_ORDER[1:])} "
            f"(got {text!r})."
        )
    return chosen


def label(name: str) -> str:
    """The arm's label in reports (the name itself for an arm this registry does not know)."""
    arm = ARMS.get(name)
    return name if arm is None else arm.label


def color(name: str) -> str | None:
    """The arm's colour in plots (None: matplotlib's next)."""
    arm = ARMS.get(name)
    return None if arm is None else arm.color


def methods_in(runs: Sequence[Any]) -> list[str]:
    """The arms present in ``runs`` (records with a ``method``), in the registry's order."""
    present = {r.method for r in runs}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))

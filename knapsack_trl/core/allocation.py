"""One generation batch's allocation, with what it was based on: the record every layer reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from knapsack_trl.core.solvers import SolverResult

BUCKETS = ("unseen", "zero", "one", "mixed")
# What a skipped prompt's last estimate was, per bucket: the metric names of ``Allocation.metrics``.
SKIPPED_SHARES = {
    "one": "skipped_solved_share",
    "zero": "skipped_hopeless_share",
    "unseen": "skipped_unknown_share",
    "mixed": "skipped_mixed_share",
}


@dataclass(frozen=True, eq=False)
class Allocation:
    """Rollouts per prompt for one generation batch, with what the decision was based on.

    ``expected_informative`` / ``uniform_expected_informative``: expected number of prompts whose
    group has mixed outcomes under this allocation / the uniform split, from the same posterior
    (population prior plus each prompt's history), whichever rule decided.
    ``expected_informative_rollouts`` / ``uniform_expected_informative_rollouts``: the same for rollouts,
    ``sum_i n_i P(mixed | n_i)``, the rollouts that get a non-zero advantage. With ``allow_skip`` the
    prompts are candidates and the uniform split is over all of them: the control that choosing prompts
    is measured against.
    """

    rollouts_per_prompt: np.ndarray
    success_rate: np.ndarray
    bucket: np.ndarray
    expected_value: float
    uniform_expected_value: float
    expected_informative: float
    uniform_expected_informative: float
    solver_result: SolverResult | None
    n_max: int = 0
    exploration_share: float = 0.0
    fallback_rollouts: int = 0
    expected_informative_rollouts: float = 0.0
    uniform_expected_informative_rollouts: float = 0.0
    allow_skip: bool = False
    history_half_life: float | None = None

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging (no prefix).

        With ``allow_skip`` also the candidates: ``prompts_considered``, ``prompts_rolled_out``,
        ``prompts_skipped``, and the share of the skipped prompts by their last estimate (``skipped_*_share``:
        solved, hopeless, unknown, mixed; NaN when none was skipped). Absent otherwise.
        ``history_half_life``: the half-life in force (inf: history not weighed by age), absent when off.
        """
        n = self.rollouts_per_prompt
        out = decision_metrics(self, n)
        out["fallback_rollouts"] = float(self.fallback_rollouts)
        out["exploration_share"] = float(self.exploration_share)
        for name in BUCKETS:
            out[f"prompts_{name}"] = float(np.count_nonzero(self.bucket == name))
        if self.allow_skip:
            out.update(candidate_metrics(n, self.bucket))
        if self.history_half_life is not None:
            out["history_half_life"] = float(self.history_half_life)
        return out


def decision_metrics(decision: Any, rollouts: np.ndarray) -> dict[str, float]:
    """The metrics an allocation and a pilot round's decision share, under the same names: group sizes, the
    expectations against the uniform split, the solver's time and proof, ``n_max``."""
    res: SolverResult | None = decision.solver_result
    return {
        "rollouts_min": float(rollouts.min()),
        "rollouts_mean": float(rollouts.mean()),
        "rollouts_max": float(rollouts.max()),
        "informative_prompts_expected": float(decision.expected_informative),
        "informative_prompts_uniform_expected": float(decision.uniform_expected_informative),
        "informative_rollouts_expected": float(decision.expected_informative_rollouts),
        "informative_rollouts_uniform_expected": float(decision.uniform_expected_informative_rollouts),
        "expected_value": float(decision.expected_value),
        "uniform_expected_value": float(decision.uniform_expected_value),
        "solver_seconds": 0.0 if res is None else float(res.seconds),
        "solver_optimal": 1.0 if res is None else float(bool(res.optimal)),
        "n_max": float(decision.n_max),
    }


def candidate_metrics(rollouts: np.ndarray, bucket: np.ndarray) -> dict[str, float]:
    """Prompts considered, rolled out and skipped, and the skipped ones' shares by last estimate."""
    skipped = rollouts == 0
    count = int(np.count_nonzero(skipped))
    out = {
        "prompts_considered": float(rollouts.size),
        "prompts_rolled_out": float(rollouts.size - count),
        "prompts_skipped": float(count),
    }
    for name, metric in SKIPPED_SHARES.items():
        out[metric] = float(np.count_nonzero(skipped & (bucket == name))) / count if count else float("nan")
    return out

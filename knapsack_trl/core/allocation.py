"""One generation batch's allocation, with what it was based on: the record every layer reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from knapsack_trl.core.solvers import SolverResult

BUCKETS = ("unseen", "zero", "one", "mixed")


@dataclass(frozen=True, eq=False)
class Allocation:
    """Rollouts per prompt for one generation batch, with what the decision was based on.

    ``expected_informative`` / ``uniform_expected_informative``: expected number of prompts whose
    group has mixed outcomes under this allocation / the uniform split, from the same posterior
    (population prior plus each prompt's history), whichever rule decided.
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

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging (no prefix)."""
        n = self.rollouts_per_prompt
        res = self.solver_result
        out = {
            "rollouts_min": float(n.min()),
            "rollouts_mean": float(n.mean()),
            "rollouts_max": float(n.max()),
            "informative_prompts_expected": float(self.expected_informative),
            "informative_prompts_uniform_expected": float(self.uniform_expected_informative),
            "expected_value": float(self.expected_value),
            "uniform_expected_value": float(self.uniform_expected_value),
            "fallback_rollouts": float(self.fallback_rollouts),
            "solver_seconds": 0.0 if res is None else float(res.seconds),
            "solver_optimal": 1.0 if res is None else float(bool(res.optimal)),
            "n_max": float(self.n_max),
            "exploration_share": float(self.exploration_share),
        }
        for name in BUCKETS:
            out[f"prompts_{name}"] = float(np.count_nonzero(self.bucket == name))
        return out

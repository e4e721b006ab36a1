"""Time the three knapsack solvers on batches shaped like real training batches.

``python -m knapsack_trl.benchmarks.solvers`` prints a table; ``--json`` prints one JSON object
``{"results": [...]}`` with one row per (solver, prompts, budget, n_min). The gap is measured
against the exact DP's objective.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence

import numpy as np

from knapsack_trl.core.solvers import SOLVERS, solve
from knapsack_trl.core.values import knapsack_value, value_table

N_MAX = 128
BUDGETS_PER_PROMPT = (8, 16)
N_MINS = (0, 2)


def batch_success_rates(prompts: int, rng: np.random.Generator) -> np.ndarray:
    """Success rates like a real batch: 15% exactly 0, 10% exactly 1, the rest Beta(0.8, 0.8)."""
    p = rng.beta(0.8, 0.8, size=prompts)
    kind = rng.random(prompts)
    p[kind < 0.15] = 0.0
    p[(kind >= 0.15) & (kind < 0.25)] = 1.0
    return p


def run(prompt_counts: Sequence[int], repeats: int, seed: int) -> list[dict]:
    """One row per (solver, prompts, budget, n_min); seconds is the median over ``repeats``."""
    rows = []
    for prompts in prompt_counts:
        table = value_table(knapsack_value, batch_success_rates(prompts, np.random.default_rng(seed)), N_MAX)
        for per_prompt in BUDGETS_PER_PROMPT:
            for n_min in N_MINS:
                budget = per_prompt * prompts
                results = {
                    name: [solve(table, budget, n_min, N_MAX, solver=name) for _ in range(repeats)]
                    for name in SOLVERS
                }
                best = max(r.objective for r in results["dp"])
                for name in SOLVERS:
                    objective = min(r.objective for r in results[name])
                    rows.append(
                        {
                            "solver": name,
                            "prompts": prompts,
                            "budget": budget,
                            "n_min": n_min,
                            "n_max": N_MAX,
                            "seconds": statistics.median(r.seconds for r in results[name]),
                            "objective": objective,
                            "optimality_gap": (best - objective) / abs(best) if best else best - objective,
                            "optimal": all(r.optimal for r in results[name]),
                        }
                    )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'solver':<7} {'prompts':>7} {'budget':>7} {'n_min':>5} {'n_max':>5} "
        f"{'seconds':>9} {'objective':>12} {'gap':>9} proven"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['solver']:<7} {r['prompts']:>7} {r['budget']:>7} {r['n_min']:>5} {r['n_max']:>5} "
            f"{r['seconds']:>9.4f} {r['objective']:>12.6f} {r['optimality_gap']:>9.1e} {r['optimal']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[64, 256, 1024], help="batch sizes")
    parser.add_argument("--seed", type=int, default=0, help="seed for the success rates")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    rows = run(args.prompts, args.repeats, args.seed)
    if args.json:
        json.dump({"results": rows}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))


if __name__ == "__main__":
    main()

"""Time the three knapsack solvers on batches shaped like real training batches.

``python -m knapsack_trl.benchmarks.solvers`` prints a table; ``--json`` prints one JSON object
``{"results": [...]}`` with one row per (solver, prompts, budget, n_min). The gap is measured
against the exact DP's objective.

``--candidates`` times instead the choice of prompts from a candidate pool (issue 21): 512 candidates
(``--pool``), 2,048 rollouts, each candidate 0 or 2..128 rollouts, on the posterior rule's own tables (the
``nonzero_gradient`` value's expectation under each candidate's posterior: a population prior fitted
to the pool's histories, times each candidate's past visits), for three mixes (:func:`candidate_table`)
and several seeds. ``--simulated-run STEPS`` times the allocator's own calls over a simulated run instead:
``--pool`` candidates a step drawn from 2,000 prompts (a pass every two steps), rewards drawn from each
prompt's success rate and fed back, so ages and histories are a run's. Run it on one core
(``OMP_NUM_THREADS=1``; CP-SAT uses one worker).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

from knapsack_trl.core.posterior import PopulationPrior
from knapsack_trl.core.solvers import SOLVERS, solve
from knapsack_trl.core.values import knapsack_value, nonzero_gradient_probability, value_table

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


CANDIDATE_MIXES = ("paper", "real", "training")


def candidate_table(mix: str, prompts: int, rng: np.random.Generator) -> np.ndarray:
    """The posterior rule's table for a candidate pool: ``paper`` (30% p = 0, 20% p = 1, the rest
    U(0.05, 0.95)) or ``real`` (40% p = 0, the rest Beta(1, 8)), each candidate seen 0-3 times before with
    4-8 rollouts a visit; or ``training``, the success rates of ``real`` as a pool meets them early in a run:
    60% never seen, the rest seen once with a whole group of 2, 4 or 8 (many candidates share a history)."""
    kind = rng.random(prompts)
    if mix == "paper":
        p = np.where(kind < 0.3, 0.0, np.where(kind < 0.5, 1.0, rng.uniform(0.05, 0.95, prompts)))
    else:
        p = np.where(kind < 0.4, 0.0, rng.beta(1.0, 8.0, prompts))
    if mix == "training":
        trials = np.where(rng.random(prompts) < 0.6, 0, rng.choice([2, 4, 8], prompts))
    else:
        visits = rng.integers(0, 4, prompts)
        trials = np.array([rng.integers(4, 9, v).sum() for v in visits])
    successes = rng.binomial(trials, p)
    prior = PopulationPrior.fit(successes, trials)
    return prior.posterior(successes, trials).value_table(nonzero_gradient_probability, N_MAX)


def run_candidates(prompts: int, budget: int, repeats: int, seeds: int) -> list[dict]:
    """One row per (solver, mix): median and worst seconds of the whole call (validation included) over
    seeds x repeats, and the worst gap to the DP's objective."""
    rows = []
    for mix in CANDIDATE_MIXES:
        times: dict[str, list[float]] = {name: [] for name in SOLVERS}
        gaps: dict[str, list[float]] = {name: [] for name in SOLVERS}
        proven: dict[str, bool] = {name: True for name in SOLVERS}
        for seed in range(seeds):
            table = candidate_table(mix, prompts, np.random.default_rng(seed))
            results: dict[str, list] = {name: [] for name in SOLVERS}
            for name in SOLVERS:
                for _ in range(repeats):
                    start = time.perf_counter()  # the whole call: the budget's check included
                    results[name].append(solve(table, budget, 2, N_MAX, solver=name, skippable=True))
                    times[name].append(time.perf_counter() - start)
            best = results["dp"][0].objective
            for name in SOLVERS:
                gaps[name].append((best - min(r.objective for r in results[name])) / abs(best))
                proven[name] &= all(r.optimal for r in results[name])
        for name in SOLVERS:
            rows.append(
                {
                    "solver": name,
                    "mix": mix,
                    "prompts": prompts,
                    "budget": budget,
                    "n_min": 2,
                    "n_max": N_MAX,
                    "median_seconds": statistics.median(times[name]),
                    "max_seconds": max(times[name]),
                    "worst_gap": max(gaps[name]),
                    "optimal": proven[name],
                }
            )
    return rows


def run_simulated(steps: int, candidates: int, budget: int, prompts: int = 2000, seed: int = 0) -> list[dict]:
    """One row per step of a simulated run with the default allocator (CP-SAT, ``n_min`` 2, ``n_max``
    128): the ``allocate`` call's seconds, whether CP-SAT proved its allocation optimal, prompts chosen."""
    from knapsack_trl.core.allocator import KnapsackRolloutAllocator
    from knapsack_trl.core.config import AllocatorConfig

    rng = np.random.default_rng(seed)
    rates = np.where(rng.random(prompts) < 0.4, 0.0, rng.beta(1.0, 3.0, prompts))
    allocator = KnapsackRolloutAllocator(AllocatorConfig(n_min=2, n_max=N_MAX))
    order, at, rows = rng.permutation(prompts), 0, []
    for step in range(steps):
        if at + candidates > prompts:  # a new pass over the prompts
            order, at = rng.permutation(prompts), 0
        drawn, at = order[at : at + candidates], at + candidates
        ids = [f"p{i}" for i in drawn]
        start = time.perf_counter()
        allocation = allocator.allocate(ids, budget, step=step, allow_skip=True)
        seconds = time.perf_counter() - start
        n = allocation.rollouts_per_prompt
        rewards = [float(rng.random() < rates[i]) for i, k in zip(drawn, n.tolist()) for _ in range(k)]
        allocator.observe([p for p, k in zip(ids, n.tolist()) for _ in range(k)], rewards, step=step)
        result = allocation.solver_result
        rows.append(
            {"step": step, "seconds": seconds, "optimal": bool(result.optimal), "chosen": int((n > 0).sum())}
        )
    return rows


def format_simulated(rows: list[dict]) -> str:
    seconds = [r["seconds"] for r in rows]
    proven = sum(r["optimal"] for r in rows)
    return (
        f"{len(rows)} steps: allocate median {statistics.median(seconds):.3f} s, worst {max(seconds):.3f} s; "
        f"proven optimal on {proven} of {len(rows)}"
    )


def format_candidates(rows: list[dict]) -> str:
    header = f"{'solver':<7} {'mix':<8} {'prompts':>7} {'budget':>7} {'median s':>9} {'worst s':>9} {'gap':>9} proven"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['solver']:<7} {r['mix']:<8} {r['prompts']:>7} {r['budget']:>7} {r['median_seconds']:>9.4f} "
            f"{r['max_seconds']:>9.4f} {r['worst_gap']:>9.1e} {r['optimal']}"
        )
    return "\n".join(lines)


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
    parser.add_argument(
        "--candidates",
        action="store_true",
        help="time the choice of prompts from a candidate pool instead (--pool candidates, 2,048 rollouts)",
    )
    parser.add_argument("--pool", type=int, default=512, help="with --candidates: candidates per table")
    parser.add_argument("--seeds", type=int, default=5, help="with --candidates: tables per mix")
    parser.add_argument(
        "--simulated-run",
        type=int,
        default=0,
        metavar="STEPS",
        help="time the allocator over a simulated run",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.seeds < 1:
        parser.error("--repeats and --seeds must be >= 1")
    if args.simulated_run:
        rows = run_simulated(args.simulated_run, args.pool, 2048, seed=args.seed)
        text = format_simulated(rows)
    elif args.candidates:
        rows = run_candidates(args.pool, 2048, args.repeats, args.seeds)
        text = format_candidates(rows)
    else:
        rows = run(args.prompts, args.repeats, args.seed)
        text = format_table(rows)
    if args.json:
        json.dump({"results": rows}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(text)


if __name__ == "__main__":
    main()

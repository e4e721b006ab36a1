"""The allocation simulator: expected informative prompts per step, for every rule, against uniform.

No model is trained. A recurring pool of prompts has true success rates that drift between steps (a
mean-reverting random walk on the logit); each step a dataloader-style epoch order hands ``P``
prompts to every arm, the arm's allocator splits ``B = P x n`` rollouts among them from its own
history, binary outcomes are drawn (the same random numbers for every arm) and fed back to that arm's
tracker. The score of a step is the number of prompts whose group has mixed outcomes, in expectation
under the true rates: ``sum_i 1 - p_i^n_i - (1 - p_i)^n_i`` (these are the prompts that give a
gradient). Each arm's score is reported relative to uniform's over the same steps, with a 95% interval
over seeds; the count oracle allocates with the true rates and the ``nonzero_gradient`` value (the best
any single-round allocation can do in expectation). This is how the library's defaults are chosen.

The two-phase arms (``pilot_k1``, ``pilot_k2``, ``pilot_k4``: :mod:`knapsack_trl.core.pilot` on the
default settings; ``pilot_k2_reference`` on the reference preset, run by name only; the two-phase oracles
``pilot_oracle_k1/k2/k4``, the same knapsack at the true rates) give every prompt ``k`` rollouts
first (the draws ``draws[t, i, :k]``), then the rest by the knapsack on what those showed (the draws
that follow); the tracker observes both rounds at the end of the step. Such a step is scored by the
expected count given the realised pilot (1 for a mixed pilot, else ``1 - (1-p)^m`` after an all-fail
pilot and ``1 - p^m`` after an all-success one, at the true ``p``): unbiased for the realised count and
less noisy. Reacting to the pilot, they can beat the count oracle; given the same pilot, no two-phase
rule with that ``k`` can beat its two-phase oracle.

``python -m knapsack_trl.benchmarks.allocation`` prints the table (up to about 18 minutes on 2 busy cores, a third of it the two-phase arms);
``--json`` prints one JSON object instead. The solver is ``greedy``, exact here (``n_min >= 1`` and
concave values), to keep the runs fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knapsack_trl.core.allocator import AllocatorConfig, KnapsackRolloutAllocator
from knapsack_trl.core.budget import uniform_allocation
from knapsack_trl.core.pilot import allocate_second_round, final_mixed_probability
from knapsack_trl.core.presets import PRESETS
from knapsack_trl.core.solvers import solve
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.core.values import nonzero_gradient_probability

N_MIN, N_MAX = 2, 128
# Drift of the true rates: logit(p_t+1) = logit(p_0) + RHO (logit(p_t) - logit(p_0)) + sigma * N(0, 1),
# per step (at sigma 0.15 about 0.26 on the logit between visits, 0.75 in the long run); exact 0 and 1
# stay where they are.
RHO, SIGMA = 0.98, 0.15


@dataclass(frozen=True)
class Mix:
    """A difficulty mix and the run's shape: pool = ``revisit`` x ``prompts`` prompts, each back
    once every ``revisit`` steps (one epoch)."""

    description: str
    sample: Callable[[np.random.Generator, int], np.ndarray]
    prompts: int = 64
    rollouts: int = 8
    revisit: int = 3
    steps: int = 150


def _shares(
    rng: np.random.Generator, size: int, parts: Sequence[tuple[float, Callable[..., Any]]]
) -> np.ndarray:
    """Concatenate ``share x size`` draws from each part (the last takes the rounding), shuffled."""
    counts = [round(share * size) for share, _ in parts[:-1]]
    counts.append(size - sum(counts))
    p = np.concatenate([draw(rng, c) for c, (_, draw) in zip(counts, parts)])
    return rng.permutation(p)


def _uniform(lo: float, hi: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, c: rng.uniform(lo, hi, c)


def _beta(mean: float, concentration: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, c: rng.beta(mean * concentration, (1 - mean) * concentration, c)


def _constant(value: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, c: np.full(c, value)


MIXES: dict[str, Mix] = {
    "demo": Mix(
        "the demo's three levels: easy p~0.43, medium p~0.23, hard p~0.01 (a third at about 0)",
        lambda rng, size: _shares(
            rng, size, [(1 / 3, _beta(0.43, 6)), (1 / 3, _beta(0.23, 6)), (1 / 3, _beta(0.01, 30))]
        ),
        prompts=32,
        revisit=12,
        steps=200,
    ),
    "paper": Mix(
        "paper-like: 30% never solved (p=0), 20% always (p=1), 10% p in 0.01-0.1, 10% in 0.9-0.99, 30% uniform",
        lambda rng, size: _shares(
            rng,
            size,
            [
                (0.3, _constant(0.0)),
                (0.2, _constant(1.0)),
                (0.1, _uniform(0.01, 0.1)),
                (0.1, _uniform(0.9, 0.99)),
                (0.3, _uniform(0.0, 1.0)),
            ],
        ),
    ),
    "solved_hard": Mix(
        "solved + hard-but-solvable: half p in 0.97-1, half p in 0.03-0.15",
        lambda rng, size: _shares(rng, size, [(0.5, _uniform(0.97, 1.0)), (0.5, _uniform(0.03, 0.15))]),
    ),
    "hard": Mix(
        "cold start: 40% p=0, 40% p in 0.01-0.1, 20% p in 0.1-0.6",
        lambda rng, size: _shares(
            rng, size, [(0.4, _constant(0.0)), (0.4, _uniform(0.01, 0.1)), (0.2, _uniform(0.1, 0.6))]
        ),
    ),
    "beta": Mix("a Beta(0.5, 0.5) continuum", lambda rng, size: rng.beta(0.5, 0.5, size)),
}


def _config(**overrides: Any) -> AllocatorConfig:
    return AllocatorConfig(n_min=N_MIN, n_max=N_MAX, solver="greedy", **overrides)


@dataclass(frozen=True)
class Arm:
    """An allocation rule under test: allocator settings, tracker settings, the pilot round's
    rollouts per prompt (0: one round), and ``known``: allocate at the true rates (an oracle)."""

    description: str
    config: dict[str, Any] = field(default_factory=dict)
    tracker: dict[str, Any] = field(default_factory=dict)
    pilot: int = 0
    known: bool = False


_WINDOW16 = {"window": 16}
ARMS: dict[str, Arm] = {
    "default": Arm("the library's defaults: AllocatorConfig(), SuccessRateTracker()"),
    "reference": Arm(
        "the reference (preset): buckets, paper value, fallback, history from 8 outcomes, last-visit estimate",
        PRESETS["reference"].allocator,
        PRESETS["reference"].tracker,
    ),
    "v0.1": Arm(
        "the 0.1 default: buckets, paper value, no fallback, last 16 outcomes, Beta(1, 1) prior",
        {"rule": "buckets", "value_function": "knapsack", "fallback": False},
        _WINDOW16,
    ),
    "buckets_paper_fallback": Arm(
        "buckets, paper value, fallback", {"rule": "buckets", "value_function": "knapsack", "fallback": True}
    ),
    "buckets_count": Arm(
        "buckets, P(mixed) value, no fallback",
        {"rule": "buckets", "value_function": "nonzero_gradient", "fallback": False},
    ),
    "buckets_count_fallback": Arm(
        "buckets, P(mixed) value, fallback",
        {"rule": "buckets", "value_function": "nonzero_gradient", "fallback": True},
    ),
    "posterior_paper": Arm("posterior, paper value", {"rule": "posterior", "value_function": "knapsack"}),
    "posterior_count": Arm(
        "posterior, P(mixed) value", {"rule": "posterior", "value_function": "nonzero_gradient"}
    ),
    "posterior_count_window16": Arm(
        "posterior, P(mixed) value, last 16 outcomes",
        {"rule": "posterior", "value_function": "nonzero_gradient"},
        _WINDOW16,
    ),
    "posterior_count_min8": Arm(
        "posterior, P(mixed) value, history from 8 outcomes",
        {"rule": "posterior", "value_function": "nonzero_gradient", "min_observations": 8},
    ),
}
# Two rounds per step; apart from ARMS because they can beat the (single-round) count oracle.
PILOT_ARMS: dict[str, Arm] = {
    **{
        f"pilot_k{k}": Arm(
            f"the defaults with a pilot of {k} rollouts per prompt, then the knapsack", pilot=k
        )
        for k in (1, 2, 4)
    },
    "pilot_k2_reference": Arm(
        "the reference preset's history and value with a pilot of 2, then the knapsack on the posterior",
        PRESETS["reference"].allocator,
        PRESETS["reference"].tracker,
        pilot=2,
    ),
    **{
        f"pilot_oracle_k{k}": Arm(
            f"two-phase oracle: a pilot of {k}, then the knapsack on P(mixed | pilot) at the true rates",
            pilot=k,
            known=True,
        )
        for k in (1, 2, 4)
    },
}
# Run by name only (``--arms ...,pilot_k2_reference``), to keep the default run short.
OPT_IN = ("pilot_k2_reference",)
BASELINES = ("uniform", "oracle")


def _arm(name: str) -> Arm:
    return ARMS[name] if name in ARMS else PILOT_ARMS[name]


def _drift(p0: np.ndarray, steps: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """True rates per step, (steps, pool)."""
    inner = (p0 > 0) & (p0 < 1)
    x0 = np.log(np.clip(p0, 1e-12, 1 - 1e-12) / np.clip(1 - p0, 1e-12, 1))
    x = x0.copy()
    out = np.empty((steps, p0.size))
    for t in range(steps):
        out[t] = np.where(inner, 1 / (1 + np.exp(-x)), p0)
        x = x0 + RHO * (x - x0) + sigma * rng.standard_normal(p0.size)
    return out


def _order(pool: int, prompts: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Prompt indices per step, (steps, prompts): shuffled epochs, like TRL's sampler."""
    epochs = math.ceil(steps * prompts / pool) + 1
    flat = np.concatenate([rng.permutation(pool) for _ in range(epochs)])
    return flat[: steps * prompts].reshape(steps, prompts)


def _known_second_round(pilot: np.ndarray, k: int, p: np.ndarray, rest: int) -> np.ndarray:
    """The two-phase oracle's second round: the knapsack on P(mixed | pilot) at the true rates (rows
    concave from 0 extra rollouts, so greedy is exact)."""
    extra = np.arange(N_MAX - k + 1)
    table = final_mixed_probability(pilot[:, None], (k - pilot)[:, None], extra[None, :], p[:, None])
    result = solve(table, rest, max(0, N_MIN - k), N_MAX - k, solver="greedy")
    return np.asarray(result.rollouts, dtype=np.int64)


def simulate(
    mix_name: str, seed: int, arms: Sequence[str], sigma: float = SIGMA
) -> dict[str, dict[str, float]]:
    """One seed of one mix: per arm, mean expected informative prompts per step, and the rest."""
    mix = MIXES[mix_name]
    rng = np.random.default_rng([seed, sorted(MIXES).index(mix_name)])
    pool = mix.revisit * mix.prompts
    budget = mix.prompts * mix.rollouts
    rates = _drift(mix.sample(rng, pool), mix.steps, sigma, rng)
    order = _order(pool, mix.prompts, mix.steps, rng)
    draws = rng.random((mix.steps, mix.prompts, N_MAX))
    ids = [f"q{i}" for i in range(pool)]
    oracle = KnapsackRolloutAllocator(_config(value_function="nonzero_gradient"))
    allocators = {
        name: KnapsackRolloutAllocator(_config(**_arm(name).config), SuccessRateTracker(**_arm(name).tracker))
        for name in arms
        if not _arm(name).known
    }
    totals: dict[str, dict[str, float]] = {
        name: {"informative": 0.0, "realised": 0.0, "rollouts_mixed": 0.0, "seconds": 0.0}
        for name in [*BASELINES, *arms]
    }
    for t in range(mix.steps):
        batch = order[t]
        p = rates[t, batch]
        batch_ids = [ids[i] for i in batch]
        wins = draws[t] < p[:, None]
        decided = {
            "uniform": uniform_allocation(budget, mix.prompts),
            "oracle": oracle.allocate_known(p, budget).rollouts_per_prompt,
        }
        scores = {}
        for name in arms:
            arm = _arm(name)
            k = arm.pilot
            start = time.perf_counter()
            if k:
                pilot = wins[:, :k].sum(axis=1)
                rest = budget - k * mix.prompts
                if arm.known:
                    extra = _known_second_round(pilot, k, p, rest)
                else:
                    extra = allocate_second_round(
                        allocators[name], batch_ids, pilot, k, rest, step=t
                    ).extra_rollouts
                decided[name] = k + extra
                scores[name] = final_mixed_probability(pilot, k - pilot, extra, p)
            else:
                decided[name] = allocators[name].allocate(batch_ids, budget, step=t).rollouts_per_prompt
            totals[name]["seconds"] += time.perf_counter() - start
        for name, n in decided.items():
            used = np.arange(N_MAX)[None, :] < n[:, None]
            s = (wins & used).sum(axis=1)
            mixed = (s > 0) & (s < n)
            row = totals[name]
            score = scores[name] if name in scores else nonzero_gradient_probability(n, p)
            row["informative"] += float(score.sum())
            row["realised"] += float(mixed.sum())
            row["rollouts_mixed"] += float(n[mixed].sum())
            if name in allocators:
                rewards = np.repeat(np.arange(mix.prompts), n)
                outcome = wins[rewards, np.concatenate([np.arange(k) for k in n])]
                allocators[name].observe([batch_ids[i] for i in rewards], outcome.astype(float), step=t)
    return {
        name: {
            "informative_per_step": row["informative"] / mix.steps,
            "realised_per_step": row["realised"] / mix.steps,
            "rollout_ratio": row["rollouts_mixed"] / (budget * mix.steps),
            "ms_per_step": 1000 * row["seconds"] / mix.steps,
        }
        for name, row in totals.items()
    }


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a 95% t-interval over seeds."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()), math.nan, math.nan
    t95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(x.size, 2.0)
    half = t95 * float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def run(
    mixes: Sequence[str], arms: Sequence[str], seeds: int, workers: int, sigma: float = SIGMA
) -> dict[str, Any]:
    """Every (mix, seed) in a process pool; per mix and arm the ratio to uniform with its interval."""
    jobs = [(mix, seed) for mix in mixes for seed in range(seeds)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        outputs = list(pool.map(simulate, *zip(*jobs), [list(arms)] * len(jobs), [sigma] * len(jobs)))
    by_mix: dict[str, list[dict[str, dict[str, float]]]] = {mix: [] for mix in mixes}
    for (mix, _), out in zip(jobs, outputs):
        by_mix[mix].append(out)
    results: dict[str, Any] = {}
    for mix, runs in by_mix.items():
        rows = {}
        oracle_gain = (
            np.mean(
                [r["oracle"]["informative_per_step"] / r["uniform"]["informative_per_step"] for r in runs]
            )
            - 1
        )
        for name in [*BASELINES, *arms]:
            ratios = [r[name]["informative_per_step"] / r["uniform"]["informative_per_step"] for r in runs]
            mean, lo, hi = _interval(ratios)
            rows[name] = {
                "ratio": mean,
                "ratio_low": lo,
                "ratio_high": hi,
                "share_of_oracle_gain": (mean - 1) / oracle_gain if oracle_gain > 0 else math.nan,
                "informative_per_step": float(np.mean([r[name]["informative_per_step"] for r in runs])),
                "realised_per_step": float(np.mean([r[name]["realised_per_step"] for r in runs])),
                "rollout_ratio": float(np.mean([r[name]["rollout_ratio"] for r in runs])),
                "ms_per_step": float(np.mean([r[name]["ms_per_step"] for r in runs])),
                "per_seed": ratios,
            }
        m = MIXES[mix]
        results[mix] = {
            "description": m.description,
            "prompts_per_step": m.prompts,
            "rollouts_per_step": m.prompts * m.rollouts,
            "pool": m.prompts * m.revisit,
            "steps": m.steps,
            "arms": rows,
        }
    return {
        "seeds": seeds,
        "n_min": N_MIN,
        "n_max": N_MAX,
        "drift": {"rho": RHO, "sigma": sigma},
        "arms": {name: _arm(name).description for name in arms},
        "mixes": results,
    }


def format_table(result: dict[str, Any]) -> str:
    """One block per mix: informative prompts per step relative to uniform, first."""
    lines = [
        f"Expected informative prompts per step relative to uniform (mean [95% interval] over {result['seeds']} "
        f"seeds); n_min {result['n_min']}, n_max {result['n_max']}, drift rho {result['drift']['rho']} sigma "
        f"{result['drift']['sigma']} per step."
    ]
    for mix, block in result["mixes"].items():
        lines += [
            "",
            f"{mix}: {block['description']} ({block['prompts_per_step']} prompts x "
            f"{block['rollouts_per_step'] // block['prompts_per_step']} rollouts per step, pool {block['pool']}, "
            f"{block['steps']} steps)",
            f"  {'arm':<24} {'informative prompts':>26} {'of oracle gain':>15} {'per step':>9} "
            f"{'rollout-level ratio':>20} {'ms/step':>8}",
        ]
        for name, row in block["arms"].items():
            interval = (
                "" if math.isnan(row["ratio_low"]) else f" [{row['ratio_low']:.3f}, {row['ratio_high']:.3f}]"
            )
            share = (
                "" if math.isnan(row["share_of_oracle_gain"]) else f"{100 * row['share_of_oracle_gain']:.0f}%"
            )
            lines.append(
                f"  {name:<24} {row['ratio']:>9.3f}x{interval:<17} {share:>15} {row['informative_per_step']:>9.2f} "
                f"{100 * row['rollout_ratio']:>19.1f}% {row['ms_per_step']:>8.1f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", default=",".join(MIXES), help=f"comma-separated, of {list(MIXES)}")
    known = [*ARMS, *PILOT_ARMS]
    default = [name for name in known if name not in OPT_IN]
    parser.add_argument(
        "--arms",
        default=",".join(default),
        help=f"comma-separated, of {known} (default: all but {list(OPT_IN)})",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--sigma", type=float, default=SIGMA, help="drift of the true rates per step (logit sd)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    mixes = [m for m in args.mixes.split(",") if m]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [m for m in mixes if m not in MIXES] + [a for a in arms if a not in known]
    if unknown:
        parser.error(f"unknown mix or arm {unknown}; mixes {list(MIXES)}, arms {known}")
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 for an interval")
    result = run(mixes, arms, args.seeds, args.workers, args.sigma)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

``python -m knapsack_trl.benchmarks.allocation`` prints the table (up to about 18 minutes on 2 busy
cores, a third of it the two-phase arms); ``--json`` prints one JSON object instead. The solver is
``greedy``, exact here (``n_min >= 1`` and concave values), to keep the runs fast.

``--candidates`` prints the candidate table instead (issue 21; 7-14 minutes on 2 busy cores): each step
offers ``c x P`` candidates (c = 1, 2, 4) for the same ``B = P x n`` rollouts, and every arm (the default
rule, a modelled value head, the pilot, the oracle that chooses candidates at the true rates) is reported
against its control, uniform over the ``c x P`` candidates with ``n / c`` each, and against uniform at
c = 1: informative prompts and informative rollouts per step (``sum_i n_i P(mixed)``), 95% intervals over
seeds. The rates also rise as a learning policy's do (``--trend``, a logit rise over the run). Its solver
is CP-SAT, exact with candidates that may get 0.
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
from knapsack_trl.core.pilot import PilotRound, allocate_second_round, final_mixed_probability
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


# --------------------------------------------------------------------------- choosing prompts from candidates
# Each step offers c x P candidates; every arm spends the same B = P x n rollouts on them. Arms per c:
# the default rule, the value head, the pilot, the oracle, and their control: uniform over the c x P
# candidates, n / c each. c = 1 is today's trainer (no prompt skipped).

FACTORS = (1, 2, 4)
CANDIDATE_PROMPTS, CANDIDATE_ROLLOUTS = 32, 8
# A learning policy: the logit of every prompt strictly between 0 and 1 rises by this much over the run,
# on top of the random walk (p from 0.1 to 0.45, 0.5 to 0.88).
TREND = 2.0
# The value head: the logit of a prompt's current rate plus a fixed per-prompt error of this sd.
HEAD_NOISE = 1.0
CANDIDATE_ARMS: dict[str, str] = {
    "control": "uniform over the c x P candidates, n / c rollouts each (the same budget)",
    "default": "the library's defaults: AllocatorConfig(), allocate(..., allow_skip=c > 1)",
    "value_head": f"the defaults with a value head's prediction for every candidate (blend; logit error sd {HEAD_NOISE})",
    "pilot": "the defaults with a pilot of n / (2c) per candidate, the rest committed by the knapsack",
    "oracle": "the knapsack at the true rates (nonzero_gradient), choosing candidates",
}


@dataclass(frozen=True)
class CandidateMix:
    """A difficulty mix over a pool of ``pool`` prompts, run for ``steps`` steps of ``c x P`` candidates."""

    description: str
    sample: Callable[[np.random.Generator, int], np.ndarray]
    pool: int = 12 * CANDIDATE_PROMPTS
    steps: int = 150


CANDIDATE_MIXES: dict[str, CandidateMix] = {
    "paper_like": CandidateMix(
        "paper-like: 30% p=0, 20% p=1, the rest U(0.05, 0.95)",
        lambda rng, size: _shares(
            rng, size, [(0.3, _constant(0.0)), (0.2, _constant(1.0)), (0.5, _uniform(0.05, 0.95))]
        ),
    ),
    "solved_hard": CandidateMix(MIXES["solved_hard"].description, MIXES["solved_hard"].sample),
    "cold_start": CandidateMix(
        "cold start: a pool of 1,536 (each prompt offered 3 times at c = 1, 12 at c = 4), "
        "40% p=0, 40% p in 0.01-0.1, 20% p in 0.1-0.6",
        MIXES["hard"].sample,
        pool=48 * CANDIDATE_PROMPTS,
    ),
    "beta": CandidateMix(MIXES["beta"].description, MIXES["beta"].sample),
    "real_model": CandidateMix(
        "real-model-like: 40% p=0, 60% Beta(1, 8)",
        lambda rng, size: _shares(
            rng, size, [(0.4, _constant(0.0)), (0.6, lambda r, c: r.beta(1.0, 8.0, c))]
        ),
    ),
}


def _learning_drift(
    p0: np.ndarray, steps: int, sigma: float, trend: float, rng: np.random.Generator
) -> np.ndarray:
    """True rates per step, (steps, pool): :func:`_drift`'s random walk plus a logit rising by ``trend``
    over the run for every prompt strictly between 0 and 1."""
    walk = _drift(p0, steps, sigma, rng)
    inner = (p0 > 0) & (p0 < 1)
    logit = np.log(np.clip(walk, 1e-12, 1) / np.clip(1 - walk, 1e-12, 1))
    rise = trend * np.arange(steps)[:, None] / steps
    return np.where(inner[None, :], 1 / (1 + np.exp(-(logit + rise))), walk)


@dataclass
class _CandidateArm:
    """One arm at one candidate factor: its allocator (None for the control; the oracle's never observes),
    its pilot, and its running sums."""

    name: str
    factor: int
    allocator: KnapsackRolloutAllocator | None
    pilot: PilotRound | None = None
    sums: dict[str, float] = field(
        default_factory=lambda: {"informative": 0.0, "rollouts": 0.0, "realised": 0.0}
    )


def _candidate_arms(budget: int) -> list[_CandidateArm]:
    config = AllocatorConfig(solver="cpsat")
    arms = []
    for c in FACTORS:
        for name in CANDIDATE_ARMS:
            allocator = (
                None if name == "control" else KnapsackRolloutAllocator(AllocatorConfig(solver="cpsat"))
            )
            pilot = None
            if name == "pilot":
                k = CANDIDATE_ROLLOUTS // (2 * c)
                pilot = PilotRound.from_config(config, k, c * CANDIDATE_PROMPTS, budget, allow_skip=c > 1)
            arms.append(_CandidateArm(name, c, allocator, pilot))
    return arms


def _decide_candidates(
    arm: _CandidateArm,
    ids: list[str],
    p: np.ndarray,
    wins: np.ndarray,
    head: np.ndarray,
    budget: int,
    step: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rollouts, P(final group mixed))`` per candidate, at the true rates (given the realised pilot)."""
    skip = arm.factor > 1
    if arm.allocator is None:
        n = uniform_allocation(budget, len(ids))
    elif arm.name == "oracle":
        n = arm.allocator.allocate_known(p, budget, allow_skip=skip).rollouts_per_prompt
    elif arm.pilot is not None:
        k = arm.pilot.pilot_rollouts
        second = arm.pilot.decide(arm.allocator, ids, wins[:, :k].astype(np.float64).reshape(-1), step=step)
        s = wins[:, :k].sum(axis=1)
        return second.group_sizes, final_mixed_probability(s, k - s, second.extra_rollouts, p)
    else:
        prior = head if arm.name == "value_head" else None
        n = arm.allocator.allocate(
            ids, budget, step=step, prior_success_rate=prior, allow_skip=skip
        ).rollouts_per_prompt
    return n, nonzero_gradient_probability(n, p)


def simulate_candidates(
    mix_name: str, seed: int, sigma: float = SIGMA, trend: float = TREND, steps: int | None = None
) -> dict[str, Any]:
    """One seed of one mix: per arm and factor, informative prompts and rollouts per step (expected under
    the true rates), and the realised count; plus the value head's ranking AUC."""
    mix = CANDIDATE_MIXES[mix_name]
    steps = mix.steps if steps is None else steps
    rng = np.random.default_rng([seed, sorted(CANDIDATE_MIXES).index(mix_name), 21])
    budget = CANDIDATE_PROMPTS * CANDIDATE_ROLLOUTS
    rates = _learning_drift(mix.sample(rng, mix.pool), steps, sigma, trend, rng)
    head_error = rng.normal(0.0, HEAD_NOISE, mix.pool)
    epochs = math.ceil(steps * max(FACTORS) * CANDIDATE_PROMPTS / mix.pool) + 1
    flat = np.concatenate([rng.permutation(mix.pool) for _ in range(epochs)])
    ids = np.array([f"q{i}" for i in range(mix.pool)])
    arms = _candidate_arms(budget)
    pairs: list[float] = []
    for t in range(steps):
        draws = np.random.default_rng([seed, sorted(CANDIDATE_MIXES).index(mix_name), 21, t]).random(
            (mix.pool, N_MAX)
        )
        clipped = np.clip(rates[t], 0.005, 0.995)
        head = 1 / (1 + np.exp(-(np.log(clipped / (1 - clipped)) + head_error)))
        for arm in arms:
            size = arm.factor * CANDIDATE_PROMPTS
            batch = flat[t * size : (t + 1) * size]
            p, wins = rates[t, batch], draws[batch] < rates[t, batch][:, None]
            n, mixed = _decide_candidates(arm, ids[batch].tolist(), p, wins, head[batch], budget, t)
            used = np.arange(N_MAX)[None, :] < n[:, None]
            successes = (wins & used).sum(axis=1)
            arm.sums["informative"] += float(mixed.sum())
            arm.sums["rollouts"] += float(mixed @ n)
            arm.sums["realised"] += float(((successes > 0) & (successes < n)).sum())
            if arm.allocator is not None and arm.name != "oracle":
                rows = np.repeat(np.arange(batch.size), n)
                outcome = wins[rows, np.concatenate([np.arange(k) for k in n])]
                arm.allocator.observe(ids[batch][rows].tolist(), outcome.astype(float), step=t)
            if arm.name == "value_head" and arm.factor == 1:
                pairs.append(_ranking_auc(head[batch], p))
    return {
        "arms": {f"{a.name} c={a.factor}": {k: v / steps for k, v in a.sums.items()} for a in arms},
        "head_auc": float(np.nanmean(pairs)),
    }


def _ranking_auc(predicted: np.ndarray, truth: np.ndarray) -> float:
    """P(a prompt with the higher true rate is predicted higher), over pairs whose rates differ."""
    higher = truth[:, None] > truth[None, :]
    if not higher.any():
        return math.nan
    above = predicted[:, None] > predicted[None, :]
    tie = predicted[:, None] == predicted[None, :]
    return float((above[higher].sum() + 0.5 * tie[higher].sum()) / higher.sum())


def run_candidates(
    mixes: Sequence[str],
    seeds: int,
    workers: int,
    sigma: float = SIGMA,
    trend: float = TREND,
    steps: int | None = None,
) -> dict[str, Any]:
    """Every (mix, seed) in a process pool; per mix, arm and factor the ratios to the control at that
    factor and to uniform at c = 1, with 95% intervals over seeds, and the share of the oracle's gain."""
    jobs = [(mix, seed) for mix in mixes for seed in range(seeds)]
    n = len(jobs)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        outputs = list(pool.map(simulate_candidates, *zip(*jobs), [sigma] * n, [trend] * n, [steps] * n))
    results: dict[str, Any] = {}
    for mix in mixes:
        runs = [out for (name, _), out in zip(jobs, outputs) if name == mix]
        rows: dict[str, Any] = {}
        for c in FACTORS:
            for arm in CANDIDATE_ARMS:
                rows[f"{arm} c={c}"] = _candidate_row(runs, arm, c)
        m = CANDIDATE_MIXES[mix]
        results[mix] = {
            "description": m.description,
            "pool": m.pool,
            "steps": m.steps if steps is None else steps,
            "head_auc": float(np.mean([r["head_auc"] for r in runs])),
            "arms": rows,
        }
    return {
        "seeds": seeds,
        "prompts": CANDIDATE_PROMPTS,
        "rollouts_per_prompt": CANDIDATE_ROLLOUTS,
        "n_min": AllocatorConfig().n_min,
        "n_max": AllocatorConfig().n_max,
        "drift": {"rho": RHO, "sigma": sigma, "trend": trend},
        "head_noise": HEAD_NOISE,
        "arms": CANDIDATE_ARMS,
        "mixes": results,
    }


def _candidate_row(runs: list[dict[str, Any]], arm: str, c: int) -> dict[str, Any]:
    """One arm at one factor over seeds: per step figures and paired ratios with their intervals."""
    key, control, uniform, oracle = f"{arm} c={c}", f"control c={c}", "control c=1", f"oracle c={c}"
    row: dict[str, Any] = {}
    for metric in ("informative", "rollouts"):
        values = [r["arms"][key][metric] for r in runs]
        row[f"{metric}_per_step"] = float(np.mean(values))
        for base, label in ((control, "control"), (uniform, "uniform")):
            mean, lo, hi = _interval([r["arms"][key][metric] / r["arms"][base][metric] for r in runs])
            row[f"{metric}_vs_{label}"] = [mean, lo, hi]
    gains = [r["arms"][oracle]["informative"] / r["arms"][control]["informative"] - 1 for r in runs]
    own = row["informative_vs_control"][0] - 1
    row["share_of_oracle_gain"] = own / float(np.mean(gains)) if np.mean(gains) > 0 else math.nan
    row["realised_per_step"] = float(np.mean([r["arms"][key]["realised"] for r in runs]))
    return row


def format_candidates(result: dict[str, Any]) -> str:
    """One block per mix: informative prompts and rollouts per step, against the control and uniform at c=1."""
    drift = result["drift"]
    lines = [
        f"Choosing prompts from c x P candidates: {result['prompts']} prompts x {result['rollouts_per_prompt']} rollouts "
        f"of budget per step, n_min {result['n_min']}, n_max {result['n_max']}; drift rho {drift['rho']} sigma "
        f"{drift['sigma']} per step, trend {drift['trend']} on the logit over the run; mean [95% interval] over "
        f"{result['seeds']} seeds. 'control': uniform over the c x P candidates, n / c each."
    ]
    for mix, block in result["mixes"].items():
        lines += [
            "",
            f"{mix}: {block['description']} (pool {block['pool']}, {block['steps']} steps; value head ranking AUC "
            f"{block['head_auc']:.2f})",
            f"  {'arm':<14} {'inf. prompts':>12} {'vs control':>24} {'vs uniform c=1':>24} {'oracle gain':>11} "
            f"{'inf. rollouts':>13} {'vs control':>24} {'vs uniform c=1':>24}",
        ]
        for name, row in block["arms"].items():
            share = row["share_of_oracle_gain"]
            lines.append(
                f"  {name:<14} {row['informative_per_step']:>12.2f} {_ratio(row['informative_vs_control']):>24} "
                f"{_ratio(row['informative_vs_uniform']):>24} "
                f"{'' if math.isnan(share) or name.startswith(('control', 'oracle')) else f'{100 * share:.0f}%':>11} "
                f"{row['rollouts_per_step']:>13.1f} {_ratio(row['rollouts_vs_control']):>24} "
                f"{_ratio(row['rollouts_vs_uniform']):>24}"
            )
    return "\n".join(lines)


def _ratio(value: Sequence[float]) -> str:
    mean, lo, hi = value
    return f"{mean:.3f}x" if math.isnan(lo) else f"{mean:.3f}x [{lo:.3f}, {hi:.3f}]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mixes",
        default=None,
        help=f"comma-separated, of {list(MIXES)} (default: all), or with --candidates of {list(CANDIDATE_MIXES)}",
    )
    known = [*ARMS, *PILOT_ARMS]
    default = [name for name in known if name not in OPT_IN]
    parser.add_argument(
        "--arms",
        default=",".join(default),
        help=f"comma-separated, of {known} (default: all but {list(OPT_IN)}; not with --candidates)",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--sigma", type=float, default=SIGMA, help="drift of the true rates per step (logit sd)"
    )
    parser.add_argument(
        "--candidates",
        action="store_true",
        help="the candidate table: c = 1, 2, 4 candidates per prompt of budget, every arm and its control",
    )
    parser.add_argument(
        "--trend", type=float, default=TREND, help="with --candidates: logit rise over the run (0: none)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="with --candidates: steps per run (default: each mix's)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    table = CANDIDATE_MIXES if args.candidates else MIXES
    mixes = [m for m in (args.mixes or ",".join(table)).split(",") if m]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [m for m in mixes if m not in table] + [a for a in arms if a not in known]
    if unknown:
        parser.error(f"unknown mix or arm {unknown}; mixes {list(table)}, arms {known}")
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 for an interval")
    if args.candidates:
        result = run_candidates(mixes, args.seeds, args.workers, args.sigma, args.trend, args.steps)
        print(json.dumps(result, indent=1) if args.json else format_candidates(result))
        return 0
    result = run(mixes, arms, args.seeds, args.workers, args.sigma)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Record what the allocator decides today, on seeded random cases, as a JSON fixture.

Why: choosing prompts from a candidate pool (issue 21) changes the solvers, the allocator and the pilot,
and a run without candidates (``knapsack_candidate_factor: 1``) must keep deciding exactly as before.
This script ran once on the code before those changes; ``tests/test_candidates_core.py`` replays every
case through the current code and asserts the same rollouts, prompt for prompt.

Each case is self-contained: the allocator's settings, the tracker's settings, the history as visits
(``[prompt id, outcomes as a 0/1 string, step]``, fed to ``observe`` in order, with a completion length
per prompt where the case uses token costs), and the call: ``allocate`` (ids, budget, step,
``prior_success_rate`` with null for NaN, ``uniform``) or ``allocate_second_round`` (ids, pilot successes,
pilot rollouts, pilot scored, second-round budget, step, prior, ``uniform``). Its output: the rollouts per
prompt (``allocate``) or the second round's extra rollouts per prompt (``allocate_second_round``), and the
buckets. Only cases the code accepts are kept (random settings it refuses are drawn again).

Rerun (numpy and OR-Tools only)::

    PYTHONPATH=$PWD python scripts/record_c1_allocations.py --out tests/fixtures/c1_allocations.json \\
        --cases 300 --pilot-cases 120 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from knapsack_trl.core.allocator import AllocatorConfig, KnapsackRolloutAllocator
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.tracker import SuccessRateTracker


def _history(rng: np.random.Generator, pool: int, n_max: int) -> tuple[list[list[Any]], dict[str, float]]:
    """Random visits to a pool of prompts with drifting success rates (some exactly 0 or 1)."""
    p = rng.beta(0.6, 0.6, pool)
    kind = rng.random(pool)
    p[kind < 0.2] = 0.0
    p[(kind >= 0.2) & (kind < 0.3)] = 1.0
    visits: list[list[Any]] = []
    for step in range(int(rng.integers(0, 12))):
        seen = rng.choice(pool, size=int(rng.integers(1, pool + 1)), replace=False)
        for i in seen:
            size = int(rng.integers(1, min(n_max, 24) + 1))
            rate = p[i] if p[i] in (0.0, 1.0) else float(np.clip(p[i] + 0.05 * step * rng.normal(), 0, 1))
            outcomes = "".join("1" if u < rate else "0" for u in rng.random(size))
            visits.append([f"q{i}", outcomes, step])
    lengths = {f"q{i}": float(rng.integers(5, 200)) for i in range(pool)}
    return visits, lengths


def _tracker_settings(rng: np.random.Generator) -> dict[str, Any]:
    mode = rng.integers(0, 4)
    settings: dict[str, Any] = {"prior_strength": float(rng.choice([0.0, 1.0, 2.0]))}
    if mode == 0:
        settings.update(window=int(rng.choice([8, 16])), estimate="last_visit")
    elif mode == 1:
        settings.update(window=int(rng.choice([4, 16])))
    else:
        settings.update(ema_decay=float(rng.choice([0.8, 0.9])))
    return settings


def _allocator_settings(rng: np.random.Generator, pilot: bool) -> dict[str, Any]:
    n_min = int(rng.choice([0, 1, 2, 3])) if not pilot else int(rng.choice([0, 2, 3]))
    n_max = int(rng.choice([8, 16, 32]))
    settings: dict[str, Any] = {
        "rule": str(rng.choice(["posterior", "buckets"])),
        "n_min": n_min,
        "n_max": n_max,
        "solver": str(rng.choice(["cpsat", "dp", "greedy"])),
        "value_function": str(rng.choice(["nonzero_gradient", "knapsack"])),
        "fallback": bool(rng.random() < 0.6),
        "fallback_confidence": float(rng.choice([0.5, 0.9])),
        "min_observations": int(rng.choice([1, 1, 4, 8])),
        "zero_success_budget": int(rng.integers(max(n_min, 1), min(n_max, 4) + 1)),
        "full_success_budget": int(rng.integers(max(n_min, 1), min(n_max, 4) + 1)),
    }
    if not pilot and rng.random() < 0.15:
        settings["n_max_schedule"] = f"linear:{n_max}:{max(n_min, 4, n_max // 2)}:10"
    if not pilot and settings["solver"] == "cpsat" and rng.random() < 0.2:
        settings["token_cost"] = True
    return settings


def _prior(rng: np.random.Generator, m: int) -> list[float | None] | None:
    if rng.random() < 0.6:
        return None
    values = rng.random(m)
    values[rng.random(m) < 0.3] = np.nan
    values[rng.random(m) < 0.1] = 0.0
    return [None if math.isnan(v) else float(v) for v in values]


def build(case: dict[str, Any]) -> KnapsackRolloutAllocator:
    """The allocator a case describes, its tracker fed the case's visits in order."""
    tracker = SuccessRateTracker(**case["tracker"])
    lengths = case.get("lengths")
    for pid, outcomes, step in case["visits"]:
        rewards = [float(c) for c in outcomes]
        length = None if lengths is None else [lengths[pid]] * len(rewards)
        tracker.observe([pid] * len(rewards), rewards, length, step=step)
    return KnapsackRolloutAllocator(AllocatorConfig(**case["allocator"]), tracker)


def prior_array(prior: list[float | None] | None) -> np.ndarray | None:
    return None if prior is None else np.array([np.nan if v is None else v for v in prior], dtype=np.float64)


def replay(case: dict[str, Any]) -> dict[str, Any]:
    """Run a case's call on the current code: its rollouts (or extra rollouts) and buckets."""
    from knapsack_trl.core.pilot import allocate_second_round

    allocator = build(case)
    call = case["call"]
    prior = prior_array(call["prior"])
    if case["kind"] == "allocate":
        out = allocator.allocate(
            call["ids"], call["budget"], step=call["step"], prior_success_rate=prior, uniform=call["uniform"]
        )
        return {"rollouts": out.rollouts_per_prompt.tolist(), "bucket": out.bucket.tolist()}
    second = allocate_second_round(
        allocator,
        call["ids"],
        call["successes"],
        call["rows"],
        call["budget"],
        step=call["step"],
        prior_success_rate=prior,
        pilot_scored=call["scored"],
        uniform=call["uniform"],
    )
    return {"rollouts": second.extra_rollouts.tolist()}


def _allocate_case(rng: np.random.Generator) -> dict[str, Any]:
    allocator = _allocator_settings(rng, pilot=False)
    pool = int(rng.integers(2, 30))
    visits, lengths = _history(rng, pool, allocator["n_max"])
    m = int(rng.integers(1, min(pool, 24) + 1))
    ids = [f"q{i}" for i in rng.choice(pool, size=m, replace=False)]
    step = int(rng.integers(0, 12))
    n_max = allocator["n_max"] if "n_max_schedule" not in allocator else max(allocator["n_max"] // 2, 4)
    budget = int(rng.integers(allocator["n_min"] * m, n_max * m + 1))
    case = {
        "kind": "allocate",
        "allocator": allocator,
        "tracker": _tracker_settings(rng),
        "visits": visits,
        "call": {
            "ids": ids,
            "budget": budget,
            "step": step,
            "prior": _prior(rng, m),
            "uniform": bool(rng.random() < 0.1),
        },
    }
    if allocator.get("token_cost"):
        case["lengths"] = lengths
    return case


def _pilot_case(rng: np.random.Generator) -> dict[str, Any]:
    allocator = _allocator_settings(rng, pilot=True)
    pool = int(rng.integers(2, 30))
    visits, _ = _history(rng, pool, allocator["n_max"])
    m = int(rng.integers(1, min(pool, 24) + 1))
    ids = [f"q{i}" for i in rng.choice(pool, size=m, replace=False)]
    if rng.random() < 0.5:
        rows: int | list[int] = int(rng.integers(0, 5))
        per = np.full(m, rows)
    else:
        per = rng.integers(0, 5, m)
        rows = per.tolist()
    scored = np.array([int(rng.integers(0, r + 1)) if rng.random() < 0.2 else int(r) for r in per])
    p = rng.random(m)
    successes = np.array([int((rng.random(s) < q).sum()) for s, q in zip(scored, p)])
    lower = np.maximum(per, allocator["n_min"])
    need, room = int((lower - per).sum()), int((allocator["n_max"] - per).sum())
    budget = int(rng.integers(need, max(room, need) + 1))
    return {
        "kind": "second_round",
        "allocator": allocator,
        "tracker": _tracker_settings(rng),
        "visits": visits,
        "call": {
            "ids": ids,
            "successes": successes.tolist(),
            "rows": rows,
            "scored": None if (scored == per).all() and rng.random() < 0.5 else scored.tolist(),
            "budget": budget,
            "step": int(rng.integers(0, 12)),
            "prior": _prior(rng, m),
            "uniform": bool(rng.random() < 0.1),
        },
    }


def record(cases: int, pilot_cases: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for make, count in ((_allocate_case, cases), (_pilot_case, pilot_cases)):
        kept = 0
        while kept < count:
            case = make(rng)
            try:
                case["expected"] = replay(case)
            except SettingError:
                continue
            out.append(case)
            kept += 1
    return {"seed": seed, "cases": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--pilot-cases", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = record(args.cases, args.pilot_cases, args.seed)
    args.out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    kinds = [c["kind"] for c in result["cases"]]
    print(
        f"{len(kinds)} cases ({kinds.count('allocate')} allocate, {kinds.count('second_round')} second round)"
    )


if __name__ == "__main__":
    main()

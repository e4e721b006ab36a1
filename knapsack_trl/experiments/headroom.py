"""The headroom task: a GRPO pool where reallocation can add informative prompts, screened from the policy.

Knapsack allocation pays when many prompts sit at low but non-zero success rates (8 rollouts often see
no success, 30 rarely miss one) next to prompts that are already solved (their rollouts are spare). The
tiny world's random pool has few of either, so this task is built from the warmed-up policy itself:
every candidate is sampled ``screen_samples`` times, and the pool takes equal numbers of **solved**
prompts (p >= ``solved_min``) and **hard-but-solvable** ones (``hard_low`` <= p <= ``hard_high``, never
0 of n), the held-out set more hard ones. The bands come from the allocation simulator's
``solved_hard`` mix and are fixed in docs/benchmark_protocol.md, not tuned on results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knapsack_trl.experiments.evaluation import success_rates
from knapsack_trl.tasks.arithmetic import arithmetic_reward


@dataclass(frozen=True)
class Bands:
    """Success-rate bands of the headroom task and how many prompts each split takes from them."""

    solved_min: float = 0.97
    hard_low: float = 0.03
    hard_high: float = 0.15
    pool_solved: int = 24
    pool_hard: int = 24
    heldout_hard: int = 48


def select_headroom(
    candidates: Sequence[dict[str, str]], p: np.ndarray, bands: Bands
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Pool and held-out rows from screened ``candidates`` (``p``: their measured success), in drawn order.

    The pool interleaves solved and hard prompts so any prefix keeps the mix; raises naming the band when
    the candidates are too few (draw more candidates, or loosen the band, and record it as a deviation).
    """
    p = np.asarray(p, dtype=float)
    solved = [dict(c, band="solved") for c, q in zip(candidates, p) if q >= bands.solved_min]
    hard = [
        dict(c, band="hard")
        for c, q in zip(candidates, p)
        if bands.hard_low <= q <= bands.hard_high and q > 0
    ]
    need_hard = bands.pool_hard + bands.heldout_hard
    if len(solved) < bands.pool_solved or len(hard) < need_hard:
        raise ValueError(
            f"the headroom task needs {bands.pool_solved} solved prompts (p >= {bands.solved_min}) and "
            f"{need_hard} hard ones ({bands.hard_low} <= p <= {bands.hard_high}) but {len(candidates)} "
            f"candidates gave {len(solved)} and {len(hard)}: raise `candidates`, or warm the policy up "
            "further (`sft_target`)."
        )
    pool_solved, pool_hard = solved[: bands.pool_solved], hard[: bands.pool_hard]
    pool = [row for pair in zip(pool_solved, pool_hard) for row in pair]
    longer = pool_solved if len(pool_solved) > len(pool_hard) else pool_hard
    pool += longer[min(len(pool_solved), len(pool_hard)) :]
    heldout = hard[bands.pool_hard : need_hard]
    return pool, heldout


def arithmetic_rates(
    model: Any, tokenizer: Any, rows: Sequence[dict[str, str]], samples: int, max_new_tokens: int, seed: int
) -> np.ndarray:
    """Each row's success rate over ``samples`` samples at T=1, scored by the arithmetic reward."""
    return success_rates(
        model,
        tokenizer,
        rows,
        [arithmetic_reward],
        k=samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_prompts=256,
    )


def screen_headroom(
    model: Any,
    tokenizer: Any,
    candidates: Sequence[dict[str, str]],
    bands: Bands,
    *,
    samples: int,
    max_new_tokens: int,
    seed: int,
) -> dict[str, Any]:
    """Sample every candidate ``samples`` times on a fixed stream and select the pool and held-out rows."""
    p = arithmetic_rates(model, tokenizer, candidates, samples, max_new_tokens, seed)
    pool, heldout = select_headroom(candidates, p, bands)
    by_prompt = dict(zip((c["prompt"] for c in candidates), p))
    return {
        "pool": pool,
        "heldout": heldout,
        "screen": {
            "candidates": len(candidates),
            "samples": samples,
            "solved": int(np.sum(p >= bands.solved_min)),
            "hard": int(np.sum((p >= bands.hard_low) & (p <= bands.hard_high) & (p > 0))),
            "zero": int(np.sum(p == 0)),
            "pool_p_solved": float(np.mean([by_prompt[r["prompt"]] for r in pool if r["band"] == "solved"])),
            "pool_p_hard": float(np.mean([by_prompt[r["prompt"]] for r in pool if r["band"] == "hard"])),
            "heldout_p": float(np.mean([by_prompt[r["prompt"]] for r in heldout])),
        },
    }

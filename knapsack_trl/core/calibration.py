"""How well predicted success rates match observed outcomes: the value head's report card (pure numpy)."""

from __future__ import annotations

import math

import numpy as np

from knapsack_trl.core.tracker import is_success


def calibration_metrics(
    predicted: np.ndarray, successes: np.ndarray, counts: np.ndarray, n_bins: int = 10
) -> dict[str, float]:
    """Rollout-weighted Brier score, log loss, mean predicted vs observed, expected calibration error.

    A group of ``n`` rollouts with ``s`` successes counts as ``n`` binary outcomes, so the Brier score
    is exact per rollout: ``(s (1-p)^2 + (n-s) p^2) / n`` summed and divided by the total.
    """
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    s = np.asarray(successes, dtype=np.float64).reshape(-1)
    n = np.asarray(counts, dtype=np.float64).reshape(-1)
    keep = n > 0
    p, s, n = p[keep], s[keep], n[keep]
    total = n.sum()
    if total <= 0:
        return {
            "brier": math.nan,
            "log_loss": math.nan,
            "mean_pred": math.nan,
            "mean_obs": math.nan,
            "ece": math.nan,
        }
    brier = float((s * (1 - p) ** 2 + (n - s) * p**2).sum() / total)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    log_loss = float(-(s * np.log(pc) + (n - s) * np.log1p(-pc)).sum() / total)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        w = n[sel].sum()
        ece += abs(float((p[sel] * n[sel]).sum() - s[sel].sum())) / total if w > 0 else 0.0
    return {
        "brier": brier,
        "log_loss": log_loss,
        "mean_pred": float((p * n).sum() / total),
        "mean_obs": float(s.sum() / total),
        "ece": float(ece),
    }


def _scorable_groups(
    rewards: np.ndarray, sizes: np.ndarray | list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rewards flat, each rollout's group index, which rollouts are scorable (not NaN), and the scorable
    rollouts per group; raises when the sizes do not add up to the rewards."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    n = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if int(n.sum()) != r.size:
        raise ValueError(f"group sizes sum to {int(n.sum())} but there are {r.size} rewards.")
    group = np.repeat(np.arange(n.size), n)
    valid = ~np.isnan(r)
    return r, group, valid, np.bincount(group[valid], minlength=n.size).astype(np.float64)


def group_successes(
    rewards: np.ndarray, sizes: np.ndarray | list[int], threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``(successes, counts)`` from per-rollout rewards laid out group after group.

    Binary success is ``reward > threshold`` (the tracker's rule); NaN rewards (unscorable) count in
    neither. ``sizes[i]`` consecutive rollouts belong to prompt ``i``; a group of size 0 gives (0, 0).
    """
    r, group, valid, counts = _scorable_groups(rewards, sizes)
    successes = np.bincount(
        group[valid], weights=is_success(r[valid], threshold).astype(np.float64), minlength=counts.size
    )
    return successes, counts


def group_mean_rewards(rewards: np.ndarray, sizes: np.ndarray | list[int]) -> np.ndarray:
    """Each group's mean reward over its scorable (non-NaN) rollouts; NaN for a group with none.

    Laid out as :func:`group_successes` reads them. The mean of these over prompts weighs every prompt
    the same, whatever its rollouts: the reward to compare allocations by.
    """
    r, group, valid, counts = _scorable_groups(rewards, sizes)
    sums = np.bincount(group[valid], weights=r[valid], minlength=counts.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)

"""Generation rounds of one batch joined into one (two with the pilot round): where rows go, one output.

With ``knapsack_pilot_rollouts = k`` the trainer calls TRL's generation twice: once on ``k`` rows of every
prompt, once on the second round's rows; without, once. Each process keeps an equal slice of each round,
so its final batch is its slice of round 0 followed by its slice of round 1, and the batch of all
processes holds exactly ``generation_batch_size`` rows. This module holds the pure parts:

- :class:`GeneratedRound`: what one of TRL's calls gave; :class:`JoinedRounds` and :func:`join_rounds`,
  the batch made of them;
- :func:`final_rows`: each round's rows as rows of the final canonical layout (prompt after prompt, a
  prompt's pilot rollouts before its second-round ones), and the merged batch's global order;
- :func:`merge_outputs`: the two TRL outputs as one, padded to a common width the way TRL pads
  (prompts on the left, completions on the right);
- :func:`merge_round_metrics`: TRL's per-call metrics, which the two calls each appended, as one entry
  per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather
from trl.trainer.utils import nanstd

from knapsack_trl.trainer.trl_bridge import (
    LEFT_PADDED,
    REWARD_METRIC,
    REWARD_STD_METRIC,
    RIGHT_PADDED,
    ROW_VALUES,
    SUMMED,
    TOKEN_IDS,
    Capture,
    reward_function_metric,
)


@dataclass
class GeneratedRound:
    """One of TRL's generation calls within a batch, as the trainer keeps it until the batch is joined."""

    sizes: np.ndarray  # (P,) rows of each prompt in this round
    order: np.ndarray  # the round's canonical row at each of its global positions (process-major)
    output: dict[str, Any]  # TRL's output for this process's rows
    capture: Capture  # what the bridge caught: gathered rewards, per-rollout extras
    kl: torch.Tensor | None  # RLOO: this process's per-row sequence KL, else None
    metric_marks: dict[str, int]  # each metric's length before the round (to fold TRL's entries)
    seconds: float  # wall time of the round

    def canonical_rewards(self) -> torch.Tensor:
        """The round's gathered rewards with rows in canonical order (prompt after prompt)."""
        rewards = self.capture.rewards
        inverse = torch.as_tensor(np.argsort(self.order, kind="stable"), device=rewards.device)
        return rewards[inverse]


@dataclass
class JoinedRounds:
    """A batch's rounds as one: per-row values in the merged batch's global order (process-major, each
    process's rows round after round), ``order`` mapping them to canonical rows (prompt after prompt, a
    prompt's rows round after round)."""

    sizes: np.ndarray  # (P,) final rows per prompt
    order: np.ndarray  # (B,) canonical row at each global position
    log_positions: np.ndarray  # where each row TRL logged sits in the global order
    rewards: torch.Tensor  # (B, reward functions)
    lengths: torch.Tensor | None  # (B,) rollout costs
    tool_calls: torch.Tensor | None  # (B,) tool calls per rollout
    prompt_hashes: list[str] | None  # (B,) hash of the prompt each rollout saw (environment runs)
    kl: torch.Tensor | None  # (B,) RLOO's sequence KL

    def canonical(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row ``values`` of the global order, in canonical order."""
        inverse = torch.as_tensor(np.argsort(self.order, kind="stable"), device=values.device)
        return values[inverse]

    def canonical_list(self, values: list[Any]) -> list[Any]:
        """:meth:`canonical` for a list."""
        return [values[g] for g in np.argsort(self.order, kind="stable").tolist()]


def join_rounds(
    rounds: list[GeneratedRound],
    num_processes: int,
    pad_token_id: int | None,
    metrics: dict[str, list[float]],
    reward_weights: torch.Tensor,
    reward_func_names: list[str],
) -> tuple[dict[str, Any], JoinedRounds]:
    """One TRL output and one :class:`JoinedRounds` from a batch's rounds; with several rounds TRL's
    per-call metrics are folded to one entry per batch (in ``metrics``, in place)."""
    world = num_processes
    sizes = [r.sizes for r in rounds]
    rewards = interleave([r.capture.rewards for r in rounds], world)

    def extra(name: str) -> Any:
        values = [r.capture.rollouts.get(name) for r in rounds]
        if any(v is None for v in values):
            return None
        return (
            interleave(values, world)
            if isinstance(values[0], torch.Tensor)
            else interleave_lists(values, world)
        )

    kls = [r.kl for r in rounds]
    kl = None
    if all(k is not None for k in kls):
        kl = torch.cat(kls)  # this process's rows, round after round: its part of the global order
        if world > 1:
            kl = gather(kl)
    joined = JoinedRounds(
        sizes=np.sum(np.stack(sizes), axis=0),
        order=merged_order([r.order for r in rounds], final_rows(sizes), world),
        log_positions=log_positions([int(s.sum()) for s in sizes], world),
        rewards=rewards,
        lengths=extra("lengths"),
        tool_calls=extra("tool_calls"),
        prompt_hashes=extra("prompt_hashes"),
        kl=kl,
    )
    output = rounds[0].output
    if len(rounds) > 1:
        output = merge_outputs([r.output for r in rounds], pad_token_id)
        merge_round_metrics(
            metrics,
            [r.metric_marks for r in rounds],
            [float(r.capture.rewards.shape[0]) for r in rounds],
            rewards,
            reward_weights,
            reward_func_names,
        )
    return output, joined


def final_rows(sizes_by_round: list[np.ndarray]) -> list[np.ndarray]:
    """For each round, the final canonical row of each of its canonical rows.

    Round ``r``'s canonical layout repeats prompt ``i`` ``sizes_by_round[r][i]`` times; in the final
    layout prompt ``i`` holds its rows of round 0, then of round 1, and so on.
    """
    sizes = np.stack([np.asarray(s, dtype=np.int64) for s in sizes_by_round])
    final = sizes.sum(axis=0)
    starts = np.cumsum(final) - final
    before = np.cumsum(sizes, axis=0) - sizes  # rows of the prompt in earlier rounds
    out = []
    for r in range(sizes.shape[0]):
        prompt = np.repeat(np.arange(sizes.shape[1]), sizes[r])
        round_starts = np.cumsum(sizes[r]) - sizes[r]
        within = np.arange(prompt.size) - round_starts[prompt]
        out.append(starts[prompt] + before[r, prompt] + within)
    return out


def merged_order(orders: list[np.ndarray], rows: list[np.ndarray], num_processes: int) -> np.ndarray:
    """The merged batch's order: the final canonical row at each global position.

    ``orders[r]``: round ``r``'s canonical row at each of its global positions (process-major);
    ``rows[r]``: :func:`final_rows`'s map for that round. Process ``p``'s part of the merged batch is its
    slice of round 0, then its slice of round 1.
    """
    parts = []
    for p in range(num_processes):
        for order, row in zip(orders, rows, strict=True):
            local = order.size // num_processes
            parts.append(row[order[p * local : (p + 1) * local]])
    return np.concatenate(parts)


def interleave(per_round: list[torch.Tensor], num_processes: int) -> torch.Tensor:
    """Gathered (process-major) tensors of each round -> the merged batch's global rows."""
    parts = []
    for p in range(num_processes):
        for values in per_round:
            local = values.shape[0] // num_processes
            parts.append(values[p * local : (p + 1) * local])
    return torch.cat(parts)


def interleave_lists(per_round: list[list[Any]], num_processes: int) -> list[Any]:
    """:func:`interleave` for lists."""
    out: list[Any] = []
    for p in range(num_processes):
        for values in per_round:
            local = len(values) // num_processes
            out.extend(values[p * local : (p + 1) * local])
    return out


def log_positions(round_sizes: list[int], num_processes: int) -> np.ndarray:
    """Where each row TRL logged (round after round, process-major within a round) sits in the merged
    batch's global order: TRL's completion logs and the advantages written after them line up."""
    per = [n // num_processes for n in round_sizes]
    width = sum(per)
    out = []
    for r, n in enumerate(per):
        offset = sum(per[:r])
        out.extend(p * width + offset + j for p in range(num_processes) for j in range(n))
    return np.asarray(out, dtype=np.int64)


def _pad_to(values: torch.Tensor, width: int, side: str, fill: float) -> torch.Tensor:
    missing = width - values.shape[1]
    if missing <= 0:
        return values
    pad = values.new_full((values.shape[0], missing, *values.shape[2:]), fill)
    return torch.cat([pad, values] if side == "left" else [values, pad], dim=1)


def merge_outputs(outputs: list[dict[str, Any]], pad_token_id: int | None) -> dict[str, Any]:
    """One TRL output from each round's: rows concatenated, padded to a common width as TRL pads.

    Padding is masked everywhere the loss reads it (zeros, or the pad token for ids). Outputs with keys
    this does not know (images and other multimodal inputs) are refused rather than guessed at.
    """
    keys = list(outputs[0])
    known = {*LEFT_PADDED, *RIGHT_PADDED, *ROW_VALUES, *SUMMED}
    for output in outputs:
        if list(output) != keys:
            raise RuntimeError(
                f"The two generation rounds returned different fields ({sorted(keys)} vs {sorted(output)})."
            )
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(
            f"knapsack_pilot_rollouts > 0 cannot join generation rounds with the fields {unknown} "
            "(multimodal inputs); set knapsack_pilot_rollouts=0."
        )
    merged: dict[str, Any] = {}
    for key in keys:
        values = [o[key] for o in outputs]
        if key in SUMMED:
            merged[key] = sum(values[1:], values[0])
        elif key in ROW_VALUES or values[0].ndim == 1:
            merged[key] = torch.cat(values)
        else:
            width = max(v.shape[1] for v in values)
            side = "left" if key in LEFT_PADDED else "right"
            fill = pad_token_id if key in TOKEN_IDS and pad_token_id is not None else 0
            merged[key] = torch.cat([_pad_to(v, width, side, fill) for v in values])
    return merged


def _combine(name: str, values: list[float], weights: list[float]) -> float:
    if name.endswith("max") or "/max_" in name:
        return max(values)
    if name.endswith("min") or "/min_" in name:
        return min(values)
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total


def merge_round_metrics(
    metrics: dict[str, list[float]],
    marks: list[dict[str, int]],
    weights: list[float],
    rewards_per_func: torch.Tensor,
    reward_weights: torch.Tensor,
    reward_func_names: list[str],
) -> None:
    """One entry per batch for every metric each round appended once, in place.

    ``marks[r]``: each metric's length before round ``r``; ``weights``: the rows of each round. Maxima
    and minima combine as such, other means weighted by rows; the reward statistics are recomputed
    exactly from the batch's gathered ``rewards_per_func`` as TRL computes them.
    """
    rounds = len(marks)
    for name, values in metrics.items():
        starts = [mark.get(name, 0) for mark in marks] + [len(values)]
        if any(starts[r + 1] - starts[r] != 1 for r in range(rounds)):
            continue
        head, tail = values[: starts[0]], values[starts[0] :]
        metrics[name] = [*head, _combine(name, tail, weights)]
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    for i, name in enumerate(reward_func_names):
        _replace_last(
            metrics, reward_function_metric(name, "mean"), torch.nanmean(rewards_per_func[:, i]).item()
        )
        _replace_last(metrics, reward_function_metric(name, "std"), nanstd(rewards_per_func[:, i]).item())
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    _replace_last(metrics, REWARD_METRIC, torch.nanmean(rewards).item())
    _replace_last(metrics, REWARD_STD_METRIC, nanstd(rewards).item())


def _replace_last(metrics: dict[str, list[float]], name: str, value: float) -> None:
    if metrics.get(name):
        metrics[name][-1] = value

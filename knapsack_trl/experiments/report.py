"""Results of arm-vs-arm runs: summaries, paired comparisons, the verdict, the table and the report folder.

One place for both ``knapsack-trl demo`` and ``knapsack-trl compare``, so the two always report the same
quantities the same way (plots: :mod:`.plots`). Runs are plain JSON-able records; the report folder holds
``results.json`` next to ``report.md`` and the PNGs, so any number can be traced back to its run.

The metrics, in the protocol's order (docs/benchmark_protocol.md, 2026-12-06):

1. rollouts for an arm's seed-mean held-out curve (T=1) to reach the best uniform arm's seed-mean final
   held-out accuracy, as a multiple of the rollouts that arm's own curve needed (the primary metric);
2. the area under held-out accuracy (T=1) against rollouts, as a mean accuracy over the run;
3. final held-out accuracy at equal budget, T=1 and greedy;
4. accuracy on (a fixed part of) the training pool;
5. wall-clock per step, and its parts where measured (generation, scoring, allocation, optimisation);
6. informative prompts and informative rollouts per step.

Every arm is compared with uniform, with its control (``ARMS[name].control``) and with the best uniform
group size, paired by seed, with 95% percentile-bootstrap intervals over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knapsack_trl.experiments.methods import ARMS, label, methods_in
from knapsack_trl.experiments.plots import make_plots
from knapsack_trl.experiments.statistics import bootstrap_interval, bootstrap_statistic

# Accuracy curves, rollouts to target and the equal-budget comparison use the held-out success rate of k
# samples at temperature 1: averaged over samples it moves smoothly, where greedy accuracy flips prompt by
# prompt.
TARGET_KEY = "reward"
# Per-step timing keys the harness records (seconds); "step" is the whole optimiser step.
TIMING_PARTS = ("generation", "scoring", "allocation", "optimisation")
# The paired per-seed quantities: (summary key, "ratio" or "delta").
PAIRED = {
    "auc": "delta",
    "final_reward": "delta",
    "final_accuracy": "delta",
    "final_train_reward": "delta",
    "seconds_per_step": "ratio",
    "informative_prompts": "ratio",
    "informative_rollouts": "ratio",
}
NAN2 = (math.nan, math.nan)


@dataclass
class RunRecord:
    """Everything one training run measured, step by step and at each held-out evaluation.

    ``steps``: one dict per generation batch with ``step``, ``rollouts``, ``rollouts_consumed``,
    ``groups``, ``useful_groups``, ``useful_rollouts``, ``reward_mean``, ``n_min``, ``n_mean``, ``n_max``.
    ``evals``: one dict per evaluation with ``step``, ``rollouts_consumed``, ``accuracy`` (greedy),
    ``reward`` (mean success of k samples at T=1), ``frac_mid``, optionally ``train_reward`` and
    ``reward_<level>``. ``allocation``: one step's ``p_estimate``, ``n`` and optionally ``p_true`` per
    prompt. Times, which no rerun reproduces, are in ``extra``: ``step_seconds`` (one dict per step,
    ``seconds_step`` and ``seconds_<part>``, :data:`TIMING_PARTS`) and ``eval_train_seconds`` (training
    time at each evaluation, evaluations excluded).
    """

    method: str
    seed: int
    steps: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    allocation: dict[str, Any] | None = None
    wall_time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def group_stats(
    prompt_ids: Sequence[Any], rewards: Sequence[float], threshold: float = 0.5
) -> dict[str, float]:
    """Per-step counts from one generation batch: groups, useful groups and rollouts, sizes.

    A group (all rollouts of one prompt) is useful when its binary outcomes are not all equal: then
    every one of its rollouts has a non-zero advantage. NaN rewards are left out of the variance.
    """
    groups: dict[Any, list[float]] = {}
    for pid, r in zip(prompt_ids, rewards):
        groups.setdefault(pid, []).append(float(r))
    sizes = np.array([len(v) for v in groups.values()], dtype=np.float64)
    useful = []
    for v in groups.values():
        outcomes = {x > threshold for x in v if not math.isnan(x)}
        useful.append(len(outcomes) > 1)
    useful_arr = np.array(useful, dtype=bool)
    finite = [float(r) for r in rewards if not math.isnan(float(r))]
    group_means = [np.mean(f) for f in ([x for x in v if not math.isnan(x)] for v in groups.values()) if f]
    return {
        "rollouts": float(sizes.sum()),
        "groups": float(len(groups)),
        "useful_groups": float(useful_arr.sum()),
        "useful_rollouts": float(sizes[useful_arr].sum()),
        "reward_mean": float(np.mean(finite)) if finite else math.nan,
        # each prompt weighs the same: the reward that compares across allocations
        "prompt_reward_mean": float(np.mean(group_means)) if group_means else math.nan,
        "n_min": float(sizes.min()) if sizes.size else 0.0,
        "n_mean": float(sizes.mean()) if sizes.size else 0.0,
        "n_max": float(sizes.max()) if sizes.size else 0.0,
    }


def rollouts_to_reach(
    evals: Sequence[dict[str, float]], target: float, key: str = TARGET_KEY
) -> float | None:
    """Rollouts consumed when the held-out ``key`` first reaches ``target`` (linear between evaluations).

    None when the run never gets there.
    """
    x = [float(e["rollouts_consumed"]) for e in evals]
    y = [float(e[key]) for e in evals]
    reached = first_reach(np.asarray(x), np.asarray(y), target)
    return None if math.isinf(reached) else reached


def first_reach(x: np.ndarray, y: np.ndarray, target: float | np.ndarray) -> Any:
    """Where the curve ``y(x)`` first reaches ``target``, linear between points; ``inf`` when it never
    does. ``y`` may hold one curve per row (``target`` one value per row): one answer per row."""
    y2 = np.atleast_2d(np.asarray(y, dtype=np.float64))
    t = np.broadcast_to(np.asarray(target, dtype=np.float64), (y2.shape[0],))[:, None]
    hit = y2 >= t - 1e-12
    found = hit.any(axis=1)
    i = np.argmax(hit, axis=1)
    rows = np.arange(y2.shape[0])
    prev = np.maximum(i - 1, 0)
    y_i, y_prev = y2[rows, i], y2[rows, prev]
    step = np.where((i == 0) | (y_i == y_prev), 1.0, y_i - y_prev)
    frac = np.where((i == 0) | (y_i == y_prev), 1.0, (t[:, 0] - y_prev) / step)
    x = np.asarray(x, dtype=np.float64)
    out = np.where(found, x[prev] + frac * (x[i] - x[prev]), np.inf)
    return float(out[0]) if np.ndim(y) == 1 else out


def area_under_accuracy(evals: Sequence[dict[str, float]], key: str = TARGET_KEY) -> float:
    """The area under held-out ``key`` against rollouts consumed (trapezoids), divided by the rollouts: the
    run's mean held-out accuracy per rollout, start included."""
    x = np.array([float(e["rollouts_consumed"]) for e in evals])
    y = np.array([float(e[key]) for e in evals])
    if x.size < 2 or x[-1] <= x[0]:
        return math.nan
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def _step_mean(steps: Sequence[dict[str, float]], key: str) -> float:
    values = [float(s[key]) for s in steps if key in s]
    return float(np.mean(values)) if values else math.nan


def summarize_run(run: RunRecord, target: float | None = None) -> dict[str, float | None]:
    """Headline numbers of one run: held-out accuracy (area, final, gain), training pool, time per step and
    its parts, informative prompts and rollouts per step, and the rollout-level share."""
    rollouts = sum(s["rollouts"] for s in run.steps)
    groups = sum(s["groups"] for s in run.steps)
    final = run.evals[-1] if run.evals else {}
    start = float(run.evals[0][TARGET_KEY]) if run.evals else math.nan
    out: dict[str, float | None] = {
        "auc": area_under_accuracy(run.evals) if run.evals else math.nan,
        "start_reward": start,
        "final_reward": float(final.get("reward", math.nan)),
        "gain": float(final.get("reward", math.nan)) - start,
        "final_accuracy": float(final.get("accuracy", math.nan)),
        "final_train_reward": float(final.get("train_reward", math.nan)),
        "seconds_per_step": _step_mean(run.extra.get("step_seconds", []), "seconds_step"),
        **{
            f"seconds_{p}": _step_mean(run.extra.get("step_seconds", []), f"seconds_{p}")
            for p in TIMING_PARTS
        },
        "informative_prompts": _step_mean(run.steps, "useful_groups"),
        "informative_rollouts": _step_mean(run.steps, "useful_rollouts"),
        "egr_rollouts": sum(s["useful_rollouts"] for s in run.steps) / rollouts if rollouts else math.nan,
        "egr_groups": sum(s["useful_groups"] for s in run.steps) / groups if groups else math.nan,
        "prompt_reward_mean": _step_mean(run.steps, "prompt_reward_mean"),
        "rollouts_consumed": float(rollouts),
        "wall_time_s": float(run.wall_time_s),
    }
    for key, value in final.items():
        if key.startswith("reward_"):
            out[f"final_{key}"] = float(value)
    if run.evals:
        for key, value in run.evals[0].items():
            if key.startswith("reward_"):
                out[f"start_{key}"] = float(value)
    out["rollouts_to_target"] = None if target is None else rollouts_to_reach(run.evals, target)
    return out


def uniform_arms(methods: Iterable[str]) -> list[str]:
    """The arms among ``methods`` that are stock uniform GRPO (any group size): the baselines."""
    out = []
    for m in methods:
        arm = ARMS.get(m)
        if arm is not None and (
            arm.fields.get("knapsack_mode") == "uniform" or arm.fields.get("knapsack_enabled") is False
        ):
            out.append(m)
    return out


def _mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return float(np.mean(vals)), std, len(vals)


class _Curves:
    """Each arm's held-out curves (T=1) on one rollout grid, seed by seed, for the rollouts-to-target
    statistic and its bootstrap."""

    def __init__(self, runs: Sequence[RunRecord], seeds: Sequence[int]) -> None:
        by_key = {(r.method, r.seed): r for r in runs if r.evals}
        grids = [np.array([float(e["rollouts_consumed"]) for e in r.evals]) for r in by_key.values()]
        self.grid = max(grids, key=len) if grids else np.zeros(0)
        self.seeds = list(seeds)
        self.y: dict[str, np.ndarray] = {}
        for m in {m for m, _ in by_key}:
            rows = []
            for s in self.seeds:
                r = by_key.get((m, s))
                if r is None:
                    rows.append(np.full(self.grid.size, np.nan))
                    continue
                x = np.array([float(e["rollouts_consumed"]) for e in r.evals])
                y = np.array([float(e[TARGET_KEY]) for e in r.evals])
                rows.append(np.interp(self.grid, x, y))
            self.y[m] = np.vstack(rows)

    def _mean(self, method: str, idx: np.ndarray | None) -> np.ndarray:
        """Mean curve over the seeds ``idx`` (one row of indices per resample: one curve per row)."""
        y = self.y[method]
        return np.nanmean(y, axis=0)[None] if idx is None else np.nanmean(y[np.atleast_2d(idx)], axis=1)

    def final(self, method: str, idx: np.ndarray | None = None) -> Any:
        """``method``'s mean final held-out accuracy over the seeds ``idx`` (one per row of ``idx``)."""
        out = self._mean(method, idx)[:, -1]
        return float(out[0]) if idx is None or np.ndim(idx) == 1 else out

    def reach(self, method: str, target: Any, idx: np.ndarray | None = None) -> Any:
        """Rollouts at which ``method``'s mean curve over the seeds ``idx`` first reaches ``target``."""
        out = first_reach(self.grid, self._mean(method, idx), target)
        return float(out[0]) if idx is None or np.ndim(idx) == 1 else out

    def ratio(self, method: str, reference: str, idx: np.ndarray | None = None) -> Any:
        """Rollouts for ``method`` to reach ``reference``'s final accuracy, as a multiple of ``reference``'s
        own: ``inf`` when ``method`` never gets there. One value, or one per row of ``idx``."""
        rows = None if idx is None else np.atleast_2d(idx)
        target = self._mean(reference, rows)[:, -1]
        own = first_reach(self.grid, self._mean(reference, rows), target)
        mine = first_reach(self.grid, self._mean(method, rows), target)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(
                np.isinf(mine), np.inf, np.where(own > 0, mine / np.where(own > 0, own, 1), np.nan)
            )
        return float(out[0]) if idx is None or np.ndim(idx) == 1 else out


def _paired(per_run: dict[tuple[str, int], dict[str, Any]], a: str, b: str, seeds: Sequence[int]) -> dict:
    """Per-seed ratios / differences of ``a`` against ``b`` for every :data:`PAIRED` key: mean, std, n and
    the bootstrap interval of the mean."""
    out: dict[str, Any] = {}
    for key, kind in PAIRED.items():
        values = []
        for s in seeds:
            x, y = per_run.get((a, s)), per_run.get((b, s))
            if x is None or y is None:
                continue
            u, v = x.get(key), y.get(key)
            if u is None or v is None or math.isnan(u) or math.isnan(v):
                continue
            if kind == "ratio":
                if v:
                    values.append(u / v)
            else:
                values.append(u - v)
        out[key] = (*_mean_std(values), bootstrap_interval(values))
    return out


def _rollouts_ratio(
    curves: _Curves, per_run: dict[tuple[str, int], Any], method: str, other: str, seeds: Sequence[int]
) -> tuple[float, tuple[float, float]]:
    """:meth:`_Curves.ratio` of ``method`` against ``other`` on the seeds both ran, and its bootstrap
    interval (the seeds resampled together for both arms)."""
    both = np.array([i for i, s in enumerate(seeds) if (method, s) in per_run and (other, s) in per_run])
    if not both.size:
        return math.nan, NAN2
    point = curves.ratio(method, other, both)
    return point, bootstrap_statistic(lambda idx: curves.ratio(method, other, both[idx]), both.size)


def comparators(method: str, best_uniform: str | None, methods: Sequence[str]) -> dict[str, str]:
    """Who ``method`` is judged against, by role: uniform, its control, the best uniform group size (each
    once, in that order, never itself, only arms that ran)."""
    roles: dict[str, str] = {}
    arm = ARMS.get(method)
    candidates = [
        ("uniform", "uniform"),
        ("its control", arm.control if arm is not None else "uniform"),
        ("the best uniform group size", best_uniform),
    ]
    for role, other in candidates:
        if other is None or other == method or other not in methods:
            continue
        if other in roles.values():
            first = next(r for r, o in roles.items() if o == other)
            roles[f"{first}, {role}"] = roles.pop(first)
            continue
        roles[role] = other
    return roles


def aggregate(runs: Sequence[RunRecord], target: float | None = None) -> dict[str, Any]:
    """Per-arm mean, std and count of every summary number, the best uniform group size, and every arm's
    paired comparisons with uniform, its control and the best uniform group size.

    ``target`` (optional) overrides the held-out accuracy of the per-run ``rollouts_to_target`` column;
    the comparisons always use each reference arm's own seed-mean final accuracy.
    """
    methods = methods_in(runs)
    seeds = sorted({r.seed for r in runs})
    uniforms = uniform_arms(methods)
    per_run = {(r.method, r.seed): summarize_run(r, target) for r in runs}
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for m in methods:
        rows = [s for (mm, _), s in per_run.items() if mm == m]
        keys = sorted({k for row in rows for k in row})
        table[m] = {k: _mean_std(row.get(k) for row in rows) for k in keys}
    best_uniform = max(uniforms, key=lambda m: table[m]["final_reward"][0]) if uniforms else None
    curves = _Curves(runs, seeds)
    gains = {}
    for m in methods:
        values = [per_run[(m, s)]["gain"] for s in seeds if (m, s) in per_run]
        gains[m] = (*_mean_std(values), bootstrap_interval(values))
    reach = {}
    if best_uniform is not None:
        target_best = curves.final(best_uniform)
        reach = {m: curves.reach(m, target_best) for m in methods}
    comparisons: dict[str, dict[str, dict[str, Any]]] = {}
    for m in methods:
        comparisons[m] = {}
        for role, other in comparators(m, best_uniform, methods).items():
            paired = _paired(per_run, m, other, seeds)
            paired["rollouts_ratio"] = _rollouts_ratio(curves, per_run, m, other, seeds)
            comparisons[m][role] = {"against": other, **paired}
    return {
        "methods": methods,
        "seeds": seeds,
        "table": table,
        "uniform_arms": uniforms,
        "best_uniform": best_uniform,
        "best_uniform_final": None if best_uniform is None else curves.final(best_uniform),
        "reach": reach,
        "gains": gains,
        "comparisons": comparisons,
        "target": target,
    }


def best_method(agg: dict[str, Any]) -> str | None:
    """The protocol's best arm: the non-uniform, non-oracle arm with the fewest rollouts (as a multiple of
    the best uniform group size's) to the best uniform group size's final held-out accuracy; ties and arms
    that never get there are ordered by the area under their held-out curve. None without such an arm."""
    best = agg.get("best_uniform")
    candidates = [
        m for m in agg["methods"] if m not in agg["uniform_arms"] and not (m in ARMS and ARMS[m].oracle)
    ]
    if best is None or not candidates:
        return None

    def key(m: str) -> tuple[float, float]:
        ratio = _role(agg, m, best).get("rollouts_ratio", (math.inf, NAN2))[0]
        auc = agg["table"][m]["auc"][0]
        return (ratio if not math.isnan(ratio) else math.inf, -auc if not math.isnan(auc) else math.inf)

    return min(candidates, key=key)


def _role(agg: dict[str, Any], method: str, against: str) -> dict[str, Any]:
    """``method``'s comparison with the arm ``against`` (whatever role it plays), or {}."""
    for comparison in agg["comparisons"].get(method, {}).values():
        if comparison["against"] == against:
            return comparison
    return {}


# --------------------------------------------------------------------------- formatting


def _fmt(ms: tuple[float, float, int], digits: int = 3, pct: bool = False, show_std: bool = True) -> str:
    mean, std, n = ms
    if n == 0 or math.isnan(mean):
        return "n/a"
    scale = 100.0 if pct else 1.0
    body = f"{mean * scale:.{digits}f}"
    if show_std and n > 1:
        body += f" ± {std * scale:.{digits}f}"
    return body + ("%" if pct else "")


def _x(value: float) -> str:
    return "not reached" if math.isinf(value) else f"x{value:.2f}"


def _ratio_text(point: float, ci: tuple[float, float]) -> str:
    """``x0.62 [0.48, 0.81]``; an end at ``inf`` reads "not reached"."""
    if math.isnan(point):
        return "n/a"
    body = _x(point)
    if math.isnan(ci[0]):
        return body
    hi = "not reached" if math.isinf(ci[1]) else f"{ci[1]:.2f}"
    lo = "not reached" if math.isinf(ci[0]) else f"{ci[0]:.2f}"
    return f"{body} [{lo}, {hi}]"


def _ratio(ms: tuple[float, float, int], ci: tuple[float, float]) -> str:
    """``x1.15 [1.10, 1.20]``: a mean ratio over seeds with its bootstrap interval (when there is one)."""
    mean, _, n = ms
    if n == 0 or math.isnan(mean):
        return "n/a"
    return f"x{mean:.2f}" + ("" if math.isnan(ci[0]) else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def _points(ms: tuple[float, float, int], ci: tuple[float, float]) -> str:
    """``+1.2 points [-0.5, +2.9]``: a mean difference in accuracy points with its bootstrap interval."""
    mean, _, n = ms
    if n == 0 or math.isnan(mean):
        return "n/a"
    body = f"{mean * 100:+.1f} points"
    return body + ("" if math.isnan(ci[0]) else f" [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]")


def _paired_text(c: dict[str, Any], key: str) -> str:
    mean, std, n, ci = c[key]
    fmt = _ratio if PAIRED[key] == "ratio" else _points
    return fmt((mean, std, n), ci)


def _seconds(t: dict[str, tuple[float, float, int]]) -> str:
    """``0.41 (0.22 / 0.00 / 0.01 / 0.18)``: seconds per step and its measured parts."""
    total = _fmt(t.get("seconds_per_step", (math.nan, 0.0, 0)), 2, show_std=False)
    parts = [t.get(f"seconds_{p}", (math.nan, 0.0, 0)) for p in TIMING_PARTS]
    if all(p[2] == 0 or math.isnan(p[0]) for p in parts):
        return total
    return total + " (" + " / ".join(_fmt(p, 2, show_std=False) for p in parts) + ")"


def format_table(agg: dict[str, Any]) -> str:
    """The headline table as markdown (it also reads fine in a terminal), columns in the protocol's order."""
    best = agg.get("best_uniform")
    has_train = any(agg["table"][m].get("final_train_reward", (0, 0, 0))[2] for m in agg["methods"])
    header = [
        "method",
        "rollouts to the best uniform's final acc." if best else "rollouts to target",
        "held-out acc. area (T=1)",
        "final held-out acc. (T=1)",
        "gain over the run (T=1)",
        "final held-out acc. (greedy)",
        *(["training pool acc. (T=1)"] if has_train else []),
        "s/step (generation / scoring / allocation / optimisation)",
        "informative prompts per step",
        "informative rollouts per step",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in agg["methods"]:
        t = agg["table"][m]
        if best:
            if m == best:
                reach = "x1.00 (reference)"
            else:
                ratio = _role(agg, m, best).get("rollouts_ratio", (math.nan, NAN2))
                reach = _ratio_text(*ratio)
        else:
            reach = _fmt(t.get("rollouts_to_target", (math.nan, 0.0, 0)), 0)
        row = [
            label(m),
            reach,
            _fmt(t["auc"], 3),
            _fmt(t["final_reward"], 3),
            _points(agg["gains"][m][:3], agg["gains"][m][3]),
            _fmt(t["final_accuracy"], 3),
            *([_fmt(t["final_train_reward"], 3)] if has_train else []),
            _seconds(t),
            _fmt(t["informative_prompts"], 1),
            _fmt(t["informative_rollouts"], 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_levels(agg: dict[str, Any]) -> str:
    """Held-out accuracy (T=1) per difficulty level: the start, then each arm's final (mean over seeds);
    empty when the evaluations carry no levels."""
    levels = sorted(
        {
            k[len("final_reward_") :]
            for m in agg["methods"]
            for k in agg["table"][m]
            if k.startswith("final_reward_")
        }
    )
    if not levels:
        return ""
    first = agg["methods"][0]
    lines = ["| method | " + " | ".join(levels) + " |", "|" + "---|" * (len(levels) + 1)]
    start = [
        _fmt(agg["table"][first].get(f"start_reward_{lv}", (math.nan, 0.0, 0)), 3, show_std=False)
        for lv in levels
    ]
    lines.append("| start (every arm) | " + " | ".join(start) + " |")
    for m in agg["methods"]:
        cells = [_fmt(agg["table"][m].get(f"final_reward_{lv}", (math.nan, 0.0, 0)), 3) for lv in levels]
        lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_ratios(agg: dict[str, Any]) -> str:
    """One line per arm and comparator (uniform, its control, the best uniform group size), paired by seed,
    each figure with its 95% bootstrap interval over seeds, in the protocol's order."""
    out = []
    for m in agg["methods"]:
        for role, c in agg["comparisons"][m].items():
            other = c["against"]
            reach = c.get("rollouts_ratio")
            reach_text = "n/a" if reach is None else _ratio_text(*reach)
            out.append(
                f"- {label(m)} vs {label(other)} ({role}): rollouts to its final acc. {reach_text}; "
                f"area {_paired_text(c, 'auc')}; final T=1 {_paired_text(c, 'final_reward')}, greedy "
                f"{_paired_text(c, 'final_accuracy')}"
                + (
                    f"; training pool {_paired_text(c, 'final_train_reward')}"
                    if c["final_train_reward"][2]
                    else ""
                )
                + (f"; s/step {_paired_text(c, 'seconds_per_step')}" if c["seconds_per_step"][2] else "")
                + f"; informative prompts {_paired_text(c, 'informative_prompts')}, rollouts "
                f"{_paired_text(c, 'informative_rollouts')}"
            )
    return "\n".join(out)


def verdict(agg: dict[str, Any], task: str) -> str:
    """The result in one sentence: the best arm on the primary metric against the best uniform group size,
    with intervals, and whether the targets (<= x0.7 with the interval below 1; final accuracy not lower)
    are met. With uniform arms only: the best group size and uniform's gain over the run (the validity
    check)."""
    n = len(agg["seeds"])
    head = f"{task}, {n} seed{'s' if n > 1 else ''}, 95% bootstrap intervals: "
    best = agg.get("best_uniform")
    if best is None:
        return head + "no uniform arm ran, so there is no baseline to judge against."
    gain = agg["gains"][best]
    baseline = (
        f"the best uniform group size is {label(best)} (final held-out acc. {agg['best_uniform_final']:.3f} at "
        f"T=1, {_points(gain[:3], gain[3])} over the run)"
    )
    m = best_method(agg)
    if m is None:
        return head + baseline + "; no other arm ran."
    c = _role(agg, m, best)
    point, ci = c.get("rollouts_ratio", (math.nan, NAN2))
    final = c["final_reward"]
    reach_met = point <= 0.7 and not math.isnan(ci[1]) and ci[1] < 1
    final_met = not math.isnan(final[3][0]) and final[3][0] >= 0
    if reach_met and final_met:
        targets = "both targets met"
    elif reach_met or final_met:
        targets = "targets (x0.7 with the interval below 1; final accuracy not lower) met for " + (
            "rollouts only" if reach_met else "final accuracy only"
        )
    else:
        targets = "targets (x0.7 with the interval below 1; final accuracy not lower) missed"
    reach = (
        "never reached it" if math.isinf(point) else f"reached it with {_ratio_text(point, ci)} its rollouts"
    )
    return (
        head + baseline + f"; the best other arm, {label(m)}, {reach}, area {_paired_text(c, 'auc')}, final "
        f"{_paired_text(c, 'final_reward')} at equal budget (greedy {_paired_text(c, 'final_accuracy')}); "
        + targets
        + "."
    )


# --------------------------------------------------------------------------- the report folder


def _report_lines(
    agg: dict[str, Any],
    title: str,
    settings: dict[str, Any] | None,
    notes: Sequence[str],
    plots: dict[str, Path],
    headline: str | None = None,
) -> list[str]:
    """The markdown report, line by line: the headline, the table, the comparisons, levels, definitions,
    notes, settings, plots."""
    n_seeds = len(agg["seeds"])
    lines = [f"# {title}", ""] + ([f"**{headline}**", ""] if headline else [])
    lines += [
        "## Results" + (f" (mean ± std over {n_seeds} seeds)" if n_seeds > 1 else ""),
        "",
        format_table(agg),
        "",
        format_ratios(agg),
        "",
    ]
    levels = format_levels(agg)
    if levels:
        lines += ["### Held-out accuracy (T=1) per level", "", levels, ""]
    lines += [
        "Definitions. Rollouts to the best uniform's final acc.: rollouts for an arm's held-out curve "
        "(T=1, mean over seeds, linear between evaluations) to reach the best uniform arm's final held-out "
        "accuracy (mean over seeds), as a multiple of the rollouts the reference's own curve needed; against "
        "any other arm, that arm's final accuracy is the target. Area: the held-out accuracy (T=1) averaged "
        "over the rollouts consumed (the area under the curve divided by the budget). Held-out acc. (T=1): "
        "the mean success of k samples at temperature 1 on problems never trained on; greedy: one greedy "
        "answer each. Training pool acc.: the same measure on a fixed part of the GRPO prompts. s/step: "
        "training time per optimiser step, evaluations excluded; its parts where measured. Informative "
        "prompts: prompts whose group had mixed binary outcomes (a non-zero advantage); informative "
        "rollouts: the rollouts in those groups. Intervals: 95% percentile bootstrap over seeds, paired by "
        "seed (for rollouts to target, of the seed-mean curves).",
        "",
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if settings:
        lines += ["## Settings", ""]
        lines += [f"- `{k}`: {v}" for k, v in settings.items()]
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{kind}]({p.name})" for kind, p in plots.items()]
    lines.append("")
    return lines


def write_report(
    runs: Sequence[RunRecord],
    out_dir: str | Path,
    *,
    title: str,
    settings: dict[str, Any] | None = None,
    target: float | None = None,
    notes: Sequence[str] = (),
    verdict_task: str | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json`` and the PNGs into ``out_dir``; return the aggregate.

    ``verdict_task`` (e.g. "Levels task"): the report opens with :func:`verdict`'s sentence. ``target``
    (optional): a fixed held-out accuracy for the plots' target line and the per-run column.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(runs, target)
    line = target if target is not None else agg.get("best_uniform_final")
    plots = make_plots(runs, out, line)
    headline = None if verdict_task is None else verdict(agg, verdict_task)
    agg["verdict"] = headline
    lines = _report_lines(agg, title, settings, notes, plots, headline)
    (out / "report.md").write_text("\n".join(lines))
    payload = {
        "title": title,
        "settings": settings or {},
        "target": target,
        "aggregate": _jsonable(agg),
        "runs": [r.to_dict() for r in runs],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default))
    return agg


def load_runs(path: str | Path) -> list[RunRecord]:
    """Runs from a ``results.json`` written by :func:`write_report` (a file or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return [RunRecord.from_dict(d) for d in json.loads(p.read_text())["runs"]]


def to_json(data: Any) -> str:
    """``data`` as the report folder's JSON files hold it: numpy values as plain ones, NaN kept, so
    :meth:`RunRecord.from_dict` of the parsed text gives back the same numbers."""
    return json.dumps(data, indent=1, default=_json_default)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")

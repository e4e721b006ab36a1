"""Results of uniform-vs-knapsack runs: summaries, the table and the markdown report (plots: :mod:`.plots`).

One place for both ``knapsack-trl demo`` (one seed) and ``knapsack-trl compare`` (several seeds), so the
two always report the same quantities the same way. Runs are plain JSON-able records; the report folder
holds ``results.json`` next to ``report.md`` and the PNGs, so any number can be traced back to its run.
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
from knapsack_trl.experiments.statistics import bootstrap_interval

# "Rollouts to target" and the equal-budget comparison use the held-out success rate of k samples at
# temperature 1: averaged over samples it moves smoothly, where greedy accuracy flips prompt by prompt.
TARGET_KEY = "reward"


@dataclass
class RunRecord:
    """Everything one training run measured, step by step and at each held-out evaluation.

    ``steps``: one dict per generation batch with ``step``, ``rollouts``, ``rollouts_consumed``,
    ``groups``, ``useful_groups``, ``useful_rollouts``, ``reward_mean``, ``n_min``, ``n_mean``, ``n_max``.
    ``evals``: one dict per evaluation with ``step``, ``rollouts_consumed``, ``accuracy`` (greedy),
    ``reward`` (mean success of k samples at T=1) and ``frac_mid`` (held-out prompts with 0<p<1).
    ``allocation``: one step's ``p_estimate``, ``n`` and optionally ``p_true`` per prompt.
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
    prev_x, prev_y = None, None
    for e in evals:
        x, y = float(e["rollouts_consumed"]), float(e[key])
        if y >= target:
            if prev_x is None or prev_y is None or y == prev_y:
                return x
            return prev_x + (target - prev_y) / (y - prev_y) * (x - prev_x)
        prev_x, prev_y = x, y
    return None


def summarize_run(run: RunRecord, target: float | None = None) -> dict[str, float | None]:
    """Headline numbers of one run: informative prompts per step first, then the rollout-level ratio,
    final held-out scores, rollouts, time."""
    rollouts = sum(s["rollouts"] for s in run.steps)
    groups = sum(s["groups"] for s in run.steps)
    final = run.evals[-1] if run.evals else {}
    out: dict[str, float | None] = {
        "informative_prompts": (
            sum(s["useful_groups"] for s in run.steps) / len(run.steps) if run.steps else math.nan
        ),
        "egr_rollouts": sum(s["useful_rollouts"] for s in run.steps) / rollouts if rollouts else math.nan,
        "egr_groups": sum(s["useful_groups"] for s in run.steps) / groups if groups else math.nan,
        "prompt_reward_mean": (
            float(np.mean([s.get("prompt_reward_mean", math.nan) for s in run.steps]))
            if run.steps
            else math.nan
        ),
        "start_reward": float(run.evals[0]["reward"]) if run.evals else math.nan,
        "final_accuracy": float(final.get("accuracy", math.nan)),
        "final_reward": float(final.get("reward", math.nan)),
        "final_train_reward": float(final.get("train_reward", math.nan)),
        "best_reward": max((float(e["reward"]) for e in run.evals), default=math.nan),
        "rollouts_consumed": float(rollouts),
        "n_max_seen": max((s["n_max"] for s in run.steps), default=math.nan),
        "wall_time_s": float(run.wall_time_s),
    }
    out["rollouts_to_target"] = None if target is None else rollouts_to_reach(run.evals, target)
    return out


def default_target(runs: Sequence[RunRecord], fraction: float = 0.9) -> float | None:
    """Target held-out success (``TARGET_KEY``): start + ``fraction`` of uniform's mean gain over the run.

    Anchored on the uniform runs so "rollouts to target" asks how soon each method gets where uniform
    gets with its whole budget (the paper's "about 2x the compute" comparison).
    """
    uni = [r for r in runs if r.method == "uniform" and r.evals]
    if not uni:
        return None
    start = float(np.mean([r.evals[0][TARGET_KEY] for r in uni]))
    end = float(np.mean([r.evals[-1][TARGET_KEY] for r in uni]))
    if end <= start:
        return None
    return start + fraction * (end - start)


def _mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return float(np.mean(vals)), std, len(vals)


def aggregate(runs: Sequence[RunRecord], target: float | None = None) -> dict[str, Any]:
    """Per-method mean, std and count of every summary number, plus knapsack/uniform ratios.

    Ratios are taken per seed (runs with the same seed are paired) and then averaged, so seed-to-seed
    variation of the task does not inflate them.
    """
    methods = methods_in(runs)
    per_run = {(r.method, r.seed): summarize_run(r, target) for r in runs}
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for m in methods:
        rows = [s for (mm, _), s in per_run.items() if mm == m]
        keys = rows[0].keys() if rows else []
        table[m] = {k: _mean_std(row[k] for row in rows) for k in keys}
        table[m]["reached_target"] = (
            float(sum(row.get("rollouts_to_target") is not None for row in rows)),
            0.0,
            len(rows),
        )
    ratios: dict[str, dict[str, tuple[float, float, int]]] = {}
    seeds = sorted({r.seed for r in runs})
    for m in methods:
        if m == "uniform":
            continue
        informative, egr, rtt, dacc, drew, dtrain = [], [], [], [], [], []
        for s in seeds:
            a, b = per_run.get((m, s)), per_run.get(("uniform", s))
            if a is None or b is None:
                continue
            if b["informative_prompts"]:
                informative.append(a["informative_prompts"] / b["informative_prompts"])
            if b["egr_rollouts"]:
                egr.append(a["egr_rollouts"] / b["egr_rollouts"])
            if a.get("rollouts_to_target") is not None and b.get("rollouts_to_target"):
                rtt.append(a["rollouts_to_target"] / b["rollouts_to_target"])
            dacc.append(a["final_accuracy"] - b["final_accuracy"])
            drew.append(a["final_reward"] - b["final_reward"])
            dtrain.append(a["final_train_reward"] - b["final_train_reward"])
        paired = {
            "informative_ratio": informative,
            "egr_ratio": egr,
            "rollouts_to_target_ratio": rtt,
            "final_accuracy_delta": dacc,
            "final_reward_delta": drew,
            "final_train_reward_delta": dtrain,
        }
        ratios[m] = {key: _mean_std(values) for key, values in paired.items()}
        ratios[m]["interval"] = {key: bootstrap_interval(values) for key, values in paired.items()}
    return {"methods": methods, "table": table, "ratios": ratios, "target": target, "seeds": seeds}


def _fmt(ms: tuple[float, float, int], digits: int = 3, pct: bool = False, show_std: bool = True) -> str:
    mean, std, n = ms
    if n == 0 or math.isnan(mean):
        return "n/a"
    scale = 100.0 if pct else 1.0
    body = f"{mean * scale:.{digits}f}"
    if show_std and n > 1:
        body += f" ± {std * scale:.{digits}f}"
    return body + ("%" if pct else "")


def format_table(agg: dict[str, Any]) -> str:
    """The headline table as markdown (it also reads fine in a terminal)."""
    multi = len(agg["seeds"]) > 1
    has_train = any(agg["table"][m]["final_train_reward"][2] for m in agg["methods"])
    header = [
        "method",
        "informative prompts per step",
        "share of prompts informative",
        "rollout-level ratio",
        "training reward per prompt",
        "held-out acc. (T=1)",
        "held-out acc. (greedy)",
        *(["train prompts acc. (T=1)"] if has_train else []),
        "rollouts consumed",
        "rollouts to target",
        "wall time (s)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in agg["methods"]:
        t = agg["table"][m]
        reached = t["reached_target"]
        rtt = _fmt(t["rollouts_to_target"], 0) if t["rollouts_to_target"][2] else "not reached"
        if multi and reached[0] < reached[2] and t["rollouts_to_target"][2]:
            rtt += f" ({int(reached[0])}/{reached[2]} seeds)"
        row = [
            label(m),
            _fmt(t["informative_prompts"], 1),
            _fmt(t["egr_groups"], 1, pct=True),
            _fmt(t["egr_rollouts"], 1, pct=True),
            _fmt(t["prompt_reward_mean"], 3),
            _fmt(t["final_reward"], 3),
            _fmt(t["final_accuracy"], 3),
            *([_fmt(t["final_train_reward"], 3)] if has_train else []),
            _fmt(t["rollouts_consumed"], 0, show_std=False),
            rtt,
            _fmt(t["wall_time_s"], 0),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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


def format_ratios(agg: dict[str, Any]) -> str:
    """One line per non-uniform method against uniform, paired by seed: informative prompts first, then
    rollouts to target and final accuracy, each with its 95% bootstrap interval over seeds."""
    out = []
    n_seeds = len(agg["seeds"])
    for m, r in agg["ratios"].items():
        ci = r.get("interval", {})
        nan2 = (math.nan, math.nan)
        reached = r["rollouts_to_target_ratio"][2]
        out.append(
            f"- {label(m)} vs uniform: informative prompts per step "
            f"{_ratio(r['informative_ratio'], ci.get('informative_ratio', nan2))}, rollouts to target "
            f"{_ratio(r['rollouts_to_target_ratio'], ci.get('rollouts_to_target_ratio', nan2))} (below 1: sooner"
            + (f"; {reached} of {n_seeds} seeds reached it both ways" if n_seeds > 1 else "")
            + "), final held-out acc. (T=1) "
            f"{_points(r['final_reward_delta'], ci.get('final_reward_delta', nan2))}, greedy "
            f"{_points(r['final_accuracy_delta'], ci.get('final_accuracy_delta', nan2))}"
            + (
                f", train prompts {_points(r['final_train_reward_delta'], ci.get('final_train_reward_delta', nan2))}"
                if r["final_train_reward_delta"][2]
                else ""
            )
            + f"; rollout-level ratio {_ratio(r['egr_ratio'], ci.get('egr_ratio', nan2))}"
        )
    return "\n".join(out)


def best_method(agg: dict[str, Any]) -> str | None:
    """The non-oracle method with the highest mean informative-prompt ratio to uniform (the protocol's
    "best arm"); None with no such method."""
    candidates = {
        m: r["informative_ratio"][0]
        for m, r in agg["ratios"].items()
        if not (m in ARMS and ARMS[m].oracle)
        and r["informative_ratio"][2]
        and not math.isnan(r["informative_ratio"][0])
    }
    return max(candidates, key=lambda m: candidates[m]) if candidates else None


def verdict(agg: dict[str, Any], task: str) -> str:
    """The result in one sentence: the best arm's informative prompts, rollouts to target and final
    accuracy against uniform, with their intervals, and whether the protocol's targets were met."""
    m = best_method(agg)
    if m is None:
        return (
            f"{task}: no method has an informative-prompt ratio to uniform (no other method ran, or uniform "
            "had no informative prompts on every seed): run longer or from a warmer start."
        )
    r, n = agg["ratios"][m], len(agg["seeds"])
    ci = r.get("interval", {})
    nan2 = (math.nan, math.nan)
    inf_ms, rtt_ms = r["informative_ratio"], r["rollouts_to_target_ratio"]
    inf_ci, rtt_ci = ci.get("informative_ratio", nan2), ci.get("rollouts_to_target_ratio", nan2)
    met_inf = inf_ms[0] >= 1.2 and inf_ci[0] > 1
    met_rtt = rtt_ms[2] > 0 and rtt_ms[0] <= 0.7 and rtt_ci[1] < 1
    targets = (
        "both targets met"
        if met_inf and met_rtt
        else "targets (x1.2 above 1; x0.7 below 1) "
        + (
            "met for informative prompts only"
            if met_inf
            else "met for rollouts to target only"
            if met_rtt
            else "missed"
        )
    )
    if agg.get("target") is None:
        reach = "had no rollouts-to-target comparison (uniform did not improve held-out accuracy)"
    elif not rtt_ms[2]:
        reach = f"reached the held-out target on no seed where uniform also did (of {n})"
    else:
        reach = (
            f"reached the held-out target with {_ratio(rtt_ms, rtt_ci)} its rollouts ({rtt_ms[2]} of {n} "
            "seeds reached it both ways)"
        )
    return (
        f"{task}, {n} seed{'s' if n > 1 else ''}, 95% bootstrap intervals: {label(m)} gave "
        f"{_ratio(inf_ms, inf_ci)} uniform's informative prompts per step, {reach} and ended "
        f"{_points(r['final_reward_delta'], ci.get('final_reward_delta', nan2))} in held-out accuracy at equal "
        f"budget; {targets}."
    )


def _report_lines(
    agg: dict[str, Any],
    title: str,
    settings: dict[str, Any] | None,
    target: float | None,
    notes: Sequence[str],
    plots: dict[str, Path],
    headline: str | None = None,
) -> list[str]:
    """The markdown report, line by line: the headline, settings, the table, the ratios, definitions,
    notes, plots."""
    n_seeds = len(agg["seeds"])
    lines = [f"# {title}", ""] + ([f"**{headline}**", ""] if headline else [])
    if settings:
        lines += ["## Settings", ""]
        lines += [f"- `{k}`: {v}" for k, v in settings.items()]
        lines.append("")
    lines += [
        "## Results" + (f" (mean ± std over {n_seeds} seeds)" if n_seeds > 1 else ""),
        "",
        format_table(agg),
        "",
        format_ratios(agg),
        "",
    ]
    if target is not None:
        lines.append(
            f"Target: held-out accuracy (T=1) {target:.3f}, the start plus 90% of uniform's mean gain. "
            "Rollouts to target interpolate linearly between evaluations."
        )
    else:
        lines.append(
            "Uniform did not improve held-out accuracy (T=1), so there is no rollouts-to-target comparison."
        )
    lines += [
        "",
        "Informative prompts per step: prompts whose group had mixed binary outcomes, hence a non-zero "
        "advantage; these are the prompts that give a gradient, the figure that compares allocations. "
        "Rollout-level ratio: the share of rollouts in such groups (the paper's 'effective gradient ratio'); it "
        "rises whenever rollouts pile onto prompts that were mixed anyway, so it does not measure learning "
        "signal on its own. Held-out acc. (T=1): the mean "
        "success of k samples at temperature 1 on prompts never trained on; greedy: one greedy answer each. "
        "Train prompts acc. (T=1): the same measure on the GRPO prompts, the quantity RL optimises. "
        "Training reward per prompt: the mean over each step's prompts of their group's mean reward (every "
        "prompt weighs the same); TRL's logged reward averages rollouts, so it rises when an allocation "
        "gives solved prompts fewer rollouts and is not comparable across allocations. Intervals: 95% "
        "percentile bootstrap of the mean over seeds of the per-seed paired ratio or difference.",
        "",
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
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

    ``verdict_task`` (e.g. "Headroom task"): the report opens with :func:`verdict`'s sentence.

    ``target`` defaults to :func:`default_target` (90% of uniform's gain in held-out success at T=1).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if target is None:
        target = default_target(runs)
    agg = aggregate(runs, target)
    plots = make_plots(runs, out, target)
    headline = None if verdict_task is None else verdict(agg, verdict_task)
    agg["verdict"] = headline
    lines = _report_lines(agg, title, settings, target, notes, plots, headline)
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
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")

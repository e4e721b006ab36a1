"""The report's figures: held-out accuracy against rollouts consumed and against training wall-clock,
informative prompts per step, one allocation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knapsack_trl.experiments.methods import color, label, methods_in

if TYPE_CHECKING:
    from knapsack_trl.experiments.report import RunRecord


def eval_seconds(run: RunRecord) -> list[float] | None:
    """Training seconds at each of ``run``'s evaluations (``extra["eval_train_seconds"]``), None when not
    measured."""
    times = run.extra.get("eval_train_seconds")
    return None if not times or len(times) != len(run.evals) else [float(t) for t in times]


PLOT_FILES = {
    "accuracy": "accuracy_vs_rollouts.png",
    "wallclock": "accuracy_vs_wallclock.png",
    "informative": "informative_prompts.png",
    "allocation": "allocation.png",
}


def _curve(
    runs: Sequence[RunRecord], x_key: str, y_key: str, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of ``y`` against ``x``, interpolated onto the first run's grid."""
    series = [r.evals if source == "evals" else r.steps for r in runs]
    series = [s for s in series if s]
    x0 = np.array([float(e[x_key]) for e in series[0]])
    ys = []
    for s in series:
        x = np.array([float(e[x_key]) for e in s])
        y = np.array([float(e[y_key]) for e in s])
        ys.append(np.interp(x0, x, y))
    arr = np.vstack(ys)
    return x0, arr.mean(axis=0), arr.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros_like(x0)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def make_plots(
    runs: Sequence[RunRecord], out_dir: str | Path, target: float | None = None
) -> dict[str, Path]:
    """Write the PNGs (Agg backend, no display needed) and return their paths by kind; the wall-clock
    figure only when every run recorded its training time at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = methods_in(runs)
    n_seeds = len({r.seed for r in runs})
    plots = {"accuracy": _accuracy_plot(plt, runs, out, methods, n_seeds, target)}
    if runs and all(eval_seconds(r) is not None for r in runs):
        plots["wallclock"] = _wallclock_plot(plt, runs, out, methods, n_seeds, target)
    plots["informative"] = _informative_plot(plt, runs, out, methods, n_seeds, target)
    plots["allocation"] = _allocation_plot(plt, runs, out, methods, n_seeds, target)
    return plots


def _accuracy_plot(
    plt: Any, runs: Sequence[RunRecord], out: Path, methods: list[str], n_seeds: int, target: float | None
) -> Path:
    """Held-out accuracy (and training prompts) against rollouts consumed."""
    band = f" (mean ± std over {n_seeds} seeds)" if n_seeds > 1 else ""
    panels = [("reward", "Held-out accuracy, T=1 samples"), ("accuracy", "Held-out accuracy, greedy")]
    if all("train_reward" in e for r in runs for e in r.evals):
        panels.append(("train_reward", "Training prompts, T=1 samples"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for m in methods:
        rs = [r for r in runs if r.method == m and r.evals]
        if not rs:
            continue
        for ax, (key, _) in zip(axes, panels):
            x, mu, sd = _curve(rs, "rollouts_consumed", key, "evals")
            ax.plot(x, mu, marker="o", ms=3, color=color(m), label=label(m))
            if n_seeds > 1:
                ax.fill_between(x, mu - sd, mu + sd, color=color(m), alpha=0.2)
    if target is not None:
        axes[0].axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.3f}")
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title + band, fontsize=10)
    for ax in axes:
        ax.set_xlabel("rollouts consumed")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / PLOT_FILES["accuracy"]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wallclock_plot(
    plt: Any, runs: Sequence[RunRecord], out: Path, methods: list[str], n_seeds: int, target: float | None
) -> Path:
    """Held-out accuracy (T=1) against training wall-clock (evaluations excluded): each evaluation's mean
    time and accuracy over seeds."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in methods:
        rs = [r for r in runs if r.method == m and r.evals]
        if not rs:
            continue
        n = min(len(r.evals) for r in rs)
        x = np.mean([eval_seconds(r)[:n] for r in rs], axis=0)
        y = np.array([[float(e["reward"]) for e in r.evals[:n]] for r in rs])
        ax.plot(x, y.mean(axis=0), marker="o", ms=3, color=color(m), label=label(m))
        if n_seeds > 1:
            sd = y.std(axis=0, ddof=1)
            ax.fill_between(x, y.mean(axis=0) - sd, y.mean(axis=0) + sd, color=color(m), alpha=0.2)
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.3f}")
    band = f" (mean ± std over {n_seeds} seeds)" if n_seeds > 1 else ""
    ax.set_title("Held-out accuracy, T=1 samples" + band, fontsize=10)
    ax.set_xlabel("training wall-clock (s, evaluations excluded)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / PLOT_FILES["wallclock"]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _informative_plot(
    plt: Any, runs: Sequence[RunRecord], out: Path, methods: list[str], n_seeds: int, target: float | None
) -> Path:
    """Informative prompts per step, and the rollout-level ratio, per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        rs = [r for r in runs if r.method == m and r.steps]
        if not rs:
            continue
        for r in rs:
            for s in r.steps:
                s.setdefault("egr_rollouts", s["useful_rollouts"] / s["rollouts"] if s["rollouts"] else 0.0)
        for ax, key in zip(axes, ("useful_groups", "egr_rollouts")):
            x, mu, sd = _curve(rs, "step", key, "steps")
            window = max(1, len(x) // 20)
            ax.plot(x, _smooth(mu, window), color=color(m), label=label(m))
            if n_seeds > 1:
                lo, hi = _smooth(mu - sd, window), _smooth(mu + sd, window)
                ax.fill_between(x, lo, hi, color=color(m), alpha=0.15)
    groups = max((s["groups"] for r in runs for s in r.steps), default=1.0)
    axes[0].set_title(f"Informative prompts per step (of {groups:.0f}): groups with mixed rewards")
    axes[0].set_ylim(0, groups)
    axes[1].set_title("Rollout-level ratio: share of rollouts in mixed groups")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / PLOT_FILES["informative"]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _allocation_plot(
    plt: Any, runs: Sequence[RunRecord], out: Path, methods: list[str], n_seeds: int, target: float | None
) -> Path:
    """One knapsack step: rollouts given against estimated (and true) success rates."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    snap_runs = [r for r in runs if r.allocation and r.method != "uniform"]
    seed0 = min((r.seed for r in snap_runs), default=None)
    for r in snap_runs:
        if r.seed != seed0:
            continue
        a = r.allocation
        assert a is not None
        p = np.asarray(a["p_estimate"], dtype=float)
        n = np.asarray(a["n"], dtype=float)
        ax.scatter(
            p,
            n,
            s=22,
            alpha=0.7,
            color=color(r.method),
            label=label(r.method),
        )
        if a.get("p_true") is not None and r.method == "knapsack":
            pt = np.asarray(a["p_true"], dtype=float)
            ax.scatter(pt, n, s=14, marker="x", alpha=0.6, color="black", label="same prompts, true p")
        if "uniform_n" in a:
            ax.axhline(a["uniform_n"], color=color("uniform"), ls="--", lw=1, label="uniform budget")
    step_txt = f" (step {snap_runs[0].allocation['step']})" if snap_runs and snap_runs[0].allocation else ""
    ax.set_title("Rollouts given vs estimated success rate" + step_txt)
    ax.set_xlabel("estimated success rate p")
    ax.set_ylabel("rollouts given")
    ax.set_xlim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys())
    fig.tight_layout()
    path = out / PLOT_FILES["allocation"]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

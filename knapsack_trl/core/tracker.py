"""Per-prompt success-rate history: the budget manager's memory.

Knapsack RL needs an estimate of each prompt's success rate ``p`` before its rollouts are drawn. The
tracker keeps, per stable prompt id, the last ``window`` binary outcomes (or an exponentially decayed
count), the last visit's counts and the total number of outcomes ever seen, and turns them into a
Beta-posterior estimate. Outcomes are binary (reward above a threshold): estimating ``p`` from shaped
scores lets all-fail groups look informative.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.state import TRACKER_STATE_VERSION, check_version

ESTIMATES = ("window", "last_visit")
# Chosen with the allocation simulator (python -m knapsack_trl.benchmarks.allocation; docs/method.md):
# a memory of about ten visits beat the last 16 outcomes on every difficulty mix.
DEFAULT_EMA_DECAY = 0.9


def prompt_id(prompt: str | list[dict] | dict) -> str:
    """Stable 16-hex-character id of a prompt's content.

    Keyed on content, never on a per-batch uuid, so history accumulates across epochs and
    processes. Text is hashed as is; conversations (list of messages) and dicts as canonical JSON.
    """
    if isinstance(prompt, str):
        payload = "text:" + prompt
    elif isinstance(prompt, (list, tuple, dict)):
        try:
            payload = "json:" + json.dumps(
                prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"prompt_id cannot hash this prompt stably ({err}); pass text, JSON-serialisable "
                "messages, or use the dataset index as the prompt id."
            ) from None
    else:
        raise TypeError(
            f"prompt_id expects a str, a list of messages or a dict, got {type(prompt).__name__}; "
            "use the dataset index as the prompt id instead."
        )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def is_success(rewards: float | np.ndarray, threshold: float) -> np.ndarray:
    """The success rule, everywhere a reward becomes an outcome: strictly above ``threshold``; NaN (an
    unscorable rollout) is no success (callers that must skip it check for NaN first)."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.nan_to_num(r, nan=-np.inf) > float(threshold)


@dataclass(frozen=True)
class PromptStats:
    """History of the requested prompts, arrays aligned with the requested ids.

    ``num_observations`` / ``successes`` are the counts the estimate uses (int64 / float64 in window
    mode, decayed float64 counts in EMA mode); ``total_observations`` counts every outcome ever seen.
    """

    num_observations: np.ndarray
    successes: np.ndarray
    empirical_rate: np.ndarray
    mean_length: np.ndarray
    last_seen: np.ndarray
    total_observations: np.ndarray


class SuccessRateTracker:
    """Success history per prompt id: a sliding window of binary outcomes, or an EMA of counts.

    EMA mode (the default, ``ema_decay`` 0.9 unless given): each time a prompt is observed its success
    and rollout counts are multiplied by ``ema_decay`` before the new visit's counts are added. Window
    mode (``window`` set): the last ``window`` outcomes per prompt, the reference's
    ``reward_buffer_length=16``. The estimate is the Beta posterior mean ``(s + k*m) / (n + k)``.

    ``estimate="last_visit"`` (window mode) is the reference's estimate (liziniu/KnapsackRL,
    ``verl/utils/dataset/rl_dataset.py``, ``RLHFDataset.update_sample_state`` with its default
    ``epoch_estimation`` and ``robust_epoch_estimation``): the last visit's outcomes when that visit had
    at least ``window`` rollouts, else the last ``window`` outcomes.
    """

    def __init__(
        self,
        window: int | None = None,
        ema_decay: float | None = None,
        prior_strength: float = 2.0,
        prior_mean: float = 0.5,
        success_threshold: float = 0.5,
        estimate: str = "window",
    ) -> None:
        _validate_config(window, ema_decay, prior_strength, prior_mean, success_threshold, estimate)
        if window is None and ema_decay is None:
            ema_decay = DEFAULT_EMA_DECAY
        self.window = None if window is None else int(window)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.prior_strength = float(prior_strength)
        self.prior_mean = float(prior_mean)
        self.success_threshold = float(success_threshold)
        self.estimate = estimate
        # Window mode: id -> (deque of 0/1 outcomes, deque of lengths with NaN when unknown).
        self._outcomes: dict[str, deque[int]] = {}
        self._lengths: dict[str, deque[float]] = {}
        # EMA mode: id -> [successes, count, length_sum, length_count].
        self._ema: dict[str, list[float]] = {}
        self._last_seen: dict[str, int] = {}
        # Every mode: id -> outcomes ever seen, and the last visit's (successes, rollouts).
        self._total: dict[str, int] = {}
        self._last_visit: dict[str, tuple[int, int]] = {}
        # (successes, outcomes) the estimate uses, kept in order of the last visit (oldest first).
        self._counts: dict[str, tuple[float, float]] = {}

    @property
    def is_ema(self) -> bool:
        """True in EMA mode."""
        return self.ema_decay is not None

    def __len__(self) -> int:
        return len(self._last_seen)

    def __contains__(self, pid: object) -> bool:
        return pid in self._last_seen

    def observe(
        self,
        prompt_ids: Sequence[str],
        rewards: Sequence[float | None],
        completion_lengths: Sequence[float | None] | None = None,
        step: int = 0,
    ) -> None:
        """Record one batch, one entry per rollout; NaN/None rewards are unscorable and skipped."""
        ids = list(prompt_ids)
        rews = list(rewards)
        if len(rews) != len(ids):
            raise ValueError(
                f"observe got {len(ids)} prompt ids but {len(rews)} rewards; pass one per rollout."
            )
        if completion_lengths is None:
            lens: list[float] = [math.nan] * len(ids)
        else:
            lens = [math.nan if x is None else float(x) for x in completion_lengths]
            if len(lens) != len(ids):
                raise ValueError(
                    f"observe got {len(ids)} prompt ids but {len(lens)} completion lengths; "
                    "pass one per rollout or None."
                )
            if any(x < 0 for x in lens if not math.isnan(x)):
                raise ValueError("completion_lengths must be >= 0 (token counts).")
        # Group this batch per prompt, in order of first scorable occurrence.
        batch: dict[str, tuple[list[int], list[float]]] = {}
        for pid, reward, length in zip(ids, rews, lens):
            if reward is None:
                continue
            r = float(reward)
            if math.isnan(r):
                continue
            outcomes, lengths = batch.setdefault(str(pid), ([], []))
            outcomes.append(int(is_success(r, self.success_threshold)))
            lengths.append(length if math.isfinite(length) else math.nan)
        step = int(step)
        for pid, (outcomes, lengths) in batch.items():
            if self.ema_decay is None:
                assert self.window is not None
                dq = self._outcomes.setdefault(pid, deque(maxlen=self.window))
                lq = self._lengths.setdefault(pid, deque(maxlen=self.window))
                dq.extend(outcomes)
                lq.extend(lengths)
            else:
                d = self.ema_decay
                known = [x for x in lengths if not math.isnan(x)]
                acc = self._ema.setdefault(pid, [0.0, 0.0, 0.0, 0.0])
                acc[0] = d * acc[0] + float(sum(outcomes))
                acc[1] = d * acc[1] + float(len(outcomes))
                acc[2] = d * acc[2] + float(sum(known))
                acc[3] = d * acc[3] + float(len(known))
            self._last_seen[pid] = step
            self._total[pid] = self._total.get(pid, 0) + len(outcomes)
            self._last_visit[pid] = (sum(outcomes), len(outcomes))
            self._counts.pop(pid, None)  # re-inserted last: the dict stays in order of the last visit
            self._counts[pid] = self._estimate_counts(pid)

    def _estimate_counts(self, pid: str) -> tuple[float, float]:
        """(successes, outcomes) behind ``pid``'s estimate: window, last visit, or decayed counts."""
        if self.ema_decay is not None:
            acc = self._ema[pid]
            return (acc[0], acc[1])
        assert self.window is not None
        visit = self._last_visit.get(pid)
        if self.estimate == "last_visit" and visit is not None and visit[1] >= self.window:
            return (float(visit[0]), float(visit[1]))
        dq = self._outcomes[pid]
        return (float(sum(dq)), float(len(dq)))

    def recent_counts(self, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """``(successes, outcomes)`` behind the estimates of the ``limit`` most recently visited prompts.

        What a population prior is fitted to: the prompts nearest the current policy, at a cost that does
        not grow with the dataset.
        """
        recent = list(itertools.islice(reversed(self._counts.values()), int(limit)))
        if not recent:
            return np.zeros(0), np.zeros(0)
        counts = np.asarray(recent, dtype=np.float64)
        return counts[:, 0], counts[:, 1]

    def stats(self, prompt_ids: Sequence[str]) -> PromptStats:
        """Counts, empirical rates, mean lengths and last-seen steps for ``prompt_ids`` (unseen: 0/NaN/-1)."""
        ids = [str(p) for p in prompt_ids]
        m = len(ids)
        n = np.zeros(m, dtype=np.float64 if self.is_ema else np.int64)
        s = np.zeros(m, dtype=np.float64)
        mean_len = np.full(m, np.nan)
        last = np.full(m, -1, dtype=np.int64)
        total = np.zeros(m, dtype=np.int64)
        for i, pid in enumerate(ids):
            if pid not in self._last_seen:
                continue
            last[i] = self._last_seen[pid]
            total[i] = self._total[pid]
            s[i], n[i] = self._counts[pid]
            if self.ema_decay is None:
                known = [x for x in self._lengths[pid] if not math.isnan(x)]
                if known:
                    mean_len[i] = sum(known) / len(known)
            else:
                acc = self._ema[pid]
                if acc[3] > 0:
                    mean_len[i] = acc[2] / acc[3]
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(n > 0, s / np.maximum(n, 1e-300), np.nan)
        return PromptStats(
            num_observations=n,
            successes=s,
            empirical_rate=rate,
            mean_length=mean_len,
            last_seen=last,
            total_observations=total,
        )

    def success_rate(self, prompt_ids: Sequence[str], prior_mean: np.ndarray | None = None) -> np.ndarray:
        """Beta posterior mean ``(s + k*m) / (n + k)`` per prompt.

        ``m`` is ``prior_mean[i]`` where given and not NaN (e.g. a value head's prediction), else the
        tracker's ``prior_mean``. NaN only where ``n + k == 0`` (unseen with ``prior_strength=0``).
        """
        st = self.stats(prompt_ids)
        m = np.full(len(st.successes), self.prior_mean)
        if prior_mean is not None:
            pm = np.asarray(prior_mean, dtype=np.float64).reshape(-1)
            if pm.shape != m.shape:
                raise ValueError(f"prior_mean has {pm.size} entries for {m.size} prompt ids.")
            known = ~np.isnan(pm)
            if ((pm[known] < 0) | (pm[known] > 1)).any():
                raise ValueError("prior_mean must lie in [0, 1] (NaN = no prediction).")
            m = np.where(known, pm, m)
        k = self.prior_strength
        num = st.successes + k * m
        den = st.num_observations.astype(np.float64) + k
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for reproducing this tracker."""
        return {
            "window": self.window,
            "ema_decay": self.ema_decay,
            "prior_strength": self.prior_strength,
            "prior_mean": self.prior_mean,
            "success_threshold": self.success_threshold,
            "estimate": self.estimate,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-able) state: config and per-prompt history, in order of the last visit."""
        prompts: dict[str, dict[str, Any]] = {}
        for pid in self._counts:
            last = self._last_seen[pid]
            if self.ema_decay is None:
                entry: dict[str, Any] = {
                    "outcomes": "".join(str(o) for o in self._outcomes[pid]),
                    "lengths": [None if math.isnan(x) else x for x in self._lengths[pid]],
                }
            else:
                entry = {"ema": list(self._ema[pid])}
            entry["last_seen"] = last
            entry["total"] = self._total[pid]
            visit = self._last_visit.get(pid)
            entry["last_visit"] = None if visit is None else list(visit)
            prompts[pid] = entry
        return {"version": TRACKER_STATE_VERSION, "config": self.config(), "prompts": prompts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace config and history with ``state`` (from :meth:`state_dict`).

        Version 1 states (no totals, no last visit) load with the total taken as the outcomes kept
        (the decayed count, rounded, in EMA mode) and the last visit unknown (window estimate).
        """
        check_version(state, [1, TRACKER_STATE_VERSION], "tracker state")
        cfg = state["config"]
        fresh = SuccessRateTracker(**cfg)
        for pid, entry in state["prompts"].items():
            if fresh.ema_decay is None:
                assert fresh.window is not None
                outcomes = [int(c) for c in entry["outcomes"]]
                lengths = [math.nan if x is None else float(x) for x in entry["lengths"]]
                if len(outcomes) != len(lengths):
                    raise ValueError(f"tracker state for prompt {pid!r} has mismatched outcomes/lengths.")
                fresh._outcomes[pid] = deque(outcomes, maxlen=fresh.window)
                fresh._lengths[pid] = deque(lengths, maxlen=fresh.window)
            else:
                fresh._ema[pid] = [float(x) for x in entry["ema"]]
            fresh._last_seen[pid] = int(entry["last_seen"])
            if "total" in entry:
                fresh._total[pid] = int(entry["total"])
                if entry["last_visit"] is not None:
                    fresh._last_visit[pid] = (int(entry["last_visit"][0]), int(entry["last_visit"][1]))
            else:  # version 1
                kept = len(fresh._outcomes[pid]) if fresh.ema_decay is None else round(fresh._ema[pid][1])
                fresh._total[pid] = int(kept)
            fresh._counts[pid] = fresh._estimate_counts(pid)
        self.__dict__.update(fresh.__dict__)

    def to_json(self) -> str:
        """JSON text of :meth:`state_dict`; floats round-trip exactly."""
        return json.dumps(self.state_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> SuccessRateTracker:
        """Rebuild a tracker (config included) from :meth:`to_json` output."""
        tracker = cls()
        tracker.load_state_dict(json.loads(text))
        return tracker


def _validate_config(
    window: int | None,
    ema_decay: float | None,
    prior_strength: float,
    prior_mean: float,
    success_threshold: float,
    estimate: str = "window",
) -> None:
    """Raise a :class:`SettingError` naming the setting for any bad tracker setting."""
    if estimate not in ESTIMATES:
        raise SettingError(f"<estimate>={estimate!r} is not known; use one of {list(ESTIMATES)}.")
    if estimate == "last_visit" and window is None:
        raise SettingError(
            "<estimate>='last_visit' needs window mode: set <window> (the reference uses 16) and leave "
            "<ema_decay> unset."
        )
    if window is not None and ema_decay is not None:
        raise SettingError(
            f"<window>={window} and <ema_decay>={ema_decay} are both set; set <window> to None for EMA mode."
        )
    if window is not None and (isinstance(window, bool) or int(window) != window or window < 1):
        raise SettingError(f"<window>={window!r} must be an integer >= 1.")
    if ema_decay is not None and not 0.0 < float(ema_decay) < 1.0:
        raise SettingError(f"<ema_decay>={ema_decay!r} must lie strictly in (0, 1).")
    if not (math.isfinite(float(prior_strength)) and float(prior_strength) >= 0.0):
        raise SettingError(f"<prior_strength>={prior_strength!r} must be finite and >= 0.")
    if not 0.0 <= float(prior_mean) <= 1.0:
        raise SettingError(f"<prior_mean>={prior_mean!r} must lie in [0, 1].")
    if not math.isfinite(float(success_threshold)):
        raise SettingError(f"<success_threshold>={success_threshold!r} must be finite.")

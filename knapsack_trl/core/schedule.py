"""Step schedules for the budget manager: ``n_max`` and the exploration share over training.

More exploration early, less later: a schedule maps the optimiser step to a number. Config fields
stay plain strings (``"cosine:128:32"``, ``"linear:0.2:0:500"``, ``"0.1"``) so they work from YAML and
the command line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from knapsack_trl.core.errors import SettingError

SCHEDULE_KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """``start`` at step 0 moving to ``end`` at ``total_steps`` (linear or cosine), then held there."""

    kind: str = "constant"
    start: float = 0.0
    end: float | None = None
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise SettingError(
                f"schedule kind {self.kind!r} is not known; use one of {list(SCHEDULE_KINDS)}."
            )
        if not math.isfinite(self.start):
            raise SettingError(f"schedule start={self.start!r} must be a finite number.")
        if self.end is not None and not math.isfinite(self.end):
            raise SettingError(f"schedule end={self.end!r} must be a finite number.")
        if self.total_steps is not None and (
            isinstance(self.total_steps, bool)
            or int(self.total_steps) != self.total_steps
            or self.total_steps < 1
        ):
            raise SettingError(f"schedule total_steps={self.total_steps!r} must be an integer >= 1.")
        if self.kind != "constant":
            if self.end is None:
                raise SettingError(
                    f"a {self.kind} schedule needs an end value, e.g. '{self.kind}:{self.start}:END'."
                )
            if self.total_steps is None:
                raise SettingError(
                    f"a {self.kind} schedule needs total_steps: write '{self.kind}:START:END:STEPS' "
                    "or set <total_steps>."
                )

    def __call__(self, step: int) -> float:
        """Value at ``step``; steps below 0 give ``start``, steps past ``total_steps`` give ``end``."""
        if self.kind == "constant":
            return float(self.start)
        assert self.end is not None and self.total_steps is not None
        t = min(max(float(step), 0.0), float(self.total_steps)) / float(self.total_steps)
        if self.kind == "linear":
            return float(self.start + (self.end - self.start) * t)
        return float(self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t)))

    @property
    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value the schedule ever takes."""
        end = self.start if self.end is None else self.end
        return (min(self.start, end), max(self.start, end))

    @classmethod
    def parse(
        cls, value: Schedule | str | float | int | Mapping[str, Any], *, total_steps: int | None = None
    ) -> Schedule:
        """Build a schedule from a number, ``"kind:start[:end[:total_steps]]"`` or a dict.

        ``total_steps`` fills in a missing horizon (e.g. from the allocator's ``total_steps``).
        """
        if isinstance(value, Schedule):
            return value
        if isinstance(value, bool):
            raise SettingError(
                f"cannot read a schedule from {value!r}; use a number or 'kind:start:end[:steps]'."
            )
        if isinstance(value, (int, float)):
            return cls("constant", float(value))
        if isinstance(value, Mapping):
            return cls._parse_mapping(value, total_steps)
        if isinstance(value, str):
            return cls._parse_text(value, total_steps)
        raise SettingError(
            f"cannot read a schedule from {type(value).__name__}; use a number, string or dict."
        )

    @classmethod
    def _parse_mapping(cls, value: Mapping[str, Any], total_steps: int | None) -> Schedule:
        unknown = set(value) - {"kind", "start", "end", "total_steps"}
        if unknown:
            raise SettingError(
                f"schedule dict has unknown keys {sorted(unknown)}; use kind, start, end, total_steps."
            )
        if "start" not in value:
            raise SettingError("schedule dict needs a 'start' value.")
        kind = str(value.get("kind", "constant"))
        steps = value.get("total_steps", None)
        end = value.get("end", None)
        return cls(
            kind,
            _number(value["start"], "start"),
            None if end is None else _number(end, "end"),
            total_steps if steps is None else _steps(steps),
        )

    @classmethod
    def _parse_text(cls, value: str, total_steps: int | None) -> Schedule:
        parts = [p.strip() for p in value.strip().split(":")]
        if len(parts) == 1:
            return cls("constant", _number(parts[0], "start"))
        kind = parts[0].lower()
        if kind not in SCHEDULE_KINDS:
            raise SettingError(
                f"schedule {value!r}: kind {kind!r} is not known; use one of {list(SCHEDULE_KINDS)}, "
                "e.g. 'cosine:128:32' or 'linear:0.2:0:500'."
            )
        if len(parts) > 4:
            raise SettingError(
                f"schedule {value!r} has too many parts; use 'kind:start[:end[:total_steps]]'."
            )
        start = _number(parts[1], "start")
        if kind == "constant":
            if len(parts) > 2:
                raise SettingError(
                    f"schedule {value!r}: a constant schedule takes one value, 'constant:VALUE'."
                )
            return cls("constant", start)
        if len(parts) < 3:
            raise SettingError(f"schedule {value!r} needs an end value: '{kind}:START:END[:STEPS]'.")
        end = _number(parts[2], "end")
        steps = _steps(parts[3]) if len(parts) == 4 else total_steps
        return cls(kind, start, end, steps)


@dataclass(frozen=True)
class BudgetSchedule:
    """The budget manager's two knobs over training: ``n_max`` and the exploration share.

    ``exploration_share`` is the fraction of the rollout budget reserved for prompts that have never
    been seen or never been solved (0 = off = the reference behaviour).
    """

    n_max: Schedule
    exploration_share: Schedule

    def __post_init__(self) -> None:
        lo, _ = self.n_max.bounds
        if lo < 1:
            raise SettingError(f"<n_max_schedule> goes down to {lo}; <n_max> must stay >= 1.")
        lo, hi = self.exploration_share.bounds
        if lo < 0 or hi > 1:
            raise SettingError(
                f"<exploration_schedule> spans [{lo}, {hi}]; the share of the budget must lie in [0, 1]."
            )

    @classmethod
    def from_config(
        cls,
        n_max: int,
        n_max_schedule: Schedule | str | float | Mapping[str, Any] | None = None,
        exploration_schedule: Schedule | str | float | Mapping[str, Any] | None = None,
        total_steps: int | None = None,
    ) -> BudgetSchedule:
        """From the allocator's config fields; unset schedules are constant (``n_max``, share 0)."""
        try:
            nmax = (
                Schedule("constant", float(n_max))
                if n_max_schedule is None
                else Schedule.parse(n_max_schedule, total_steps=total_steps)
            )
        except ValueError as err:
            raise SettingError(f"<n_max_schedule>: {err}") from None
        try:
            share = (
                Schedule("constant", 0.0)
                if exploration_schedule is None
                else Schedule.parse(exploration_schedule, total_steps=total_steps)
            )
        except ValueError as err:
            raise SettingError(f"<exploration_schedule>: {err}") from None
        return cls(nmax, share)

    def lowest_n_max(self) -> int:
        """The smallest ``n_max`` the schedule ever gives (rounded as :meth:`n_max_at` rounds)."""
        return _round_half_up(self.n_max.bounds[0])

    def highest_n_max(self) -> int:
        """The largest ``n_max`` the schedule ever gives (rounded as :meth:`n_max_at` rounds)."""
        return _round_half_up(self.n_max.bounds[1])

    def n_max_at(self, step: int) -> int:
        """``n_max`` at ``step``, rounded half up to an integer."""
        return _round_half_up(self.n_max(step))

    def exploration_share_at(self, step: int) -> float:
        """Exploration share at ``step``, clipped to [0, 1] against rounding."""
        return min(max(self.exploration_share(step), 0.0), 1.0)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _number(text: Any, name: str) -> float:
    """Parse a finite float or raise naming the part."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise SettingError(f"schedule {name} {text!r} is not a number.") from None
    if not math.isfinite(x):
        raise SettingError(f"schedule {name} {text!r} must be finite.")
    return x


def _steps(text: Any) -> int:
    """Parse a positive integer step count."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise SettingError(f"schedule total_steps {text!r} is not a number.") from None
    if not x.is_integer() or x < 1:
        raise SettingError(f"schedule total_steps {text!r} must be an integer >= 1.")
    return int(x)

"""The allocator's settings, and the checks that refuse settings that can never work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.schedule import BudgetSchedule
from knapsack_trl.core.solvers import check_solver_name
from knapsack_trl.core.values import get_value_function

RULES = ("posterior", "buckets")
HALF_LIFE_MODES = ("off",)
_INTEGER_SETTINGS = ("n_min", "n_max", "zero_success_budget", "full_success_budget", "min_observations")


@dataclass
class AllocatorConfig:
    """Allocator settings (a trainer config calls each ``x`` ``knapsack_x``).

    ``zero_success_budget`` / ``full_success_budget`` are the reference's ``negative_n`` /
    ``positive_n``; ``fallback_confidence`` is its ``alpha``. ``min_observations``: a prompt's history
    is used only from that many outcomes (the reference: 8); before that it counts as unseen.
    Schedules are strings such as ``"cosine:128:32"`` (see :mod:`.schedule`).

    ``history_half_life``: steps over which a prompt's history loses half its weight since its last
    visit, so the posterior of a prompt not seen for a while widens towards the population's (the policy
    moved on since): a number of steps, ``"off"``, or None (the default): 16 steps when choosing prompts
    from candidates (``allocate(..., allow_skip=True)``), off otherwise, which keeps allocations without
    candidates exactly as before.
    """

    rule: str = "posterior"
    n_min: int = 2
    n_max: int = 128
    solver: str = "cpsat"
    value_function: str | Callable[..., Any] = "nonzero_gradient"
    zero_success_budget: int = 2
    full_success_budget: int = 2
    fallback: bool = True
    fallback_confidence: float = 0.9
    min_observations: int = 1
    time_limit_s: float = 1.0
    token_cost: bool = False
    history_half_life: float | str | None = None
    n_max_schedule: str | None = None
    exploration_schedule: str | None = None
    total_steps: int | None = None

    def validate(self) -> None:
        """Raise a :class:`SettingError` naming the setting for any value that can never work."""
        if self.rule not in RULES:
            raise SettingError(f"<rule>={self.rule!r} is not known; use one of {list(RULES)}.")
        self._check_sizes()
        self._check_fallback()
        self.solver = check_solver_name(self.solver)
        get_value_function(self.value_function)
        if not (isinstance(self.time_limit_s, (int, float)) and self.time_limit_s > 0):
            raise SettingError(f"<time_limit_s>={self.time_limit_s!r} must be a positive number of seconds.")
        if self.token_cost and self.solver != "cpsat":
            raise SettingError(
                f"<token_cost>=True needs <solver>='cpsat' (got {self.solver!r}): "
                "only CP-SAT takes the token budget as a second constraint."
            )
        if self.rule == "posterior" and self.exploration_schedule is not None:
            raise SettingError(
                f"<exploration_schedule>={self.exploration_schedule!r} reserves budget for the buckets rule's "
                "all-fail and unseen prompts; <rule>='posterior' values those by their posterior instead. "
                "Unset the schedule or set <rule>='buckets'."
            )
        if self.total_steps is not None and (isinstance(self.total_steps, bool) or self.total_steps < 1):
            raise SettingError(f"<total_steps>={self.total_steps!r} must be an integer >= 1.")
        self._check_half_life()
        self._check_schedules()

    def budget_schedule(self) -> BudgetSchedule:
        """The ``n_max`` and exploration schedules these settings describe."""
        return BudgetSchedule.from_config(
            self.n_max, self.n_max_schedule, self.exploration_schedule, total_steps=self.total_steps
        )

    def check_fixed_budgets(self, n_min: int, n_max: int) -> None:
        """The buckets rule's all-fail / all-success budgets must lie inside ``[n_min, n_max]``."""
        if self.rule != "buckets":
            return
        for name in ("zero_success_budget", "full_success_budget"):
            value = getattr(self, name)
            if not n_min <= value <= n_max:
                raise SettingError(f"<{name}>={value} must lie in [<n_min>, <n_max>] = [{n_min}, {n_max}].")

    def _check_sizes(self) -> None:
        for name in _INTEGER_SETTINGS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SettingError(f"<{name}>={value!r} must be an integer.")
        if self.n_min < 0:
            raise SettingError(f"<n_min>={self.n_min} must be >= 0.")
        if self.n_max < 1:
            raise SettingError(f"<n_max>={self.n_max} must be >= 1.")
        if self.n_min > self.n_max:
            raise SettingError(f"<n_min>={self.n_min} is larger than <n_max>={self.n_max}; lower <n_min>.")
        if self.min_observations < 1:
            raise SettingError(
                f"<min_observations>={self.min_observations} must be >= 1 (1 = use any history; "
                "the reference uses 8)."
            )
        self.check_fixed_budgets(self.n_min, self.n_max)

    def _check_half_life(self) -> None:
        value = self.history_half_life
        if value is None or value in HALF_LIFE_MODES:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise SettingError(
                f"<history_half_life>={value!r} must be a positive number of steps, 'off' or None "
                "(16 steps with candidates, off without)."
            )

    def _check_fallback(self) -> None:
        if not isinstance(self.fallback, bool):
            raise SettingError(f"<fallback>={self.fallback!r} must be True or False.")
        conf = self.fallback_confidence
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 < conf < 1.0:
            raise SettingError(
                f"<fallback_confidence>={conf!r} must lie strictly between 0 and 1 (the reference: 0.9)."
            )

    def _check_schedules(self) -> None:
        schedule = self.budget_schedule()
        if self.n_max_schedule is None:
            return
        lowest = schedule.lowest_n_max()
        if lowest < self.n_min:
            raise SettingError(
                f"<n_max_schedule>={self.n_max_schedule!r} goes down to n_max={lowest}, below "
                f"<n_min>={self.n_min}; raise the schedule's end or lower <n_min>."
            )
        try:
            self.check_fixed_budgets(self.n_min, lowest)
        except SettingError as err:
            raise SettingError(f"{err.template} (<n_max_schedule> goes down to {lowest})") from None

"""A recipe's ``reward_funcs``: resolved through the tasks' reward registry, and the columns each needs."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from knapsack_trl.recipe.arguments import RecipeError
from knapsack_trl.tasks.registry import (
    REWARD_FUNCTIONS,
    SandboxUnavailableError,
    preflight_rewards,
    resolve_reward,
)

# Arguments TRL passes to every reward function; any other parameter without a default is a dataset column.
_TRL_REWARD_KWARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)


def recipe_rewards(names: Sequence[str] | None) -> list[Callable[..., Any]]:
    """The reward callables for ``names`` (registry names or dotted paths)."""
    if not names:
        raise RecipeError(
            "reward_funcs is empty: set e.g. `reward_funcs: [gsm8k_accuracy]`. Known names: "
            f"{', '.join(sorted(REWARD_FUNCTIONS))}, or a dotted import path."
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    funcs = []
    for name in names:
        try:
            funcs.append(resolve_reward(name))
        except ValueError as exc:  # the registry's message already names reward_funcs and the known names
            raise RecipeError(str(exc)) from exc
        except (ImportError, AttributeError, KeyError) as exc:
            raise RecipeError(
                f"reward_funcs: cannot resolve {name!r} ({exc}). Use one of {', '.join(sorted(REWARD_FUNCTIONS))} "
                "or a dotted import path such as my_pkg.rewards.my_reward."
            ) from exc
    return funcs


def preflight(rewards: Sequence[Callable[..., Any]]) -> None:
    """Before any training: a reward that runs untrusted code checks that this machine isolates it."""
    try:
        preflight_rewards(rewards)
    except SandboxUnavailableError as exc:
        raise RecipeError(f"reward_funcs: {exc}") from exc


def reward_columns(func: Callable[..., Any]) -> list[str]:
    """Dataset columns a reward function needs: its parameters without defaults that TRL does not pass."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in _TRL_REWARD_KWARGS
    ]


def reward_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or type(func).__module__
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return f"{module}.{name}"

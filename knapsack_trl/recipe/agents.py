"""A recipe's agent fields: ``tools``, ``environment_factory`` and ``rollout_func`` as dotted import paths."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from knapsack_trl.recipe.arguments import KnapsackScriptArguments, RecipeError


def _resolve(path: str, name: str) -> Any:
    """The callable at ``package.module.attr`` (or ``package.module:attr``), imported with the working directory
    on ``sys.path``; a RecipeError naming the field otherwise."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value = getattr(importlib.import_module(module_name), attr) if module_name else None
    except (ImportError, AttributeError) as exc:
        raise RecipeError(
            f"{name}: cannot import {path!r} ({exc}); use a dotted path such as my_pkg.tools.f."
        ) from exc
    if not callable(value):
        raise RecipeError(f"{name}: {path!r} is not a callable; use a dotted path such as my_pkg.tools.f.")
    return value


def recipe_agents(script_args: KnapsackScriptArguments) -> dict[str, Any]:
    """The trainer keyword arguments for the recipe's agent fields (empty when none is set)."""
    kwargs: dict[str, Any] = {}
    if script_args.tools:
        kwargs["tools"] = [_resolve(path, "tools") for path in script_args.tools]
    if script_args.environment_factory:
        kwargs["environment_factory"] = _resolve(script_args.environment_factory, "environment_factory")
    if script_args.rollout_func:
        kwargs["rollout_func"] = _resolve(script_args.rollout_func, "rollout_func")
    if kwargs and script_args.trainer_type != "grpo":
        raise RecipeError(
            f"{', '.join(kwargs)}: TRL's RLOOTrainer takes no tools, environments or rollout functions; "
            "set trainer_type: grpo."
        )
    return kwargs

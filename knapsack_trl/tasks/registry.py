"""Reward functions for TRL trainers (GSM8K, HumanEval, chat arithmetic), their registry, and the code sandbox.

Every reward has TRL's signature ``f(completions, **kwargs) -> list[float | None]``; dataset columns
arrive as keyword arguments. Recipes name rewards in ``reward_funcs`` either by a registered name
(:data:`REWARD_FUNCTIONS`) or by a dotted import path; :func:`resolve_reward` turns either into the
function. A reward that runs untrusted code has a ``preflight()``: :func:`preflight_rewards` calls
them before training, so a machine that cannot isolate the code fails at start-up, not mid-run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from knapsack_trl.tasks.chat_arithmetic import chat_arithmetic_reward
from knapsack_trl.tasks.gsm8k.reward import (
    extract_gsm8k_gold,
    final_answer,
    format_reward,
    gsm8k_accuracy_last_number_reward,
    gsm8k_accuracy_reward,
    make_gsm8k_reward,
)
from knapsack_trl.tasks.humaneval.reward import (
    humaneval_pass_fraction_reward,
    humaneval_pass_reward,
    judge_completion,
    make_humaneval_reward,
)
from knapsack_trl.tasks.sandbox.runner import (
    SandboxResult,
    SandboxUnavailableError,
    require_isolation,
    run_python,
    sandbox_capabilities,
    start_python,
)

RewardFunction = Callable[..., list[float | None]]

REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "chat_arithmetic": chat_arithmetic_reward,
    "gsm8k_accuracy": gsm8k_accuracy_reward,
    # lenient: reads the last number of a completion that states no answer (gameable; docs/threat_model.md)
    "gsm8k_accuracy_last_number": gsm8k_accuracy_last_number_reward,
    "gsm8k_format": format_reward,
    "humaneval_pass": humaneval_pass_reward,
    "humaneval_pass_fraction": humaneval_pass_fraction_reward,
}


def register_reward(name: str, func: RewardFunction | None = None) -> Any:
    """Add a reward to :data:`REWARD_FUNCTIONS` under ``name``; usable as a decorator."""

    def add(f: RewardFunction) -> RewardFunction:
        if not callable(f):
            raise TypeError(f"register_reward({name!r}): {f!r} is not callable")
        if name in REWARD_FUNCTIONS and REWARD_FUNCTIONS[name] is not f:
            raise ValueError(f"a reward named {name!r} is already registered")
        REWARD_FUNCTIONS[name] = f
        return f

    return add if func is None else add(func)


def resolve_reward(spec: str | RewardFunction) -> RewardFunction:
    """A reward function from a registered name, a dotted path (``package.module.function`` or
    ``package.module:function``), or a callable (returned as is)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward_funcs: expected a reward name or dotted path, got {spec!r}. {_known()}")
    name = spec.strip()
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    sep = ":" if ":" in name else "."
    module_name, _, attr = name.rpartition(sep)
    if not module_name or not attr:
        raise ValueError(f"reward_funcs: unknown reward {name!r}. {_known()}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"reward_funcs: cannot import {module_name!r} for {name!r} ({err}). {_known()}"
        ) from err
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"reward_funcs: {module_name!r} has no callable {attr!r}. {_known()}")
    return func


def resolve_rewards(specs: str | RewardFunction | Sequence[str | RewardFunction]) -> list[RewardFunction]:
    """:func:`resolve_reward` over one spec or a list of them."""
    if isinstance(specs, str) or callable(specs):
        specs = [specs]
    return [resolve_reward(s) for s in specs]


def preflight_rewards(funcs: Sequence[RewardFunction]) -> None:
    """Run each reward's ``preflight()`` (if it has one): raises, e.g. SandboxUnavailableError with
    what is missing and how to enable it, before any training starts."""
    for func in funcs:
        check = getattr(func, "preflight", None)
        if callable(check):
            check()


def _known() -> str:
    """The hint every resolution error ends with."""
    return f"Known names: {', '.join(sorted(REWARD_FUNCTIONS))}; or a dotted path 'package.module.function'."


__all__ = [
    "REWARD_FUNCTIONS",
    "RewardFunction",
    "SandboxResult",
    "SandboxUnavailableError",
    "chat_arithmetic_reward",
    "extract_gsm8k_gold",
    "final_answer",
    "format_reward",
    "gsm8k_accuracy_last_number_reward",
    "gsm8k_accuracy_reward",
    "humaneval_pass_fraction_reward",
    "humaneval_pass_reward",
    "judge_completion",
    "make_gsm8k_reward",
    "make_humaneval_reward",
    "preflight_rewards",
    "register_reward",
    "require_isolation",
    "resolve_reward",
    "resolve_rewards",
    "run_python",
    "sandbox_capabilities",
    "start_python",
]

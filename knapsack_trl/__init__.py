"""knapsack-trl: knapsack rollout allocation for TRL's GRPO and RLOO trainers.

The public names are loaded lazily, so ``import knapsack_trl.core...`` never imports torch or trl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "KnapsackGRPOConfig": "knapsack_trl.trainer.config",
    "KnapsackGRPOTrainer": "knapsack_trl.trainer.grpo",
    "KnapsackRLOOConfig": "knapsack_trl.trainer.config",
    "KnapsackRLOOTrainer": "knapsack_trl.trainer.rloo",
    "KnapsackRolloutAllocator": "knapsack_trl.core.allocator",
    "AllocatorConfig": "knapsack_trl.core.allocator",
    "SuccessRateTracker": "knapsack_trl.core.tracker",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from knapsack_trl.core.allocator import AllocatorConfig as AllocatorConfig
    from knapsack_trl.core.allocator import KnapsackRolloutAllocator as KnapsackRolloutAllocator
    from knapsack_trl.core.tracker import SuccessRateTracker as SuccessRateTracker
    from knapsack_trl.trainer.config import KnapsackGRPOConfig as KnapsackGRPOConfig
    from knapsack_trl.trainer.config import KnapsackRLOOConfig as KnapsackRLOOConfig
    from knapsack_trl.trainer.grpo import KnapsackGRPOTrainer as KnapsackGRPOTrainer
    from knapsack_trl.trainer.rloo import KnapsackRLOOTrainer as KnapsackRLOOTrainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'knapsack_trl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

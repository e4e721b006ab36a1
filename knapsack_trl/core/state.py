"""The formats the library writes into checkpoints: their versions, and the one check that reads them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TRACKER_STATE_VERSION = 2  # SuccessRateTracker.state_dict (1: no totals, no last visit; still read)
ALLOCATOR_STATE_VERSION = 1  # KnapsackRolloutAllocator.state_dict
CHECKPOINT_STATE_VERSION = 1  # knapsack_state.json in a checkpoint folder
VALUE_HEAD_STATE_VERSION = 2  # knapsack_value_head.pt in a checkpoint folder (2: per-dimension scaling)


def check_version(state: Mapping[str, Any], supported: Iterable[int], what: str) -> int:
    """The state's ``version``, or a ValueError saying which versions ``what`` can read."""
    version = state.get("version")
    accepted = sorted(supported)
    if version not in accepted:
        raise ValueError(
            f"{what} version {version!r} is not supported (expected {' or '.join(map(str, accepted))})."
        )
    return int(version)

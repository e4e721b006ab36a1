"""Which prompt got how many rollouts: one JSON line per generation batch in ``output_dir``.

:class:`AllocationLog` is an ordinary listener (:mod:`.hooks`), registered by the trainer when
``knapsack_log_allocations`` is on, and writes on the main process only. Each line holds the batch's
step, prompt ids, rollouts per prompt, each prompt's rewards (group mean and per rollout; null where a
rollout was unscorable) and the success rate the allocation used. A run that starts (or resumes from a
checkpoint) first drops the lines at or after its first batch's step, so a resumed run neither
duplicates nor loses lines, and a fresh run in the same folder starts the file afresh.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from knapsack_trl.core.calibration import group_mean_rewards
from knapsack_trl.trainer.hooks import AllocationEvent

ALLOCATIONS_FILE = "knapsack_allocations.jsonl"
FINAL_STATE_FILE = "knapsack_state_final.json"


def _floats(values: Any) -> list[float | None]:
    """JSON-able floats, None for NaN (strict JSON has no NaN)."""
    return [None if math.isnan(v) else v for v in np.asarray(values, dtype=np.float64).tolist()]


def allocation_record(event: AllocationEvent) -> dict[str, Any]:
    """One batch's line: ``step``, ``prompt_ids``, ``rollouts``, ``reward_mean`` and ``rewards`` per prompt,
    and ``success_rate`` (the p estimate the allocation used; null where the allocation gives none)."""
    sizes = np.asarray(event.rollouts, dtype=np.int64)
    bounds = np.cumsum(sizes)[:-1]
    rewards = np.asarray(event.rewards, dtype=np.float64)
    p = getattr(event.allocation, "success_rate", None)
    return {
        "step": int(event.step),
        "prompt_ids": list(event.prompt_ids),
        "rollouts": sizes.tolist(),
        "reward_mean": _floats(group_mean_rewards(rewards, sizes)),
        "rewards": [_floats(part) for part in np.split(rewards, bounds)],
        "success_rate": None if p is None else _floats(p),
    }


class AllocationLog:
    """Listener appending :func:`allocation_record` lines to ``<output_dir>/knapsack_allocations.jsonl``."""

    def __init__(self, output_dir: str | os.PathLike[str], is_main_process: bool) -> None:
        self.path = Path(output_dir) / ALLOCATIONS_FILE
        self.is_main_process = is_main_process
        self._started = False

    def restart(self) -> None:
        """A new ``train()`` call: the next line first drops the file's lines at or after its step."""
        self._started = False

    def __call__(self, event: AllocationEvent) -> None:
        if not self.is_main_process:
            return
        if not self._started:
            self.truncate(int(event.step))
            self._started = True
        with open(self.path, "a") as f:
            f.write(json.dumps(allocation_record(event), allow_nan=False) + "\n")

    def truncate(self, step: int) -> None:
        """Keep only the whole lines of batches before ``step`` (a torn last line goes too)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if line.endswith("\n") and int(record["step"]) < step:
                    kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)


def read_allocations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of a ``knapsack_allocations.jsonl`` (a folder means the file inside it)."""
    path = Path(path)
    if path.is_dir():
        path = path / ALLOCATIONS_FILE
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

"""Choosing prompts from a candidate pool, in the core: without candidates nothing changes.

``tests/fixtures/c1_allocations.json`` holds 420 seeded random cases recorded on the code before candidates
existed (``scripts/record_c1_allocations.py``): both rules, both registered values, every solver, windows and
EMAs, value-head priors, token costs, schedules, and pilot second rounds. Without a candidate option the
current code must decide every one of them exactly as recorded.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "c1_allocations.json").read_text())


def _recorder():
    """The recording script, whose ``replay`` runs a case on the code it is imported with."""
    spec = importlib.util.spec_from_file_location("record_c1", ROOT / "scripts" / "record_c1_allocations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDER = _recorder()


@pytest.mark.parametrize("index", range(len(FIXTURE["cases"])))
def test_c1_reproduces_the_recorded_allocation(index: int) -> None:
    case = FIXTURE["cases"][index]
    assert RECORDER.replay(case) == case["expected"]

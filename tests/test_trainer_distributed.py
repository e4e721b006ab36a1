"""Two CPU processes (torchrun, gloo): both ranks take the same allocation, slice it consistently, finish."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

WORKER = Path(__file__).with_name("dist_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["grpo", "rloo", "grpo-blend", "grpo-pilot", "rloo-pilot"])
def test_two_processes_share_one_allocation(tiny_dir: str, tmp_path: Path, kind: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        tiny_dir,
        str(tmp_path),
        kind,
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == 2 and r["finished"] for r in ranks)
    assert "MULTI_CPU" in ranks[0]["distributed_type"]
    gens0, gens1 = ranks[0]["generations"], ranks[1]["generations"]
    assert len(gens0) == len(gens1) == 4
    for g0, g1 in zip(gens0, gens1, strict=True):
        for key in ("step", "prompt_ids", "rollouts", "order", "global_advantages"):
            assert g0[key] == g1[key], key
        assert sum(g0["rollouts"]) == 32 and len(g0["prompt_ids"]) == 8
        assert sorted(g0["order"]) == list(range(32))
        # each rank trains on its slice of the (possibly permuted) global batch
        assert g0["local_advantages"] + g1["local_advantages"] == g0["global_advantages"]
    assert any(g["rollouts"] != [4] * 8 for g in gens0[1:])  # history-dependent allocations happened
    for rank in range(2):
        assert f"[rank {rank}] step 3 rollouts" in proc.stdout
    if kind.endswith("pilot"):  # every step: 2 pilot rollouts for each of the 8 prompts, then 16 more
        assert all(min(g["rollouts"]) >= 2 for g in gens0)
        assert all(g["second_round_rollouts"] == 16 for g in gens0 + gens1)
    if kind.endswith("blend"):  # the value head trained on identical gathered data stays identical
        assert ranks[0]["value_head"] is not None and ranks[0]["value_head"] == ranks[1]["value_head"]


def test_two_processes_choose_the_same_candidates(tiny_dir: str, tmp_path: Path) -> None:
    """c = 2: 16 candidates for 32 rollouts; both ranks skip the same ones and slice one global batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    command += ["127.0.0.1", "--master_port", str(free_port()), str(WORKER), tiny_dir, str(tmp_path)]
    proc = subprocess.run([*command, "grpo-candidates"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    gens0, gens1 = ranks[0]["generations"], ranks[1]["generations"]
    assert len(gens0) == len(gens1) == 4 and all(r["finished"] for r in ranks)
    for g0, g1 in zip(gens0, gens1, strict=True):
        for key in ("step", "prompt_ids", "rollouts", "order", "global_advantages"):
            assert g0[key] == g1[key], key
        assert sum(g0["rollouts"]) == 32 and len(g0["prompt_ids"]) == len(set(g0["prompt_ids"])) == 16
        assert sorted(g0["order"]) == list(range(32))
        assert g0["local_advantages"] + g1["local_advantages"] == g0["global_advantages"]
    assert any(0 in g["rollouts"] for g in gens0)  # candidates were skipped, the same ones on both ranks

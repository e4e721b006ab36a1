"""What the tests share: reward functions, recorders, allocation injectors, the numpy references, a
mocked vLLM server and the sandbox red team's programs. No test module imports another test module; they import this one.

Allocations are injected through the trainer's public seams: ``trainer.knapsack_allocator`` and
``trainer.knapsack_pilot`` are replaced by subclasses of the core objects whose decision is given.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from knapsack_trl.core.allocator import KnapsackRolloutAllocator
from knapsack_trl.core.calibration import group_successes
from knapsack_trl.core.pilot import PilotRound
from knapsack_trl.tasks.sandbox import runner as sandbox


# --------------------------------------------------------------------------- reward functions
def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else "".join(m["content"] for m in completion)


def parity_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """1 for an odd-length completion: a mixed binary signal from an untrained model."""
    return [float(len(_text(c)) % 2) for c in completions]


def sparse_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """A shaped score that is None (unscorable) for lengths divisible by 3."""
    return [None if len(_text(c)) % 3 == 0 else len(_text(c)) / 8 for c in completions]


def sparser_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """None for lengths divisible by 6: with :func:`sparse_reward`, some rows are wholly unscorable."""
    return [None if len(_text(c)) % 6 == 0 else float(len(_text(c)) % 4 == 0) for c in completions]


def difficulty_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Deterministic buckets: 1-digit sums always solved, 3-digit never, 2-digit by completion parity."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        digits = len(_text(prompt).split("+")[0])
        out.append(1.0 if digits == 1 else 0.0 if digits >= 3 else float(len(_text(completion)) % 2))
    return out


REWARDS = {
    "parity": parity_reward,
    "sparse": sparse_reward,
    "sparser": sparser_reward,
    "difficulty": difficulty_reward,
}


# --------------------------------------------------------------------------- recorders
def record_generations(trainer: Any) -> list[dict[str, Any]]:
    """Wrap ``trainer._generate_and_score_completions`` to keep a copy of every output it returns."""
    outputs: list[dict[str, Any]] = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = original(inputs)
        outputs.append({k: v.clone() if hasattr(v, "clone") else v for k, v in output.items()})
        return output

    trainer._generate_and_score_completions = wrapped
    return outputs


def record_lasts(trainer: Any) -> list[dict[str, Any]]:
    """``trainer.knapsack_last`` after every generation batch, through the public listener hook."""
    lasts: list[dict[str, Any]] = []
    trainer.add_knapsack_listener(lambda event: lasts.append(trainer.knapsack_last))
    return lasts


def record_reward_calls(trainer: Any) -> list[dict[str, Any]]:
    """Every call of TRL's reward computation: its prompts, completion token ids and reward matrix."""
    calls: list[dict[str, Any]] = []
    original = trainer._calculate_rewards

    def wrapped(inputs, prompts, completions, completion_ids_list):
        out = original(inputs, prompts, completions, completion_ids_list)
        calls.append(
            {
                "prompts": list(prompts),
                "completion_ids": [list(ids) for ids in completion_ids_list],
                "rewards_per_func": out.detach().cpu().numpy().astype(np.float64),
            }
        )
        return out

    trainer._calculate_rewards = wrapped
    return calls


# --------------------------------------------------------------------------- injected allocations
class FakeAllocation:
    """Stands in for the core allocation: given rollouts per prompt, no diagnostics."""

    def __init__(self, sizes: np.ndarray) -> None:
        self.rollouts_per_prompt = np.asarray(sizes, dtype=np.int64)

    def metrics(self) -> dict[str, float]:
        return {"rollouts_max": float(self.rollouts_per_prompt.max())}


class GivenAllocator(KnapsackRolloutAllocator):
    """The trainer's allocator (same config and tracker, so it keeps observing) whose decision is
    ``decide(prompt_ids, budget, step)``."""

    def __init__(self, base: KnapsackRolloutAllocator, decide: Any) -> None:
        super().__init__(base.config, base.tracker)
        self.decide = decide

    def allocate(self, prompt_ids: Any, budget: int, *, step: int = 0, **_: Any) -> Any:
        return self.decide(list(prompt_ids), int(budget), int(step))


def give_allocations(trainer: Any, decide: Any) -> None:
    """Every one-round allocation of ``trainer`` is ``decide(prompt_ids, budget, step)``."""
    trainer.knapsack_allocator = GivenAllocator(trainer.knapsack_allocator, decide)


def inject_random_allocations(trainer: Any, seed: int) -> list[np.ndarray]:
    """Replace the allocator with random sizes summing to the budget (0 and 1 included)."""
    rng = np.random.default_rng(seed)
    drawn: list[np.ndarray] = []

    def allocate(prompt_ids: list[str], budget: int, step: int) -> FakeAllocation:
        sizes = rng.multinomial(budget, np.full(len(prompt_ids), 1 / len(prompt_ids)))
        drawn.append(sizes)
        return FakeAllocation(sizes)

    give_allocations(trainer, allocate)
    return drawn


def record_allocations(trainer: Any) -> list[Any]:
    """Every one-round allocation the trainer's own allocator makes, in order."""
    allocations: list[Any] = []
    base = trainer.knapsack_allocator

    class Recording(type(base)):  # type: ignore[misc]
        def allocate(self, *args: Any, **kwargs: Any) -> Any:
            allocations.append(super().allocate(*args, **kwargs))
            return allocations[-1]

    trainer.knapsack_allocator = Recording(base.config, base.tracker)
    return allocations


class FakeSecondRound:
    """Stands in for the core's SecondRound: given extra rollouts per prompt, no diagnostics."""

    def __init__(self, extra: np.ndarray) -> None:
        self.extra_rollouts = np.asarray(extra, dtype=np.int64)

    def metrics(self) -> dict[str, float]:
        return {"second_round_rollouts": float(self.extra_rollouts.sum())}


class GivenPilot:
    """The trainer's pilot round (every attribute of ``base``) whose second round is
    ``decide(prompt_ids, successes, scored, budget, step)``, successes counted as the core counts them."""

    def __init__(self, base: PilotRound, decide: Any) -> None:
        self.base, self.given = base, decide

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def decide(self, allocator: Any, prompt_ids: Any, pilot_rewards: Any, *, step: int = 0, **_: Any) -> Any:
        sizes = self.base.pilot_sizes()
        successes, scored = group_successes(pilot_rewards, sizes, allocator.tracker.success_threshold)
        return self.given(list(prompt_ids), successes, scored, self.base.second_round_budget, int(step))


def inject_random_second_rounds(trainer: Any, seed: int) -> list[dict[str, np.ndarray]]:
    """Replace the second-round decision with random extra rollouts summing to its budget (0 included)."""
    rng = np.random.default_rng(seed)
    drawn: list[dict[str, np.ndarray]] = []

    def allocate(prompt_ids, successes, scored, budget, step):
        extra = rng.multinomial(budget, np.full(len(prompt_ids), 1 / len(prompt_ids)))
        drawn.append({"successes": np.asarray(successes), "scored": np.asarray(scored), "extra": extra})
        return FakeSecondRound(extra)

    trainer.knapsack_pilot = GivenPilot(trainer.knapsack_pilot, allocate)
    return drawn


def assert_same_run(stock: tuple, knap: tuple) -> None:
    _, stock_out, stock_losses, stock_params = stock
    _, knap_out, knap_losses, knap_params = knap
    assert len(stock_out) == len(knap_out) > 0
    for a, b in zip(stock_out, knap_out, strict=True):
        assert torch.equal(a["advantages"], b["advantages"])
        assert torch.equal(a["completion_ids"], b["completion_ids"])
    assert stock_losses == knap_losses and len(stock_losses) > 0
    assert all(torch.equal(p, q) for p, q in zip(stock_params, knap_params, strict=True))


# --------------------------------------------------------------------------- numpy references
def _std(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(np.std(values, ddof=1)) if values.size >= 2 else float("nan")


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _aggregate(rpf: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = np.nansum(rpf * weights[None, :], axis=1)
    out[np.isnan(rpf).all(axis=1)] = np.nan
    return out


def _groups(sizes: list[int]) -> list[slice]:
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def numpy_grpo(rpf: np.ndarray, sizes, weights: np.ndarray, scale: str, aggregation: str) -> np.ndarray:
    rpf = rpf.astype(np.float64)
    adv = np.zeros(rpf.shape[0])
    if aggregation == "sum_then_normalize":
        r = _aggregate(rpf, weights)
        batch_std = _std(r)
        for g, n in zip(_groups(sizes), sizes):
            mean = _mean(r[g])
            std = 0.0 if n == 1 else (batch_std if scale == "batch" else _std(r[g]))
            adv[g] = r[g] - mean if scale == "none" else (r[g] - mean) / (std + 1e-4)
    else:
        z = np.zeros_like(rpf)
        for g, n in zip(_groups(sizes), sizes):
            for k in range(rpf.shape[1]):
                std = 0.0 if n == 1 else _std(rpf[g, k])
                z[g, k] = (rpf[g, k] - _mean(rpf[g, k])) / (std + 1e-4)
        r = np.nansum(z * weights[None, :], axis=1)
        r[np.isnan(rpf).all(axis=1)] = np.nan
        adv = (r - _mean(r)) / (_std(r) + 1e-4)
    return np.nan_to_num(adv, nan=0.0)


def numpy_rloo(rpf, sizes, weights, kl=None, beta=0.0, clip=None, normalize=False) -> np.ndarray:
    r = _aggregate(rpf.astype(np.float64), weights)
    if clip:
        r = np.clip(r, clip[0], clip[1])
    if beta:
        r = r - beta * kl
    adv = np.full(r.size, np.nan)
    for g, n in zip(_groups(sizes), sizes):
        if n == 1:
            adv[g] = 0.0
            continue
        for i in range(g.start, g.stop):
            others = np.delete(r[g], i - g.start)
            others = others[~np.isnan(others)]
            adv[i] = r[i] - others.mean() if others.size else np.nan
    if normalize:
        adv = (adv - _mean(adv)) / (_std(adv) + 1e-4)
    return np.nan_to_num(adv, nan=0.0)


# --------------------------------------------------------------------------- vLLM server mode (mocked)
def reversed_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """1 when the completion is its own prompt reversed: what :func:`mock_vllm_server` answers."""
    return [float(c == p[::-1]) for p, c in zip(prompts, completions, strict=True)]


def mock_vllm_server(trainer: Any, tokenizer: Any, importance_sampling: bool = False) -> Any:
    """Route ``trainer``'s generation through the real ``VLLMGeneration.generate`` to a MOCK client.

    No vLLM server can run here. The mock answers each prompt with its own reversed text, so a
    completion scored against another prompt (TRL's fixed-size ``[::num_generations]`` dedupe with
    variable groups) gets reward 0. Returns the mock client.
    """
    from unittest import mock

    from trl.generation.vllm_generation import VLLMGeneration

    eos = tokenizer.eos_token_id
    client = mock.Mock()

    def generate(prompts, features=None, n=1, **kwargs):
        completions = [[*reversed(ids), eos] for ids in prompts for _ in range(n)]
        return {
            "prompt_ids": prompts,
            "completion_ids": completions,
            "logprobs": [[[-1.0]] * len(c) for c in completions],
        }

    client.generate.side_effect = generate
    generation = VLLMGeneration.__new__(VLLMGeneration)
    generation.__dict__.update(
        accelerator=trainer.accelerator,
        mode="server",
        vllm_client=client,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=8,
        logprobs=0,
        structured_outputs_regex=None,
        generation_kwargs={},
        enable_sleep_mode=False,
    )
    generation.sync_weights = lambda: None
    trainer.use_vllm = True
    trainer.vllm_generation = generation
    trainer._last_loaded_step = 0
    trainer.vllm_importance_sampling_correction = importance_sampling
    return client


# --------------------------------------------------------------------------- the sandbox red team
ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
# No expected value is 0, so a candidate that returns 0 earns no fraction by luck.
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(3, 4) == 7\n"


def isolated() -> bool:
    """Whether this machine isolates untrusted code fully for this user (else the runners refuse)."""
    try:
        return not sandbox.missing_isolation(sandbox.sandbox_capabilities())
    except sandbox.SandboxUnavailableError:
        return False


# Skips (at set-up, not import: the check runs the sandbox once) unless the runners would run here;
# the fixture is conftest.py's ``isolation_or_skip``.
needs_isolation = pytest.mark.usefixtures("isolation_or_skip")


# Wrong solutions that end their own run after it started, every way we know: signals to the
# sandbox's init (pid 1 of its namespace, also its parent), to its process group and to every process
# it may signal; exits with the launcher's own failure code; deaths by signal.
ENDINGS = {
    **{
        f"{sig} to init": f"    return 0\nimport os, signal, time\nos.kill(1, signal.{sig})\ntime.sleep(0.5)\n"
        for sig in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGALRM", "SIGKILL")
    },
    "SIGINT to the parent in a call": "    import os, signal, time\n    os.kill(os.getppid(), signal.SIGINT)\n    time.sleep(0.5)\n    return 0\n",
    "SIGINT to the process group": "    return 0\nimport os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nos.killpg(0, signal.SIGINT)\ntime.sleep(0.5)\n",
    "SIGKILL to every process": "    return 0\nimport os, signal\nos.kill(-1, signal.SIGKILL)\n",
    "exit 125 at load": "    return 0\nimport os\nos._exit(125)\n",
    "exit 125 in a call": "    import os\n    os._exit(125)\n",
    "abort": "    import os\n    os.abort()\n",
    "SIGKILL to itself": "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
}


# Sends init every signal it can, then says whether it is still init's child.
INIT_SIGNALLER = (
    "import os, signal, time\n"
    "for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGKILL):\n"
    "    try:\n"
    "        os.kill(1, sig)\n"
    "    except PermissionError:\n"  # as root the program's pool uid may not signal init at all
    "        pass\n"
    "time.sleep(0.3)\n"
    "print('survived', os.getppid())\n"
)


def world_python() -> str | None:
    """An interpreter every user can run (a program run as a pool uid without a private root needs one)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and sandbox.world_reachable(os.path.realpath(candidate)):
            return candidate
    return None


def new_drop_box() -> Iterator[Path]:
    """A directory every uid may write (removed afterwards): where a program that ran leaves its mark."""
    path = Path(tempfile.mkdtemp(prefix="knapsack-redteam-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Opens a socket of every family and type, and socket pairs of a few; prints the errnos (0: opened).
SOCKET_PROBE = (
    "import json, socket\n"
    "seen = {}\n"
    "for family in range(0, 64):\n"
    "    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET):\n"
    "        try:\n"
    "            socket.socket(family, kind).close()\n"
    "            seen.setdefault(family, []).append(0)\n"
    "        except OSError as err:\n"
    "            seen.setdefault(family, []).append(err.errno)\n"
    "pairs = {}\n"
    "for family in (socket.AF_UNIX, socket.AF_INET, 40, 16):\n"
    "    try:\n"
    "        a, b = socket.socketpair(family)\n"
    "        pairs[family] = 0\n"
    "    except OSError as err:\n"
    "        pairs[family] = err.errno\n"
    "print(json.dumps({'seen': seen, 'pairs': pairs}))\n"
)


def check_socket_report(stdout: str) -> None:
    """AF_INET and AF_INET6 open; every other family, and socket pairs but AF_UNIX, fail with
    EPERM: the filter's answer (the kernel's for a family it lacks is EAFNOSUPPORT)."""
    report = json.loads(stdout)
    seen = {int(k): v for k, v in report["seen"].items()}
    assert 0 in seen[2] + seen[10]
    refused = {family: codes for family, codes in seen.items() if family not in (2, 10)}
    assert refused == {family: [errno.EPERM] * 4 for family in refused}
    pairs = {int(k): v for k, v in report["pairs"].items()}
    assert pairs == {1: 0, 2: errno.EPERM, 40: errno.EPERM, 16: errno.EPERM}


# Wrong solutions that answer their first call with raw bytes on the reply pipe, shaped to be
# expensive to decode: a set of 50,000 ints that share one hash (quadratic to build), 4 MiB of
# empty lists (~200 MiB once parsed).
HOSTILE_REPLIES = {
    "hash-colliding set": (
        "    import os, time\n"
        "    items = b','.join(str(k * (2**61 - 1)).encode() for k in range(1, 50_001))\n"
        '    os.write(4, b\'{"id":0,"ok":{"set":[\' + items + b\']}}\\n\')\n'
        "    time.sleep(60)\n"
    ),
    "4 MiB of empty lists": (
        "    import os, time\n"
        "    os.write(4, b'{\"id\":0,\"ok\":[' + b'[],' * 1_398_000 + b'[]]}\\n')\n"
        "    time.sleep(60)\n"
    ),
}


SPIN_PROMPT = 'def spin(n):\n    """Return the sum of i * i % 7 for i below n."""\n'
SPIN_CODE = "    total = 0\n    for i in range(n):\n        total += i * i % 7\n    return total\n"

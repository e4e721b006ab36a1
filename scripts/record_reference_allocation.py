"""Record what the Knapsack RL reference code allocates on random generation batches, as a JSON fixture.

What it records: ``--cases`` seeded random generation batches. Each batch is a few prompts, each with a
history of past visits (one list of 0/1 rewards per visit), plus the allocation settings. For each
batch the fixture holds the reward states the reference's dataset derives from the histories
(``[validity, success_rate, count]`` per prompt) and the rollout allocation and info dict that the
reference's knapsack returns for them, or the exception it raises (recorded, never skipped).

Where the code comes from: the paper's own repository, liziniu/KnapsackRL (Knapsack RL,
arXiv 2509.25849), read at run time from a git checkout or bare mirror with ``git show COMMIT:PATH``.
Nothing of it is copied into this repository: the functions are cut out of the file's text with
``ast`` and executed in a fresh namespace, with the reference's own imports of numpy and typing.

- ``verl/trainer/ppo/exploration_utils.py``: ``sampling_budget_by_knapsack`` and ``solve_by_dp``
  (plus the ``if NUMBA_AVAILABLE:`` block with ``dp_core_numba``, which only runs where numba is
  importable; the fixture says which DP path ran).
- ``verl/utils/dataset/rl_dataset.py``: the methods ``RLHFDataset.update_sample_state`` and
  ``RLHFDataset.get_sample_state``, called on a stand-in object that carries the attributes they read
  (``sample_states`` and the four settings, whose defaults are read from ``RLHFDataset.__init__``).

Each prompt's index is its position in the batch, as a string. Failures are stored as 0 in the
fixture; in some batches they are fed to the reference as -1, which its ``update_sample_state`` maps
to 0 (such cases say ``"failure_reward": -1``). The reference's ``print`` calls are silenced; the numpy
warnings it raises are kept in the case (``"warnings"``, only where there were some).

The reference pins ``numpy<2.0.0``. Under numpy 2 its DP computes the value gains in float32 (from its
float32 ``success_rates``), under numpy 1 in float64, and the two can break ties between prompts with
the same estimate differently. ``"allocation"`` is what ran here (the numpy version is in ``source``);
where computing the gains in float64 changes it, the case also has ``"allocation_float64_gains"``,
which is what numpy 1.26 returns (checked by running this script under it).

Rerun (numpy is the only dependency; ``git clone https://github.com/liziniu/KnapsackRL`` first)::

    python scripts/record_reference_allocation.py --repo /path/to/KnapsackRL --commit ca5d5f5 \\
        --out tests/fixtures/reference_allocation.json --cases 400 --seed 0
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import subprocess
import time
import types
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_COMMIT = "ca5d5f5"
ALLOCATION_FILE = "verl/trainer/ppo/exploration_utils.py"
DATASET_FILE = "verl/utils/dataset/rl_dataset.py"
RUN_SCRIPT = "examples/knapsack_trainer/run_knapsack_grpo_7b.sh"
CALLER = "verl/trainer/ppo/ray_trainer.py:budget_allocation"

# Modules the reference files import that the extracted functions need (torch, verl etc. are not).
NEEDED_IMPORTS = {"numpy", "time", "typing", "numba"}
DATASET_SETTINGS = (
    "min_buffer_length",
    "reward_buffer_length",
    "epoch_estimation",
    "robust_epoch_estimation",
)

VISIT_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32)
RATE_KINDS = ("zero", "one", "small", "large", "uniform")
# "default": a mix of every kind of prompt; "all_mixed": every prompt's estimate strictly inside (0, 1);
# "no_mixed": only unsolved, solved or unseen prompts; "seen": every prompt seen at least 8 times, none
# hopeless (mostly solved or mixed); "ties": a few prompts share one history; "sparse": short histories.
REGIMES = ("default", "all_mixed", "no_mixed", "seen", "ties", "sparse")
REGIME_WEIGHTS = (0.35, 0.15, 0.12, 0.13, 0.13, 0.12)


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def _keep_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return all(alias.name.split(".")[0] in NEEDED_IMPORTS for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] in NEEDED_IMPORTS
    # exploration_utils.py's ``try: from numba import njit ... except ImportError: ...``
    return isinstance(node, ast.Try) and all(_keep_import(n) or isinstance(n, ast.Assign) for n in node.body)


def exec_nodes(nodes: list[ast.stmt], filename: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "knapsack_rl_reference"}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), filename, "exec"), namespace)
    return namespace


def load_allocation(text: str) -> dict[str, Any]:
    """The knapsack functions, with the module's own imports and its ``NUMBA_AVAILABLE`` switch."""
    tree = ast.parse(text)
    wanted = {"sampling_budget_by_knapsack", "solve_by_dp"}
    nodes = [
        node
        for node in tree.body
        if _keep_import(node)
        or (isinstance(node, ast.FunctionDef) and node.name in wanted)
        or (
            isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "NUMBA_AVAILABLE"
        )
    ]
    namespace = exec_nodes(nodes, ALLOCATION_FILE)
    missing = wanted - namespace.keys()
    assert not missing, f"not found in {ALLOCATION_FILE}: {missing}"
    return namespace


def load_dataset_methods(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``update_sample_state``/``get_sample_state`` as plain functions, and the defaults of their settings."""
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RLHFDataset")
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    imports = [n for n in tree.body if _keep_import(n)]
    namespace = exec_nodes(
        [*imports, methods["update_sample_state"], methods["get_sample_state"]], DATASET_FILE
    )
    # ``self.min_buffer_length = self.config.get("min_buffer_length", 8)`` and the like, in __init__.
    defaults: dict[str, Any] = {}
    for node in ast.walk(methods["__init__"]):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Attribute)
            and node.targets[0].attr in DATASET_SETTINGS
            and isinstance(node.value, ast.Call)
        ):
            defaults[node.targets[0].attr] = ast.literal_eval(node.value.args[1])
    assert set(defaults) == set(DATASET_SETTINGS), defaults
    return namespace, defaults


def signature_defaults(text: str, name: str) -> dict[str, Any]:
    fn = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name)
    args = fn.args.args[len(fn.args.args) - len(fn.args.defaults) :]
    return {a.arg: ast.literal_eval(d) for a, d in zip(args, fn.args.defaults)}


def run_settings(script: str, allocation_defaults: dict[str, Any]) -> dict[str, Any]:
    """What the paper's Knapsack-GRPO run passes, read from its launch script."""
    env = dict(re.findall(r"^([A-Z_]+)=([^\s#]+)", script, flags=re.MULTILINE))

    def value(name: str) -> Any:
        raw = env[name]
        return {"true": True, "false": False}.get(raw, int(raw) if raw.isdigit() else raw)

    passed = {"n", "min_n", "negative_n", "positive_n", "max_n", "verbose", "reward_states"}
    return {
        "script": RUN_SCRIPT,
        "caller": f"{CALLER} calls sampling_budget_by_knapsack(reward_states, n=rollout.n, verbose=True, "
        "**trainer.allocation)",
        "n": value("N_RESP_PER_PROMPT"),
        "prompts_per_batch": value("TOTAL_BSZ") // value("N_RESP_PER_PROMPT"),
        "min_n": value("MIN_N"),
        "negative_n": value("NEGATIVE_N"),
        "positive_n": value("POSITIVE_N"),
        "max_n": value("MAX_N"),
        "verbose": True,
        "left_at_default": {k: v for k, v in allocation_defaults.items() if k not in passed},
        "dataset": {key: value(key.upper()) for key in DATASET_SETTINGS},
    }


def draw_rate(rng: np.random.Generator, kind: str) -> float:
    if kind == "zero":
        return 0.0
    if kind == "one":
        return 1.0
    if kind == "small":
        return float(rng.uniform(0.01, 0.15))
    if kind == "large":
        return float(rng.uniform(0.85, 0.99))
    return float(rng.uniform(0.0, 1.0))


def draw_history(
    rng: np.random.Generator, rate: float, visits: int, sizes: tuple[int, ...]
) -> list[list[int]]:
    return [(rng.random(int(rng.choice(sizes))) < rate).astype(int).tolist() for _ in range(visits)]


def draw_settings(rng: np.random.Generator) -> dict[str, Any]:
    n = int(rng.choice([4, 6, 8, 16]))
    min_n = 2 if rng.random() < 0.75 else int(rng.choice([1, 3]))
    roll = rng.random()
    if roll < 0.15:
        max_n = n
    elif roll < 0.3:
        max_n = int(rng.integers(n, 65))
    else:
        max_n = int(rng.integers(max(n, 16), 65))
    alpha = 0.9 if rng.random() < 0.7 else float(rng.choice([0.8, 0.95]))
    allow_fallback = bool(rng.random() >= 0.2)
    negative_n = None if rng.random() < 0.7 else int(rng.integers(min_n, n + 1))
    positive_n = None if rng.random() < 0.7 else int(rng.integers(min_n, n + 1))
    return {
        "n": n,
        "min_n": min_n,
        "max_n": max_n,
        "alpha": alpha,
        "allow_fallback": allow_fallback,
        "negative_n": negative_n,
        "positive_n": positive_n,
    }


class Reference:
    """The reference's functions, loaded from one commit of its repository."""

    def __init__(self, repo: str, commit: str) -> None:
        self.repo = repo
        self.commit = git(repo, "rev-parse", f"{commit}^{{commit}}").strip()
        allocation_text = git(repo, "show", f"{self.commit}:{ALLOCATION_FILE}")
        self.allocation = load_allocation(allocation_text)
        self.dataset, self.dataset_defaults = load_dataset_methods(
            git(repo, "show", f"{self.commit}:{DATASET_FILE}")
        )
        self.allocation_defaults = signature_defaults(allocation_text, "sampling_budget_by_knapsack")
        self.run_settings = run_settings(
            git(repo, "show", f"{self.commit}:{RUN_SCRIPT}"), self.allocation_defaults
        )
        self.dp_path = "numba" if self.allocation["NUMBA_AVAILABLE"] else "python"

    def reward_states(self, histories: list[list[list[int]]], failure: int) -> list[list[Any]]:
        dataset = types.SimpleNamespace(sample_states={}, **self.dataset_defaults)
        with contextlib.redirect_stdout(io.StringIO()):
            for i, visits in enumerate(histories):
                for rewards in visits:
                    self.dataset["update_sample_state"](
                        dataset, str(i), [failure if r == 0 else r for r in rewards]
                    )
            states = [self.dataset["get_sample_state"](dataset, str(i)) for i in range(len(histories))]
        return [[int(v), float(rate), int(count)] for v, rate, count in states]

    def allocate(
        self, reward_states: list[list[Any]], settings: dict[str, Any], float64_gains: bool = False
    ) -> dict[str, Any]:
        """Call ``sampling_budget_by_knapsack``; its prints are silenced and its numpy warnings kept.

        ``float64_gains`` hands ``solve_by_dp`` its float32 ``success_rates`` array upcast to float64,
        so the DP's value gains are computed in float64, as they are under numpy < 2 (the reference
        pins ``numpy<2.0.0``; numpy 2 keeps ``np.float32 ** int`` and ``1 - np.float32`` in float32).
        """
        namespace = self.allocation
        solve = namespace["solve_by_dp"]

        def solve_with_float64_rates(success_rates: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
            return solve(success_rates.astype(np.float64), *args, **kwargs)

        if float64_gains:
            namespace["solve_by_dp"] = solve_with_float64_rates
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                budget, info = namespace["sampling_budget_by_knapsack"](
                    reward_states=np.array(reward_states), solver="dp", verbose=False, **settings
                )
        except Exception as exc:
            return {
                "allocation": None,
                "info": None,
                "error": f"{type(exc).__name__}: {exc}",
                **_warned(caught),
            }
        finally:
            namespace["solve_by_dp"] = solve
        info = {
            "fallback": bool(info["fallback"]),
            "fallback_effective_ratio": float(info["fallback_effective_ratio"]),
        }
        return {"allocation": [int(b) for b in budget], "info": info, "error": None, **_warned(caught)}


def _warned(caught: list[warnings.WarningMessage]) -> dict[str, list[str]]:
    """The warnings the reference raised, as ``"Category: message"``; nothing when there were none."""
    return {"warnings": [f"{w.category.__name__}: {w.message}" for w in caught]} if caught else {}


def is_mixed(state: list[Any]) -> bool:
    return state[0] == 1 and 0 < state[1] < 1


def draw_case(rng: np.random.Generator, ref: Reference) -> dict[str, Any]:
    settings = draw_settings(rng)
    regime = str(rng.choice(REGIMES, p=REGIME_WEIGHTS))
    prompts = int(rng.integers(2, 25))
    histories: list[list[list[int]]] = []
    only_solved = regime == "no_mixed" and rng.random() < 0.5
    for _ in range(prompts):
        if regime == "all_mixed":
            # Redraw until the reference's own estimate is valid and strictly between 0 and 1.
            for _ in range(100):
                rate = float(rng.uniform(0.1, 0.9)) if rng.random() < 0.7 else float(rng.uniform(0.35, 0.65))
                history = draw_history(rng, rate, int(rng.integers(1, 5)), VISIT_SIZES[4:])
                if is_mixed(ref.reward_states([history], 0)[0]):
                    break
        elif regime == "no_mixed":
            # Half of these batches hold solved prompts only, seen at least 8 times.
            kind = "one" if only_solved else str(rng.choice(["zero", "one", "unseen"]))
            visits = 0 if kind == "unseen" else int(rng.integers(1, 5))
            history = draw_history(rng, 1.0 if kind == "one" else 0.0, visits, VISIT_SIZES[5 * only_solved :])
        elif regime == "seen":
            kind = str(rng.choice(RATE_KINDS, p=[0.0, 0.35, 0.0, 0.2, 0.45]))
            history = draw_history(rng, draw_rate(rng, kind), int(rng.integers(1, 5)), VISIT_SIZES[5:])
        elif regime == "sparse":
            kind = str(rng.choice(RATE_KINDS))
            history = draw_history(rng, draw_rate(rng, kind), int(rng.integers(0, 3)), VISIT_SIZES[:6])
        else:
            kind = str(rng.choice(RATE_KINDS, p=[0.15, 0.1, 0.15, 0.15, 0.45]))
            history = draw_history(rng, draw_rate(rng, kind), int(rng.integers(0, 5)), VISIT_SIZES)
        histories.append(history)
    if regime == "ties":
        # Copy one prompt's history onto a few others: identical estimates.
        source = int(rng.integers(prompts))
        for j in rng.choice(prompts, size=min(prompts, int(rng.integers(2, 5))), replace=False):
            histories[int(j)] = [list(v) for v in histories[source]]
    failure = -1 if rng.random() < 0.2 else 0
    states = ref.reward_states(histories, failure)
    case = {"regime": regime, "settings": settings, "failure_reward": failure, "visits": histories}
    case = {**case, "reward_states": states, **ref.allocate(states, settings)}
    as_numpy1 = ref.allocate(states, settings, float64_gains=True)
    assert as_numpy1["error"] == case["error"] and as_numpy1["info"] == case["info"]
    if as_numpy1["allocation"] != case["allocation"]:
        case["allocation_float64_gains"] = as_numpy1["allocation"]
    return case


def summarize(
    cases: list[dict[str, Any]], reference: Reference, min_count: int, buffer: int
) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    warned: Counter[str] = Counter()
    for case in cases:
        states, settings, alloc = case["reward_states"], case["settings"], case["allocation"]
        mixed = [s for s in states if is_mixed(s)]
        counts["regime_" + case["regime"]] += 1
        counts["batches_no_mixed_prompt"] += not mixed
        counts["batches_every_prompt_mixed"] += len(mixed) == len(states)
        counts["batches_no_mixed_with_zero_or_invalid"] += not mixed and any(
            s[0] == 0 or s[1] == 0 for s in states
        )
        counts["batches_only_solved"] += all(s[0] == 1 and s[1] == 1 for s in states)
        below = sum(s[2] < min_count for s in states)
        counts["prompts_below_validity_threshold"] += below
        counts["prompts_unseen"] += sum(s[2] == 0 for s in states)
        counts["batches_with_prompt_below_threshold"] += below > 0
        last_big = sum(bool(v) and len(v[-1]) >= buffer for v in case["visits"])
        counts["prompts_last_visit_ge_buffer"] += last_big
        counts["batches_with_last_visit_ge_buffer"] += last_big > 0
        rates = [s[1] for s in mixed]
        counts["batches_with_tied_mixed_estimates"] += len(set(rates)) < len(rates)
        counts["batches_allow_fallback_false"] += not settings["allow_fallback"]
        counts["batches_failures_fed_as_minus_one"] += case["failure_reward"] == -1
        warned.update(set(case.get("warnings", [])))
        if case["error"] is not None:
            counts["crashes"] += 1
            errors[case["error"].split(":")[0]] += 1
            continue
        counts["fallback_fired"] += case["info"]["fallback"]
        zero_set = any(s[0] == 0 or s[1] == 0 for s in states)
        counts["fallback_fired_surplus_to_solved"] += case["info"]["fallback"] and not zero_set
        counts["batches_float64_gains_change_allocation"] += "allocation_float64_gains" in case
        counts["fallback_not_fired"] += not case["info"]["fallback"]
        counts["batches_some_prompt_over_max_n"] += max(alloc) > settings["max_n"]
        counts["batches_uniform_allocation"] += all(a == settings["n"] for a in alloc)
        # Prompts below the validity threshold count as success_rate == 0 when surplus is spread.
        counts["prompts_invalid_given_more_than_n"] += sum(
            s[0] == 0 and a > settings["n"] for s, a in zip(states, alloc)
        )
    return {
        "cases": len(cases),
        "prompts": sum(len(c["reward_states"]) for c in cases),
        **dict(sorted(counts.items())),
        "errors": dict(sorted(errors.items())),
        "warnings": dict(sorted(warned.items())),
        "dp_path": reference.dp_path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="git checkout or bare mirror of liziniu/KnapsackRL")
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help="commit of the reference to run")
    parser.add_argument("--out", default="tests/fixtures/reference_allocation.json")
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    ref = Reference(args.repo, args.commit)
    rng = np.random.default_rng(args.seed)
    cases = [draw_case(rng, ref) for _ in range(args.cases)]
    defaults = ref.dataset_defaults
    summary = summarize(cases, ref, defaults["min_buffer_length"], defaults["reward_buffer_length"])
    runtime = time.perf_counter() - start

    header = {
        "source": {
            "repository": "liziniu/KnapsackRL",
            "commit": ref.commit,
            "allocation": f"{ALLOCATION_FILE}:sampling_budget_by_knapsack",
            "estimate": f"{DATASET_FILE}:RLHFDataset.update_sample_state/get_sample_state",
            "dp_path": ref.dp_path,
            "dp_path_rule": "solve_by_dp runs dp_core_numba only where numba imports and "
            "n_items * budget * (max_n - min_n) > 50000, as in the paper's 256-prompt batches",
            "numpy": np.__version__,
            "called_with": "reward_states=np.array(reward_states) (float64, shape (P, 3)), solver='dp', "
            "verbose=False, total_budget=None, cost_estimation='probability', plus each case's settings",
            "dataset_settings": defaults,
            "run_settings": ref.run_settings,
        },
        "generator": {
            "script": "scripts/record_reference_allocation.py",
            "seed": args.seed,
            "cases": args.cases,
        },
        "summary": summary,
    }
    body = ",\n".join(json.dumps(case, separators=(",", ":")) for case in cases)
    text = json.dumps(header, indent=1)[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n"
    assert json.loads(text)["cases"] == cases
    Path(args.out).write_text(text, encoding="utf-8")

    print(json.dumps(summary, indent=1))
    print(f"wrote {len(cases)} cases to {args.out} ({len(text) / 1024:.0f} KiB) in {runtime:.1f} s")


if __name__ == "__main__":
    main()

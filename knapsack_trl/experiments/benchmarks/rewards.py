"""Reward throughput and parsing cost, measured side by side (speed belongs here, not in tests).

1. **A batch of timeouts**: ``n`` (64) completions that sleep forever, scored by ``humaneval_pass``
   with the pool of the old default (``min(4, cpu_count)`` workers) and with today's default (the
   batch at once, within :func:`~knapsack_trl.tasks.sandbox.runner.sandbox_concurrency`). The target is
   about one ``timeout_s`` per batch, not ``n / workers`` of them.
2. **One sandboxed run**: the median wall time of ``run_python("pass")`` and of judging one correct
   HumanEval-style completion, one at a time.
3. **Parsing adversarial text**: each scanner on inputs of size ``k`` and ``10 k``; a ratio near 10
   is linear. The old regular expressions (the ``\\frac`` pattern, cubic or worse in whitespace,
   and the code-fence pattern, quadratic in backticks) on ``k`` and ``2 k``, far smaller inputs.

Run: ``python -m knapsack_trl.benchmarks.rewards [--json] [--n 64] [--timeout 5] [--skip-before]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
SLEEPER = "    import time\n    time.sleep(10_000)\n"
# The patterns this release replaced, kept here only to time them against the new scanners.
OLD_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}|\\[dt]?frac\s*(\d)\s*(\d)")
OLD_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def timeouts_batch(n: int, timeout_s: float, skip_before: bool) -> dict[str, Any]:
    """Seconds to score ``n`` sleeping completions with the old and the new pool size."""
    from knapsack_trl.tasks.humaneval.reward import make_humaneval_reward, pool_size

    old_workers = min(4, os.cpu_count() or 1)
    columns = {"test": [ADD_TEST] * n, "entry_point": ["add"] * n, "prompt": [ADD_PROMPT] * n}
    result: dict[str, Any] = {"n": n, "timeout_s": timeout_s, "new_workers": pool_size(n)}
    runs = [("after", None)] if skip_before else [("before", old_workers), ("after", None)]
    for label, workers in runs:
        reward = make_humaneval_reward(timeout_s=timeout_s, max_workers=workers)
        start = time.perf_counter()
        scores = reward([SLEEPER] * n, **columns)
        result[f"{label}_s"] = time.perf_counter() - start
        assert scores == [0.0] * n, scores
    result["old_workers"] = old_workers
    if "before_s" in result:
        result["speedup"] = result["before_s"] / result["after_s"]
    result["after_in_timeouts"] = result["after_s"] / timeout_s
    return result


def one_run(repeats: int = 10) -> dict[str, float]:
    """Median seconds of one trivial sandboxed program and of judging one correct completion."""
    from knapsack_trl.tasks.humaneval.reward import judge_completion
    from knapsack_trl.tasks.sandbox.runner import run_python

    run_python("pass")  # warm caches (interpreter paths, cgroup probe)
    sandbox_s = _median(lambda: run_python("pass"), repeats)
    judge_s = _median(lambda: judge_completion(ADD_PROMPT, "    return a + b\n", ADD_TEST, "add"), repeats)
    return {"run_python_s": sandbox_s, "judge_completion_s": judge_s}


def parsing(size: int = 20_000) -> list[dict[str, Any]]:
    """Each scanner at ``size`` and ``10 * size``: seconds and their ratio (about 10 is linear)."""
    from knapsack_trl.tasks.gsm8k.reward import make_gsm8k_reward
    from knapsack_trl.tasks.humaneval.reward import extract_code

    reward = make_gsm8k_reward(use_math_verify=False, fallback_last_number=True)
    cases: dict[str, tuple[Callable[[int], str], Callable[[str], Any]]] = {
        "\\frac with spaces": (lambda k: "\\frac{" + " " * k + "1" + " " * k + "}{2" + " " * k, None),
        "nested \\frac": (lambda k: "\\frac{" * k + "1" + "}" * k, None),
        "#### runs": (lambda k: "####" * k, None),
        "'answer is' runs": (lambda k: "answer is " * k + "9", None),
        "thousands separators": (lambda k: "1,234" * k, None),
        "spaced minus": (lambda k: "- " * k + "5", None),
        "unclosed \\boxed": (lambda k: "\\boxed{" + "{" * k, None),
        "backticks": (lambda k: "`" * (3 * k), extract_code),
        "empty fences": (lambda k: "```\n" * k, extract_code),
        "blank lines before def": (lambda k: "```python\n" + "\n" * (3 * k) + "def f(): pass", extract_code),
    }
    rows = []
    for name, (make, func) in cases.items():
        score = func or (lambda text: reward([text], answer=["1"]))
        rows.append(_scaling(name, make, size, 10, score))
    # The old patterns blow up on much smaller inputs: twice the input, 8x (cubic) and 4x (quadratic).
    rows.append(_scaling("old \\frac regex", lambda k: "\\frac{" + " " * k + "1" + " " * k + "}{2" + " " * k,
                         100, 2, lambda text: OLD_FRAC.sub("", text)))  # fmt: skip
    rows.append(_scaling("old fence regex", lambda k: "`" * k, 6000, 2, OLD_FENCE.findall))
    return rows


def _scaling(
    name: str, make: Callable[[int], str], size: int, scale: int, func: Callable[[str], Any]
) -> dict:
    """Seconds of ``func`` on ``make(size)`` and ``make(scale * size)``, and their ratio."""
    small, large = make(size), make(scale * size)
    t_small = _median(lambda: func(small), 3)
    t_large = _median(lambda: func(large), 3)
    return {"input": name, "chars": len(small), "scale": scale, "small_s": t_small, "large_s": t_large,
            "ratio": t_large / max(t_small, 1e-9)}  # fmt: skip


def _median(func: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--n", type=int, default=64, help="sleeping completions in the batch (default 64)")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="timeout_s of the reward (default 5, its default)"
    )
    parser.add_argument("--skip-before", action="store_true", help="skip the slow run with the old pool size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    report = {
        "cpus": os.cpu_count(),
        "timeouts": timeouts_batch(args.n, args.timeout, args.skip_before),
        "one_run": one_run(),
        "parsing": parsing(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    t = report["timeouts"]
    print(f"{t['n']} sleeping completions, timeout_s={t['timeout_s']}, {report['cpus']} CPUs:")
    if "before_s" in t:
        print(f"  before ({t['old_workers']} workers): {t['before_s']:.1f} s")
    print(
        f"  after  ({t['new_workers']} workers): {t['after_s']:.1f} s = {t['after_in_timeouts']:.2f} timeouts"
    )
    if "speedup" in t:
        print(f"  speed-up: {t['speedup']:.1f}x")
    o = report["one_run"]
    print(
        f"one run_python('pass'): {o['run_python_s'] * 1000:.0f} ms; one judged completion: {o['judge_completion_s'] * 1000:.0f} ms"
    )
    print(f"{'input':28} {'chars':>8} {'seconds':>9} {'scale':>6} {'seconds':>9} {'ratio':>6}")
    for row in report["parsing"]:
        print(f"{row['input']:28} {row['chars']:>8} {row['small_s']:>9.4f} {str(row['scale']) + 'x':>6} "
              f"{row['large_s']:>9.4f} {row['ratio']:>6.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""HumanEval reward: run prompt + completion + the task's tests in the sandbox.

A completion passes only if the harness reaches the end of ``check(entry_point)`` and prints a
per-run random sentinel: an exit code of 0 alone proves nothing (``sys.exit(0)`` before the tests is
a known reward hack). The sentinel arrives on stdin, is read before the completion's code runs, and
the harness helpers that print it carry random per-run names: forging a pass takes deliberate
introspection of the harness (its source file or its globals), which no in-process harness can
prevent, but exiting early, printing a fixed string or redefining ``check`` all score 0.

The binary reward (1.0 all tests pass, else 0.0) is the success signal the knapsack tracker needs;
the fraction variant (share of ``assert`` statements that held) is a shaped alternative for the
loss, never for estimating success rates.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import secrets
import textwrap
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from knapsack_trl.rewards.sandbox import SandboxResult, run_python

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = {"", "python", "py", "python3", "py3"}


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's chat form ``[{"role": "assistant", ...}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        if not assistant:
            return ""
        content = assistant[-1].get("content", "")
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else str(content)
    raise TypeError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}"
    )


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a completion: the fenced block that defines ``entry_point`` (else the first
    Python block), or the whole text when there is no fence. An unclosed fence (a truncated
    generation) runs to the end of the text."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    blocks = [_dedent_module(body) for lang, body in blocks if lang in _PY_LANGS]
    if not blocks:
        return text
    if entry_point:
        pattern = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        for body in blocks:
            if pattern.search(body):
                return body
    return blocks[0]


def _dedent_module(block: str) -> str:
    """A fenced block indented as a whole (inside a markdown list) back at column 0; a block
    that starts indented but is not module-level code stays as it is (a function body)."""
    dedented = textwrap.dedent(block)
    first = dedented.lstrip("\n").split("\n", 1)[0]
    if dedented != block and first.startswith(("def ", "async def ", "class ", "import ", "from ", "@")):
        return dedented
    return block


def build_program(
    code_prompt: str, completion: str, test: str, entry_point: str, *, token: str, fraction: bool = False
) -> str:
    """The program the sandbox runs: harness prelude, prompt + completion, tests, ``check``, sentinel.

    ``token`` (random per run) names the harness's hidden helpers. With ``fraction`` each ``assert``
    in the tests is counted instead of stopping the run.
    """
    finish, counter = f"_ks_finish_{token}", f"_ks_assert_{token}"
    prelude = (
        f"def _ks_harness_{token}():\n"
        "    import sys\n"
        "    nonce = sys.stdin.readline().strip()\n"
        "    counts = [0, 0]\n"
        "    def check_one(condition):\n"
        "        counts[1] += 1\n"
        "        try:\n"
        "            if condition():\n"
        "                counts[0] += 1\n"
        "        except Exception:\n"
        "            pass\n"
        "    def finish():\n"
        "        sys.stdout.write('\\n' + nonce + ' ' + str(counts[0]) + ' ' + str(counts[1]) + '\\n')\n"
        "        sys.stdout.flush()\n"
        "    return finish, check_one\n"
        f"{finish}, {counter} = _ks_harness_{token}()\n"
        f"del _ks_harness_{token}\n"
    )
    if fraction:
        test = _count_asserts(test, counter)
    body = completion if completion.startswith((" ", "\t")) else "\n" + completion
    return f"{prelude}{code_prompt}{body}\n\n{test}\n\ncheck({entry_point})\n{finish}()\n"


def _count_asserts(test: str, counter: str) -> str:
    """Rewrite every ``assert cond`` in the tests as ``counter(lambda: cond)``."""

    class Rewriter(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> ast.AST:
            call = ast.Call(
                func=ast.Name(id=counter, ctx=ast.Load()),
                args=[ast.Lambda(args=_no_args(), body=node.test)],
                keywords=[],
            )
            return ast.copy_location(ast.Expr(value=call), node)

    try:
        tree = Rewriter().visit(ast.parse(test))
    except SyntaxError:
        return test  # the asserts stop the run as usual: all or nothing
    return ast.unparse(ast.fix_missing_locations(tree))


def _no_args() -> ast.arguments:
    """An empty argument list for a lambda."""
    return ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
    )


def _parse_result(result: SandboxResult, nonce: str, fraction: bool) -> float | None:
    """Score one run: 0.0 unless it exited 0 and printed the sentinel after ``check`` returned."""
    if result.status == "error":
        logger.warning("sandbox could not run a HumanEval program: %s", result.stderr[-500:])
        return None
    if result.status != "ok":
        return 0.0
    for line in reversed(result.stdout.splitlines()):
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce:
            passed, total = int(parts[1]), int(parts[2])
            if not fraction or total == 0:
                return 1.0
            return passed / total
    return 0.0


def make_humaneval_reward(
    *,
    fraction: bool = False,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_workers: int | None = None,
) -> Callable[..., list[float | None]]:
    """Build a TRL reward function for HumanEval-style tasks.

    The returned ``f(completions, test, entry_point, prompt=None, **kwargs)`` runs each completion in
    the sandbox, ``max_workers`` at a time (default ``min(4, os.cpu_count())``). The code prefix is
    the dataset's ``code_prompt`` column, else ``prompt`` / TRL's ``prompts`` when they are plain
    text; a chat prompt without ``code_prompt`` means the completion must hold the whole function.
    Scores: 1.0 / 0.0 (``fraction=False``), or the share of asserts that held (``fraction=True``,
    0.0 when the run did not finish); ``None`` only when the sandbox itself failed.
    """
    workers = max_workers or min(4, os.cpu_count() or 1)

    def reward(
        completions: Sequence[Any],
        test: Sequence[str],
        entry_point: Sequence[str],
        prompt: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(completions)
        prefixes = _code_prefixes(n, kwargs.get("code_prompt"), prompt, kwargs.get("prompts"))
        if len(test) != n or len(entry_point) != n:
            raise ValueError(
                f"humaneval reward: got {n} completions but {len(test)} tests, {len(entry_point)} entry points"
            )
        jobs = []
        for completion, prefix, tests, entry in zip(completions, prefixes, test, entry_point):
            code = extract_code(completion_text(completion), entry)
            token, nonce = secrets.token_hex(8), secrets.token_hex(16)
            program = build_program(prefix, code, tests, entry, token=token, fraction=fraction)
            jobs.append((program, nonce))

        def run_one(job: tuple[str, str]) -> float | None:
            program, nonce = job
            result = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb, stdin=nonce + "\n")
            return _parse_result(result, nonce, fraction)

        with ThreadPoolExecutor(max_workers=min(workers, max(n, 1))) as pool:
            scores = list(pool.map(run_one, jobs))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            log_metric("humaneval/sandbox_errors", sum(s is None for s in scores) / n)
        return scores

    reward.__name__ = "humaneval_pass_fraction" if fraction else "humaneval_pass"
    reward.__qualname__ = reward.__name__
    return reward


def _code_prefixes(n: int, code_prompt: Any, prompt: Any, prompts: Any) -> list[str]:
    """Per completion, the code the completion continues (empty if only a chat prompt is known)."""
    for candidate in (code_prompt, prompt, prompts):
        if candidate is not None and len(candidate) == n and all(isinstance(p, str) for p in candidate):
            return list(candidate)
    return [""] * n


humaneval_pass_reward = make_humaneval_reward()
humaneval_pass_fraction_reward = make_humaneval_reward(fraction=True)

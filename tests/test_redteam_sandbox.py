"""Red team of the sandbox and the HumanEval judge: one section per class of attack that worked
against the previous release (issue 20; the attacks themselves stay held out, these are our own).

Every test here runs as whatever user runs pytest: as root the program gets a pool uid; as any other
uid it runs as that uid inside a user namespace, and where the kernel refuses namespaces the runners
must refuse. ``tests/test_sandbox_users.py`` runs the same classes as another uid from a root suite.
"""

from __future__ import annotations

import sys

import pytest

from knapsack_trl.tasks.humaneval.reward import judge_completion, make_humaneval_reward
from knapsack_trl.tasks.sandbox import runner as sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
# No expected value is 0, so a candidate that returns 0 earns no fraction by luck.
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(3, 4) == 7\n"


def isolated() -> bool:
    """Whether this machine isolates untrusted code fully for this user (else the runners refuse)."""
    try:
        return not sandbox.missing_isolation(sandbox.sandbox_capabilities())
    except sandbox.SandboxUnavailableError:
        return False


needs_isolation = pytest.mark.skipif(not isolated(), reason="this machine cannot isolate untrusted code")


def add_scores(completions: list[str], *, fraction: bool = False, timeout_s: float = 2.0) -> list:
    reward = make_humaneval_reward(fraction=fraction, timeout_s=timeout_s)
    n = len(completions)
    return reward(completions, test=[ADD_TEST] * n, entry_point=["add"] * n, prompt=[ADD_PROMPT] * n)


# --- class 1: a candidate cannot opt out of its penalty ------------------------------------------

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


@needs_isolation
@pytest.mark.parametrize("fraction", [False, True], ids=["binary", "fraction"])
def test_a_candidate_that_ends_its_own_run_scores_zero_never_none(fraction):
    scores = add_scores(list(ENDINGS.values()), fraction=fraction)
    assert dict(zip(ENDINGS, scores)) == dict.fromkeys(ENDINGS, 0.0)


@needs_isolation
def test_init_ignores_the_signals_a_program_can_send_it():
    source = (
        "import os, signal, time\n"
        "for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGKILL):\n"
        "    try:\n"
        "        os.kill(1, sig)\n"
        "    except PermissionError:\n"  # as root the program's pool uid may not signal init at all
        "        pass\n"
        "time.sleep(0.3)\n"
        "print('survived', os.getppid())\n"
    )
    result = sandbox.run_python(source)
    assert (result.status, result.stdout.split()) == ("ok", ["survived", "1"]), result


def test_a_run_the_program_ended_is_a_failure_never_an_error():
    started = {"isolation": ["rlimits"], "started": True}
    # init or the launcher's processes died after the program started: the program's doing.
    assert sandbox._classify(False, 0, {**started, "exited": True}) == ("failed", None)
    assert sandbox._classify(False, 0, {**started, "error": "KeyboardInterrupt: "}) == ("failed", None)
    assert sandbox._classify(False, None, started) == ("failed", None)
    # Before the program started, or when it could not be executed: the sandbox's failure.
    assert sandbox._classify(False, 0, {"error": "mount /tmp: EPERM", "exited": True}) == ("error", None)
    assert sandbox._classify(False, 0, {"started": False, "error": "exec: ENOENT"}) == ("error", None)
    assert sandbox._classify(False, 0, {"exited": True}) == ("error", 0)
    # The clock and the caller still decide first.
    assert sandbox._classify(True, None, started) == ("timeout", None)
    assert sandbox._classify(False, 0, {**started, "stopped": True}) == ("stopped", None)
    assert sandbox._classify(False, 0, {**started, "wait_status": 0}) == ("ok", 0)


@needs_isolation
def test_the_judge_scores_a_sandbox_that_died_after_the_start_as_zero():
    # The strongest ending: the candidate kills the whole sandbox tree from inside its call.
    code = "    import os, signal\n    os.kill(1, signal.SIGKILL)\n    os.kill(-1, signal.SIGKILL)\n    os._exit(1)\n"
    assert judge_completion(ADD_PROMPT, code, ADD_TEST, "add", timeout_s=2.0) == 0.0
    assert judge_completion(ADD_PROMPT, "    return a + b\n", ADD_TEST, "add", timeout_s=2.0) == 1.0

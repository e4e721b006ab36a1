"""Red team of the sandbox and the HumanEval judge: one section per class of attack that worked
against the previous release (issue 20; the attacks themselves stay held out, these are our own).

Every test here runs as whatever user runs pytest: as root the program gets a pool uid; as any other
uid it runs as that uid inside a user namespace, and where the kernel refuses namespaces the runners
must refuse. ``tests/test_sandbox_users.py`` runs the same classes as another uid from a root suite.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from knapsack_trl.tasks.humaneval import judge as harness
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


needs_isolation = pytest.mark.skipif(
    not isolated(),
    reason="this machine cannot isolate untrusted code: the runners refuse (the class 2 and 7 tests)",
)


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


@needs_isolation
def test_init_ignores_the_signals_a_program_can_send_it():
    result = sandbox.run_python(INIT_SIGNALLER)
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


# --- class 7: every exported runner requires isolation --------------------------------------------


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


@pytest.fixture
def drop_box() -> Iterator[Path]:
    yield from new_drop_box()


def test_exported_runners_refuse_without_isolation(monkeypatch, drop_box):
    import knapsack_trl.rewards as published

    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)  # the documented hook: no namespaces
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    mark = drop_box / "ran"
    program = f"open({str(mark)!r}, 'w').write('x')\n"
    attempts = {
        "run_python": lambda: published.run_python(program),
        "start_python": lambda: published.start_python(program).wait(),
        "judge_completion": lambda: judge_completion(
            ADD_PROMPT, f"    return a + b\n{program}", ADD_TEST, "add"
        ),
    }
    for name, attempt in attempts.items():
        # Refused up front: measures missing, or (root with an interpreter only root can run) not
        # even a trivial program could start as the pool uid.
        with pytest.raises(sandbox.SandboxUnavailableError, match="To enable full isolation") as err:
            attempt()
        assert "netns" in str(err.value) or "cannot run a trivial program" in str(err.value), name
    assert not mark.exists()  # refused before anything ran


def test_the_launcher_refuses_a_run_without_the_isolation_it_requires(monkeypatch, drop_box):
    # Even when the up-front check is fooled (a stale cache that claims full isolation), the launcher
    # checks the measures in force for this run, in the program's own process, before its exec.
    python = world_python()
    if python is None:
        pytest.skip("needs an interpreter every user can run (for the run without a private root)")
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    monkeypatch.setattr(sandbox, "_INTERPRETER", {**sandbox._interpreter_info(), "python": python})
    monkeypatch.setitem(sandbox._CAPABILITIES, False, frozenset({*sandbox.REQUIRED_ISOLATION, "userns"}))
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    mark = drop_box / "ran"
    result = sandbox.run_python(f"open({str(mark)!r}, 'w').write('x')\n")
    assert result.status == "error" and result.returncode is None, result
    assert "refusing to run untrusted code" in result.stderr and "netns" in result.stderr
    assert not mark.exists()


# --- class 2: the unsafe opt-in never hands the program its judge ---------------------------------

# A wrong solution that, at load, goes for its judge through the host's /proc: reads the judge's
# configuration (the tests and expected values), writes a passing verdict into the judge's verdict
# pipe, kills the judge and a process of the trainer's uid. What it managed lands in the drop box.
JUDGE_HUNTER = """
    return 0
import os, signal
_log = []
for _pid in os.listdir("/proc"):
    if not _pid.isdigit() or int(_pid) == os.getpid():
        continue
    try:
        _argv = open(f"/proc/{_pid}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    if b"judge" in _argv and any(a.endswith(b"config.json") for a in _argv):
        _log.append("judge seen")
        for _arg in _argv:
            if _arg.endswith(b"config.json"):
                try:
                    open(_arg).read()
                    _log.append("config read")
                except OSError:
                    pass
        for _fd in range(3, 64):
            try:
                _w = os.open(f"/proc/{_pid}/fd/{_fd}", os.O_WRONLY | os.O_NONBLOCK)
                os.write(_w, b'{"finished": true, "failure": null, "calls": 1, "total": 1, "held": 1}')
                _log.append("verdict written")
            except OSError:
                pass
        try:
            os.kill(int(_pid), signal.SIGKILL)
            _log.append("judge killed")
        except OSError:
            pass
try:
    os.kill(DECOY, signal.SIGKILL)
    _log.append("decoy killed")
except OSError:
    pass
open(DROP + "/log", "w").write(",".join(_log))
"""


def test_the_unsafe_opt_in_is_refused_for_callers_other_than_root(monkeypatch, drop_box):
    if os.geteuid() == 0:
        pytest.skip("runs as a caller other than root (tests/test_sandbox_users.py does, from a root suite)")
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    mark = drop_box / "ran"
    program = f"open({str(mark)!r}, 'w').write('x')\n"
    for attempt in (
        lambda: sandbox.require_isolation("humaneval_pass"),
        lambda: sandbox.run_python(program),
        lambda: make_humaneval_reward(),
        lambda: judge_completion(ADD_PROMPT, f"    return a + b\n{program}", ADD_TEST, "add"),
    ):
        with pytest.raises(sandbox.SandboxUnavailableError, match="refused for a caller other than root"):
            attempt()
    assert not mark.exists()


def test_the_unsafe_opt_in_as_root_keeps_the_judge_out_of_the_programs_reach(monkeypatch, drop_box):
    if os.geteuid() != 0:
        pytest.skip("the opt-in runs only for root (a caller other than root is refused, tested above)")
    python = world_python()
    if python is None:
        pytest.skip("needs an interpreter every user can run (the program runs as a pool uid)")
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    monkeypatch.setattr(sandbox, "_INTERPRETER", {**sandbox._interpreter_info(), "python": python})
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    decoy = subprocess.Popen(["sleep", "60"])  # a process of the trainer's uid
    try:
        code = JUDGE_HUNTER.lstrip("\n").replace("DECOY", str(decoy.pid)).replace("DROP", repr(str(drop_box)))
        score = judge_completion(ADD_PROMPT, code, ADD_TEST, "add", timeout_s=5.0)
        alive = decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
    log = (drop_box / "log").read_text().split(",")
    assert "judge seen" in log  # the hunt ran and found its judge (positive control)
    assert log == ["judge seen"], log  # and got nothing else
    assert score == 0.0 and alive


# --- class 5: only the socket families a candidate needs ------------------------------------------


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


@needs_isolation
def test_only_internet_socket_families_can_be_opened():
    # Families the network namespace does not cover (AF_VSOCK reaches the host of a VM, AF_NETLINK,
    # AF_PACKET, AF_ALG, AF_BLUETOOTH, ... and any the kernel adds) never reach the kernel.
    result = sandbox.run_python(SOCKET_PROBE)
    assert result.status == "ok", result
    check_socket_report(result.stdout)


# --- class 3: the trusted side is bounded ---------------------------------------------------------

MERSENNE_61 = 2**61 - 1  # every multiple of it hashes to 0: a set of them collides in every slot


def wire_line(value: object) -> bytes:
    """A reply as the judge reads it off the pipe."""
    return harness.dumps({"id": 0, "ok": value})


def timed(fn) -> float:
    start = time.perf_counter()
    with contextlib.suppress(harness.WireError):
        fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("tag", ["set", "frozenset", "dict"])
def test_hash_colliding_replies_decode_in_linear_time(tag):
    n = 20_000
    plain = list(range(1, n + 1))
    colliding = [k * MERSENNE_61 for k in range(1, n + 1)]
    assert len({hash(x) for x in colliding}) == 1

    def reply(items: list[int]) -> bytes:
        return wire_line({"dict": [[x, 0] for x in items]} if tag == "dict" else {tag: items})

    def read(line: bytes):
        return lambda: harness.decode(harness.loads(line)["ok"], max_elements=harness.MAX_REPLY_ELEMENTS)

    plain_line, colliding_line = reply(plain), reply(colliding)
    read(plain_line)()  # warm up
    plain_s = min(timed(read(plain_line)) for _ in range(3))
    colliding_s = timed(read(colliding_line))  # quadratic: seconds; linear: about plain_s
    assert colliding_s < 10 * plain_s + 0.05, (colliding_s, plain_s)
    with pytest.raises(harness.WireError, match="share one hash"):
        read(colliding_line)()
    few = [k * MERSENNE_61 for k in range(1, 5)] + plain  # a few equal hashes are ordinary data
    assert len(harness.decode(harness.loads(reply(few))["ok"])) == n + 4


def test_reply_size_depth_and_element_count_are_bounded():
    limit = harness.MAX_REPLY_ELEMENTS
    ints = list(range(limit - 8))
    assert harness.decode(harness.loads(wire_line(ints), max_elements=limit)["ok"]) == ints
    with pytest.raises(harness.WireError, match="elements"):
        harness.loads(wire_line(list(range(limit + 1))), max_elements=limit)
    with pytest.raises(harness.WireError, match="elements"):
        harness.decode(list(range(limit + 1)), max_elements=limit)
    # Separators inside strings are text, not elements.
    text = ",[{:" * limit
    assert harness.decode(harness.loads(wire_line([text]), max_elements=limit)["ok"]) == [text]
    unterminated = b'{"id":0,"ok":"' + b'\\"' * 100_000  # scanned once, not once per quote
    with pytest.raises(harness.WireError):
        harness.loads(unterminated, max_elements=limit)
    with pytest.raises(harness.WireError, match="nested deeper"):
        harness.decode(harness.loads(wire_line([[[[[1]]]]]))["ok"], max_depth=4)


def test_the_judges_channel_keeps_a_hostile_reply_small():
    # 4 MiB of empty lists: ~200 MiB once parsed; the channel refuses it from its size on the wire.
    import tracemalloc

    requests_r, requests_w = os.pipe()
    responses_r, responses_w = os.pipe()
    hostile = b'{"id":0,"ok":[' + b"[]," * ((4 << 20) // 3 - 10) + b"[]]}\n"
    channel = harness.Channel(
        requests_w, responses_r, call_timeout_s=30.0, total_timeout_s=30.0, startup_timeout_s=30.0,
        max_message_bytes=len(hostile) + 16, clock=harness.CandidateClock(None),
    )  # fmt: skip

    def sandbox_side() -> None:  # answers the call, as a hostile sandbox would
        with contextlib.suppress(OSError):
            os.read(requests_r, 1 << 16)
            os.write(responses_w, hostile)

    writer = threading.Thread(target=sandbox_side)
    writer.start()
    tracemalloc.start()
    try:
        with pytest.raises(harness.CandidateError, match="elements"):
            channel.call((1, 2), {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        for fd in (responses_r, requests_w):  # a writer still blocked gets EPIPE
            os.close(fd)
        writer.join()
        for fd in (requests_r, responses_w):
            os.close(fd)
    assert peak < 4 * len(hostile), peak  # the bytes themselves and a copy or two, never the objects


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


@needs_isolation
def test_hostile_replies_score_zero_without_holding_the_judge():
    from knapsack_trl.tasks.humaneval import reward

    timeout_s = 2.0
    deadline = reward._STARTUP_S + harness.MAX_STRETCH * timeout_s + reward._JUDGE_SLACK_S
    start = time.monotonic()
    scores = add_scores(list(HOSTILE_REPLIES.values()), timeout_s=timeout_s)
    assert dict(zip(HOSTILE_REPLIES, scores)) == dict.fromkeys(HOSTILE_REPLIES, 0.0)
    assert time.monotonic() - start < deadline / 2  # refused on arrival, not held to the deadline


@needs_isolation
def test_the_judge_runs_under_its_own_memory_bound():
    # The check itself (trusted code, in the judge) cannot allocate past the judge's bound.
    test = (
        "def check(candidate):\n"
        "    try:\n"
        f"        hog = bytearray({harness_bound_mb() + 64} << 20)\n"
        "        bounded = False\n"
        "    except MemoryError:\n"
        "        bounded = True\n"
        "    assert bounded and candidate(2, 3) == 5\n"
    )
    assert judge_completion(ADD_PROMPT, "    return a + b\n", test, "add", timeout_s=5.0) == 1.0


def harness_bound_mb() -> int:
    from knapsack_trl.tasks.humaneval import reward

    return reward.JUDGE_MEMORY_MB


def machine_memory_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20)


def test_default_concurrency_fits_the_sum_of_memory_bounds_in_ram(monkeypatch):
    monkeypatch.delenv(sandbox.CONCURRENCY_ENV, raising=False)
    monkeypatch.delenv(sandbox.MEMORY_ENV, raising=False)
    budget = sandbox.sandbox_memory_budget_mb()
    assert 0 < budget <= machine_memory_mb()
    for memory_mb, companion_mb in ((256, 0), (1024, 0), (1024, harness_bound_mb()), (4096, 0)):
        bound = sandbox.run_memory_bound_mb(memory_mb, companion_mb)
        assert bound >= memory_mb + companion_mb
        runs = sandbox.sandbox_concurrency(memory_mb, companion_mb)
        assert runs >= 1 and runs * bound <= max(budget, bound), (memory_mb, runs, bound, budget)


@needs_isolation
def test_runs_wait_for_memory_so_the_sum_of_bounds_fits_the_budget(monkeypatch):
    memory_mb = 64
    bound = sandbox.run_memory_bound_mb(memory_mb)
    monkeypatch.setenv(sandbox.MEMORY_ENV, str(2 * bound + bound // 2))  # room for two runs
    monkeypatch.setenv(sandbox.CONCURRENCY_ENV, "16")
    program = "import time\nprint(time.time())\ntime.sleep(0.5)\nprint(time.time())\n"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: sandbox.run_python(program, memory_mb=memory_mb), range(4)))
    assert [r.status for r in results] == ["ok"] * 4, results
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most <= 2, spans
    with pytest.raises(ValueError, match=sandbox.MEMORY_ENV):
        sandbox.run_python("pass", memory_mb=3 * bound)


# --- class 6: load never makes correct code fail --------------------------------------------------

SPIN_PROMPT = 'def spin(n):\n    """Return the sum of i * i % 7 for i below n."""\n'
SPIN_CODE = "    total = 0\n    for i in range(n):\n        total += i * i % 7\n    return total\n"


def spin(n: int) -> int:
    exec(SPIN_PROMPT + SPIN_CODE, namespace := {})
    return namespace["spin"](n)


@needs_isolation
def test_correct_cpu_bound_solutions_pass_under_load():
    # Calibrated here: a call that takes a third of its limit alone. Under load (a busy core and
    # eight CPU-bound candidates at once on this machine's cores) each gets a fraction of a core, so
    # a wall clock would charge it several times its work; the candidate's clock charges only that.
    n = 200_000
    while True:
        start = time.process_time()
        expected = spin(n)
        solo = time.process_time() - start
        if solo >= 0.1:
            break
        n *= 2
    test = f"def check(candidate):\n    assert candidate({n}) == {expected}\n"
    k = 8
    metrics: dict[str, float] = {}
    reward = make_humaneval_reward(timeout_s=3 * solo, max_workers=k)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        scores = reward(
            [SPIN_CODE] * k, test=[test] * k, entry_point=["spin"] * k, prompt=[SPIN_PROMPT] * k,
            log_metric=lambda name, value: metrics.update({name: value}),
        )  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    assert scores == [1.0] * k, (scores, solo)
    assert metrics["humaneval/wall_clock"] == 0.0  # every judge found its candidate's clock


@needs_isolation
def test_the_candidates_clock_still_charges_sleeping_and_looping_in_full():
    # Correct answers, after 2 s of sleep or of a busy loop: over the 1 s limit, within the 4 s
    # a wait may stretch to. Only waiting for a CPU is not charged.
    sleeper = "    import time\n    time.sleep(2.0)\n    return a + b\n"
    looper = "    import time\n    end = time.monotonic() + 2.0\n    while time.monotonic() < end:\n        pass\n    return a + b\n"
    metrics: dict[str, float] = {}
    reward = make_humaneval_reward(timeout_s=1.0)
    scores = reward(
        [sleeper, looper, "    return a + b\n"], test=[ADD_TEST] * 3, entry_point=["add"] * 3, prompt=[ADD_PROMPT] * 3,
        log_metric=lambda name, value: metrics.update({name: value}),
    )  # fmt: skip
    assert scores == [0.0, 0.0, 1.0] and metrics["humaneval/wall_clock"] == 0.0

"""The sandbox for every caller: root, root without CAP_SYS_ADMIN, an unprivileged uid other than
65534, and machines where namespaces are refused.

Each case runs a driver script in a fresh process (as another uid through ``setpriv``, or under a
seccomp filter that makes the kernel refuse ``unshare``, ``setns`` and ``clone`` with namespace
flags, as Docker's default profile does). The driver imports a copy of ``knapsack_trl.tasks``
(standard library only) that every user can read, and prints one JSON line back.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_redteam_sandbox import ADD_TEST as NONZERO_ADD_TEST
from test_redteam_sandbox import (
    ENDINGS,
    HOSTILE_REPLIES,
    INIT_SIGNALLER,
    SOCKET_PROBE,
    SPIN_CODE,
    SPIN_PROMPT,
    check_socket_report,
    new_drop_box,
    world_python,
)

from knapsack_trl.tasks.sandbox import runner as sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

TASKS_DIR = Path(sandbox.__file__).parents[1]
ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def free_uid(start: int) -> int:
    """A uid with no account, at or after ``start`` (never 65534, the overflow uid)."""
    for uid in range(start, start + 1000):
        if uid == 65534:
            continue
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid")


needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or world_python() is None,
    reason="needs root, setpriv and a world-readable python3 to act as other users",
)

DRIVER = """
import json, logging, os, sys
sys.path.insert(0, {copy!r})
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
if {no_namespaces!r}:
    from knapsack_trl.tasks.sandbox import launcher as _launcher
    libc = _launcher._libc()
    assert _launcher._prctl(libc, _launcher.PR_SET_NO_NEW_PRIVS, 1)
    assert _launcher.install_seccomp(libc, ("unshare", "setns"))  # the kernel now refuses namespaces
from knapsack_trl.tasks.sandbox import runner as sandbox
from knapsack_trl.tasks.humaneval.reward import judge_completion, make_humaneval_reward
out = {{}}
try:
{body}
except sandbox.SandboxUnavailableError as err:  # this machine (or this process) has no namespaces
    out = {{"unavailable": str(err)}}
print(json.dumps(out))
"""


@pytest.fixture
def driver_dir():
    """A world-readable copy of the tasks package (the rewards and the sandbox), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="knapsack-sbx-users-"))  # pytest's tmp_path is private to root
    try:
        package = root / "knapsack_trl"
        shutil.copytree(TASKS_DIR, package / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
        (package / "__init__.py").write_text("")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_driver(
    copy: Path,
    body: str,
    *,
    uid: int | None = None,
    python: str | None = None,
    no_namespaces: bool = False,
    drop_sys_admin: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[dict, str]:
    """Run ``body`` in a driver process; its ``out`` dict and its stderr."""
    script = copy / f"driver-{uuid.uuid4().hex}.py"
    body = textwrap.indent(textwrap.dedent(body), "    ")
    script.write_text(DRIVER.format(copy=str(copy), no_namespaces=no_namespaces, body=body))
    script.chmod(0o644)
    cmd = [python or world_python(), "-I", str(script)]
    if uid is not None:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    if drop_sys_admin:
        cmd = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", *cmd]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def isolated_driver(copy: Path, body: str, **kwargs) -> tuple[dict, str]:
    """:func:`run_driver` for a body that needs full isolation; skips where the kernel gives none
    (e.g. this suite itself runs under a seccomp filter that refuses namespaces)."""
    out, stderr = run_driver(copy, body, **kwargs)
    if "unavailable" in out:
        pytest.skip(f"no isolation for this caller here: {out['unavailable'][:200]}")
    return out, stderr


SCORE_BODY = """
caps = sandbox.require_isolation("test")
out["caps"] = sorted(caps)
r = sandbox.run_python("import os, socket\\nprint(os.getuid(), os.geteuid())\\nsocket.create_connection(('127.0.0.1', 22), 1)")
out["status"], out["ids"], out["unreachable"] = r.status, r.stdout.split(), "unreachable" in r.stderr
out["timeout"] = sandbox.run_python("while True: pass", timeout_s=1.0).status
out["scores"] = [
    judge_completion({prompt!r}, code, {test!r}, "add", timeout_s=2.0)
    for code in ("    return a + b\\n", "    return a - b\\n", "    import time\\n    time.sleep(60)\\n")
]
"""


@needs_root_tools
def test_unprivileged_uid_other_than_65534_is_isolated_and_scores_correct_code(driver_dir):
    uid = free_uid(4242)
    out, stderr = isolated_driver(driver_dir, SCORE_BODY.format(prompt=ADD_PROMPT, test=ADD_TEST), uid=uid)
    if "userns" not in out["caps"]:
        pytest.skip(f"unprivileged user namespaces are disabled on this machine: {stderr[-300:]}")
    assert {*sandbox.REQUIRED_ISOLATION, "userns"} <= set(out["caps"])
    # The uid is read before unshare(CLONE_NEWUSER): the program runs as the caller, mapped.
    assert (out["status"], out["ids"], out["unreachable"]) == ("failed", [str(uid), str(uid)], True)
    assert out["timeout"] == "timeout"
    assert out["scores"] == [1.0, 0.0, 0.0]  # correct code scores 1, not 0 (errno 75) nor None


@needs_root_tools
def test_root_without_cap_sys_admin_isolates_through_a_user_namespace(driver_dir):
    out, _ = isolated_driver(
        driver_dir, SCORE_BODY.format(prompt=ADD_PROMPT, test=ADD_TEST), drop_sys_admin=True
    )
    assert {*sandbox.REQUIRED_ISOLATION, "userns"} <= set(out["caps"])
    assert any(c.startswith("uid:") for c in out["caps"])  # a pool uid, mapped into the namespace
    assert out["status"] == "failed" and out["unreachable"]
    assert out["ids"][0] == out["ids"][1] != "0"
    assert out["scores"] == [1.0, 0.0, 0.0]


REFUSAL_BODY = """
mark = {mark!r}
program = f"open({{mark!r}}, 'w').write('x')\\n"
attempts = {{
    "require": lambda: sandbox.require_isolation("humaneval_pass"),
    "factory": lambda: make_humaneval_reward(),
    "run_python": lambda: sandbox.run_python(program),
    "start_python": lambda: sandbox.start_python(program).wait(),
    "judge_completion": lambda: judge_completion("", "def add(a, b):\\n    return a + b\\n" + program,
                                                 "def check(candidate):\\n    assert candidate(1, 2) == 3\\n", "add"),
}}
for name, attempt in attempts.items():
    try:
        attempt()
        out[name] = "ran"
    except sandbox.SandboxUnavailableError as err:
        out[name] = str(err)
out["ran"] = os.path.exists(mark)
"""


@pytest.fixture
def drop_box() -> Iterator[Path]:
    yield from new_drop_box()


@needs_root_tools
@pytest.mark.parametrize("as_root", [True, False], ids=["root", "unprivileged"])
def test_without_namespaces_untrusted_code_is_refused_at_start_up(driver_dir, drop_box, as_root):
    uid = None if as_root else free_uid(4300)
    out, _ = run_driver(
        driver_dir, REFUSAL_BODY.format(mark=str(drop_box / "ran")), uid=uid, no_namespaces=True
    )
    assert out.pop("ran") is False  # every exported runner refused before anything ran
    for name, message in out.items():
        assert "missing:" in message and "netns" in message and "mountns" in message, name
        assert "To enable full isolation" in message and sandbox.UNSAFE_ENV in message, name


@needs_root_tools
def test_the_unsafe_opt_in_is_refused_for_an_unprivileged_caller(driver_dir, drop_box):
    # Without namespaces its program would run as the caller's uid, beside its judge: it could write
    # its own verdict through /proc, read the judge's configuration, or kill the trainer.
    out, _ = run_driver(
        driver_dir,
        REFUSAL_BODY.format(mark=str(drop_box / "ran")),
        uid=free_uid(4400),
        no_namespaces=True,
        env={sandbox.UNSAFE_ENV: "1"},
    )
    assert out.pop("ran") is False
    for name, message in out.items():
        assert "refused for a caller other than root" in message and "missing:" in message, name


UNSAFE_BODY = """
import stat, tempfile
secret_dir = {secret_dir!r}
make_humaneval_reward()  # accepted: the opt-in is set
program = (
    "import os\\n"
    "print(os.getuid(), os.geteuid())\\n"
    f"try:\\n    print(open('/proc/{{os.getpid()}}/environ', 'rb').read())\\nexcept OSError as e:\\n    print('environ refused', e.errno)\\n"
    f"try:\\n    open({{secret_dir!r}} + '/escape.txt', 'w').write('x')\\nexcept OSError as e:\\n    print('write refused', e.errno)\\n"
)
r = sandbox.run_python(program)
out["status"], out["stdout"], out["isolation"] = r.status, r.stdout, list(r.isolation)
out["score"] = judge_completion({prompt!r}, "    return a + b\\n", {test!r}, "add", timeout_s=2.0)
"""


@needs_root_tools
def test_unsafe_opt_in_as_root_runs_with_a_loud_warning_and_a_pool_uid(driver_dir):
    secret = f"s3cret-{uuid.uuid4().hex}"
    secret_dir = Path(tempfile.mkdtemp(prefix="knapsack-sbx-secret-"))
    secret_dir.chmod(0o755)  # readable by all, writable by root only
    body = UNSAFE_BODY.format(secret_dir=str(secret_dir), prompt=ADD_PROMPT, test=ADD_TEST)
    try:
        out, stderr = run_driver(
            driver_dir,
            body,
            no_namespaces=True,
            env={sandbox.UNSAFE_ENV: "1", "KNAPSACK_TEST_SECRET": secret},
        )
        escaped = (secret_dir / "escape.txt").exists()
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)
    assert "UNSAFE SANDBOX" in stderr and "PARTIAL isolation" in stderr
    assert out["status"] == "ok", out
    ids = out["stdout"].split("\n")[0].split()
    assert ids[0] == ids[1] != "0"  # never uid 0, even without namespaces
    assert any(c == f"uid:{ids[0]}" for c in out["isolation"])  # a pool uid: not the caller's
    assert secret not in out["stdout"] and "environ refused" in out["stdout"]
    assert "write refused" in out["stdout"] and not escaped
    assert out["score"] == 1.0


@pytest.mark.skipif(os.geteuid() != 0 or sandbox.world_reachable(sandbox._interpreter_info()["python"]),
                    reason="needs root and an interpreter other users cannot reach (e.g. pyenv under /root)")  # fmt: skip
def test_without_namespaces_an_unreachable_interpreter_is_refused_not_run_as_root(monkeypatch):
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)  # the documented hook for the degraded path
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    for attempt in (
        lambda: sandbox.run_python("import os\nprint(os.getuid())\n"),
        lambda: sandbox.require_isolation("humaneval_pass"),
    ):
        with pytest.raises(sandbox.SandboxUnavailableError, match="cannot run a trivial program") as err:
            attempt()
        assert "readable by every user" in str(err.value)


def _live(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker in cmdline and state != "Z":
                found.append(int(entry))
    return found


@pytest.mark.skipif(
    world_python() is None or os.geteuid() != 0,
    reason="the degraded path runs for root only (the unsafe opt-in), with an interpreter every user can run",
)
def test_without_namespaces_timeouts_and_escaped_processes_are_still_handled(monkeypatch):
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)  # the documented hook for the degraded path
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    monkeypatch.setattr(sandbox, "_INTERPRETER", {**sandbox._interpreter_info(), "python": world_python()})
    assert sandbox.run_python("while True:\n    pass\n", timeout_s=1.0).status == "timeout"
    marker = f"{uuid.uuid4().int % 10**6}.{os.getpid()}"  # a unique sleep duration to find it by
    source = textwrap.dedent(
        f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "{marker}"])
            os._exit(0)
        time.sleep(0.2)
        print(os.getuid())
        """
    )
    result = sandbox.run_python(source)
    assert result.status == "ok", result
    assert "netns" not in result.isolation and result.stdout.strip() != "0"
    deadline = time.monotonic() + 3.0
    while _live(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _live(marker), "an escaped process outlived the run"


REDTEAM_BODY = """
import subprocess, time
out["caps"] = sorted(sandbox.require_isolation("test"))


def scores(codes, prompt, test, entry, **settings):
    reward = make_humaneval_reward(**settings)
    metrics = {{}}
    n = len(codes)
    got = reward(codes, test=[test] * n, entry_point=[entry] * n, prompt=[prompt] * n,
                 log_metric=lambda name, value: metrics.update({{name: value}}))
    return got, metrics


endings, hostile = {endings!r}, {hostile!r}
out["endings"] = dict(zip(endings, scores(list(endings.values()), {prompt!r}, {test!r}, "add", timeout_s=2.0)[0]))
r = sandbox.run_python({init_signaller!r})
out["init"] = [r.status, r.stdout.split()]
start = time.monotonic()
out["hostile"] = dict(zip(hostile, scores(list(hostile.values()), {prompt!r}, {test!r}, "add", timeout_s=2.0)[0]))
out["hostile_s"] = time.monotonic() - start
r = sandbox.run_python({socket_probe!r})
out["sockets"] = [r.status, r.stdout]
spin_ns = {{}}
exec({spin_prompt!r} + {spin_code!r}, spin_ns)
n = 200_000
while True:
    begin = time.process_time()
    expected = spin_ns["spin"](n)
    solo = time.process_time() - begin
    if solo >= 0.1:
        break
    n *= 2
hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
try:
    out["load"] = scores([{spin_code!r}] * 8, {spin_prompt!r}, f"def check(candidate):\\n    assert candidate({{n}}) == {{expected}}\\n",
                         "spin", timeout_s=3 * solo, max_workers=8)
finally:
    hog.kill()
    hog.wait()
"""


@needs_root_tools
@pytest.mark.parametrize("caller", ["unprivileged", "root without CAP_SYS_ADMIN"])
def test_the_red_team_classes_hold_for_every_caller(driver_dir, caller):
    body = REDTEAM_BODY.format(
        endings=ENDINGS, hostile=HOSTILE_REPLIES, prompt=ADD_PROMPT, test=NONZERO_ADD_TEST,
        init_signaller=INIT_SIGNALLER, socket_probe=SOCKET_PROBE, spin_prompt=SPIN_PROMPT, spin_code=SPIN_CODE,
    )  # fmt: skip
    if caller == "unprivileged":
        out, stderr = isolated_driver(driver_dir, body, uid=free_uid(4500))
        if "userns" not in out["caps"]:
            pytest.skip(f"unprivileged user namespaces are disabled on this machine: {stderr[-300:]}")
    else:
        out, stderr = isolated_driver(driver_dir, body, drop_sys_admin=True)
    assert {*sandbox.REQUIRED_ISOLATION, "userns"} <= set(out["caps"])
    # class 1: ending its own run (signals to init, to its group, exits) scores 0.0, never None
    assert out["endings"] == dict.fromkeys(ENDINGS, 0.0)
    assert out["init"] == ["ok", ["survived", "1"]]
    # class 3: replies built to be expensive to decode are refused on arrival
    assert out["hostile"] == dict.fromkeys(HOSTILE_REPLIES, 0.0)
    assert out["hostile_s"] < 30.0  # the judge's deadline is 48 s: never held to it
    # class 5: only AF_INET and AF_INET6
    assert out["sockets"][0] == "ok", out["sockets"]
    check_socket_report(out["sockets"][1])
    # class 6: correct CPU-bound code under load passes, each judge on its candidate's clock
    load_scores, metrics = out["load"]
    assert load_scores == [1.0] * 8 and metrics["humaneval/wall_clock"] == 0.0, out["load"]

"""The sandbox against hostile programs: each one is contained and its side effect verified absent.

The containment tests run for real where the machine allows it (root, or user namespaces) and are
skipped, with the missing measure named, where it does not.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from knapsack_trl.rewards import sandbox
from knapsack_trl.rewards.sandbox import SandboxResult, run_python, sandbox_capabilities

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")


def needs(*measures: str):
    """Skip unless this machine gives the sandbox every named isolation measure."""
    caps = sandbox_capabilities() if sys.platform == "linux" else frozenset()
    missing = [m for m in measures if not any(c == m or c.startswith(m + ":") for c in caps)]
    return pytest.mark.skipif(bool(missing), reason=f"sandbox lacks {missing} on this machine")


def run(source: str, **kwargs) -> SandboxResult:
    """Dedent and run."""
    return run_python(textwrap.dedent(source), **kwargs)


def sandbox_uid(result: SandboxResult) -> int | None:
    """The uid the program ran as, if the sandbox switched to one."""
    for item in result.isolation:
        if item.startswith("uid:"):
            return int(item.split(":")[1])
    return None


def live_processes(uid: int | None = None, marker: str | None = None) -> list[int]:
    """Pids of live (non-zombie) processes, by real uid and/or by a marker in the command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if uid is not None and int(fields["Uid"].split()[0]) != uid:
            continue
        if marker is not None and marker not in cmdline:
            continue
        found.append(int(entry))
    return found


def wait_gone(predicate, timeout: float = 2.0) -> bool:
    """Poll until ``predicate()`` is falsy (processes may take a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- ordinary behaviour -----------------------------------------------------------------------


def test_runs_a_program_and_returns_its_output():
    result = run("import sys\nprint('hello')\nprint('err', file=sys.stderr)\n")
    assert result.status == "ok" and result.ok
    assert result.returncode == 0
    assert result.stdout == "hello\n"
    assert result.stderr == "err\n"
    assert "rlimits" in result.isolation
    assert 0 < result.seconds < 5


def test_nonzero_exit_and_exceptions_are_failures():
    assert run("raise SystemExit(3)").status == "failed"
    result = run("raise ValueError('boom')")
    assert result.status == "failed" and result.returncode == 1
    assert "ValueError: boom" in result.stderr


def test_syntax_error_is_a_failure():
    result = run("def f(:\n    pass\n")
    assert result.status == "failed"
    assert "SyntaxError" in result.stderr


def test_exit_code_zero_only_means_the_process_exited():
    # sys.exit(0) before any test ran is "ok" here; the reward harness must demand its own sentinel
    # (tests/test_rewards_code.py checks that it scores 0).
    result = run("import sys\nsys.exit(0)\nprint('never')\n")
    assert result.status == "ok" and result.stdout == ""


def test_stdin_is_fed_to_the_program():
    assert run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"


def test_isolated_interpreter_without_site_packages():
    result = run("import sys\nprint(sys.flags.isolated, sys.flags.no_site)\nimport numpy\n")
    assert result.stdout.startswith("1 1")
    assert "ModuleNotFoundError" in result.stderr


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError):
        run_python("pass", memory_mb=-1)


# --- hostile programs ---------------------------------------------------------------------------


def test_infinite_loop_times_out():
    result = run("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and result.returncode is None
    assert result.seconds < 4.0


def test_sleeping_forever_times_out():
    result = run("import time\ntime.sleep(1000)\n", timeout_s=1.0)
    assert result.status == "timeout"
    assert result.seconds < 4.0


def test_huge_allocation_fails_with_memory_error():
    result = run("x = bytearray(10**11)\nprint('allocated')\n", memory_mb=512)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_growing_allocation_stops_at_the_memory_limit():
    source = """
    chunks = []
    while True:
        chunks.append(bytearray(8 * 1024 * 1024))
    """
    result = run(source, memory_mb=256, timeout_s=10.0)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


@needs("uid", "pidns")
def test_fork_loop_is_capped_by_the_process_limit_and_reaped():
    marker = uuid.uuid4().hex
    source = f"""
    import os, time
    forked = 0
    try:
        while forked < 10000:
            if os.fork() == 0:
                time.sleep(60)  # {marker}
                os._exit(0)
            forked += 1
    except OSError as err:
        print("fork failed after", forked, err.errno)
    """
    result = run(source, max_processes=8, timeout_s=5.0)
    assert result.status == "ok", result
    words = result.stdout.split()
    assert words[:3] == ["fork", "failed", "after"]
    assert int(words[3]) < 8  # the program itself counts as one process
    uid = sandbox_uid(result)
    assert uid is not None
    assert wait_gone(lambda: live_processes(uid=uid)), "sandbox processes outlived the run"


@needs("pidns")
def test_exponential_fork_bomb_is_contained_and_reaped():
    source = """
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    caps = sandbox_capabilities()
    if not any(c.startswith("uid:") for c in caps) and "userns" not in caps:
        pytest.skip("RLIMIT_NPROC is not enforced here (no separate user): the bomb would not be bounded")
    before = len(live_processes())
    result = run(source, max_processes=16, timeout_s=1.0)
    assert result.status in ("timeout", "failed")
    uid = sandbox_uid(result)
    if uid is not None:
        assert wait_gone(lambda: live_processes(uid=uid))
    assert len(live_processes()) < before + 5  # nothing of the bomb is left on the host


@needs("mountns", "uid")
def test_writes_outside_the_working_directory_do_not_land(tmp_path):
    tmp_path.chmod(0o755)  # owned by the test (root), readable by everyone, writable by root only
    target = tmp_path / "escape.txt"
    host_tmp = Path("/tmp") / f"knapsack-sbx-escape-{uuid.uuid4().hex}"
    source = f"""
    import os
    results = []
    for path in [{str(target)!r}, {str(host_tmp)!r}, "../escape.txt"]:
        try:
            with open(path, "w") as fh:
                fh.write("pwned")
            results.append("wrote " + path)
        except OSError as err:
            results.append("refused " + path + " " + type(err).__name__)
    open("inside.txt", "w").write("fine")  # the working directory itself is writable
    print(os.getcwd(), results)
    """
    result = run(source)
    assert result.status == "ok", result
    assert not target.exists()
    assert not host_tmp.exists()
    assert "refused " + str(target) in result.stdout
    assert "/tmp/sandbox" in result.stdout


@needs("mountns", "uid", "pidns")
def test_os_system_and_subprocess_leave_no_trace(tmp_path):
    tmp_path.chmod(0o755)
    marker = f"{time.time_ns() % 10**6}.{os.getpid()}"  # a unique sleep duration to find it by
    host_tmp = Path("/tmp") / f"knapsack-sbx-sys-{uuid.uuid4().hex}"
    source = f"""
    import os, subprocess
    os.system("touch {host_tmp}; echo x > {tmp_path}/system.txt; setsid sleep {marker} &")
    subprocess.run(["sh", "-c", "echo y > {tmp_path}/subprocess.txt; touch {host_tmp}.2"])
    subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
    print("spawned")
    """
    result = run(source)
    assert result.status == "ok", result
    assert result.stdout.strip() == "spawned"
    assert not (tmp_path / "system.txt").exists()
    assert not (tmp_path / "subprocess.txt").exists()
    assert not host_tmp.exists() and not Path(f"{host_tmp}.2").exists()
    assert wait_gone(lambda: live_processes(marker=marker)), "a background process outlived the run"


def test_environment_secrets_do_not_leak(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("KNAPSACK_TEST_SECRET", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    result = run("import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ', 'rb').read())\n")
    assert result.status == "ok", result
    assert secret not in result.stdout + result.stderr
    assert "KNAPSACK_TEST_SECRET" not in result.stdout and "HF_TOKEN" not in result.stdout
    assert set(eval(result.stdout.splitlines()[0])) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "LD_LIBRARY_PATH",
    }


@needs("pidns")
def test_other_processes_environment_is_unreadable():
    secret = f"s3cret-{uuid.uuid4().hex}"
    # /proc/<pid>/environ shows a process's environment as it was at exec: a helper started with
    # the secret holds it there, as a trainer started with HF_TOKEN would.
    holder = subprocess.Popen(["sleep", "30"], env={"KNAPSACK_TEST_SECRET": secret})
    try:
        source = f"""
        import os
        for pid in ("1", str(os.getppid()), "{os.getpid()}", "{holder.pid}"):
            try:
                print(pid, open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as err:
                print(pid, "refused", type(err).__name__)
        """
        result = run(source)
    finally:
        holder.kill()
        holder.wait()
    assert result.status == "ok", result
    assert secret not in result.stdout + result.stderr
    assert f"{holder.pid} refused" in result.stdout


@needs("netns")
def test_socket_connection_to_the_host_never_arrives():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    source = f"""
    import socket
    for family, addr in [(socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET, ("10.255.255.1", 80))]:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(addr)
            print("connected", addr)
        except OSError as err:
            print("refused", addr, err.errno)
    """
    try:
        result = run(source)
        assert "connected" not in result.stdout
        assert result.stdout.count("refused") == 2
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_huge_output_is_truncated_head_and_tail():
    source = "import sys\nsys.stdout.write('HEAD' + 'x' * 2_000_000 + 'TAIL')\n"
    result = run(source, max_output_bytes=4096)
    assert result.status == "ok"
    assert result.stdout.startswith("HEAD") and result.stdout.endswith("TAIL")
    assert "bytes truncated" in result.stdout
    assert len(result.stdout) < 4096 + 100


def test_file_size_limit_stops_large_writes():
    source = "open('big.bin', 'wb').write(b'0' * (8 * 1024 * 1024))\n"
    result = run(source, max_file_mb=2)
    assert result.status == "failed"
    assert "File too large" in result.stderr


def test_parallel_runs_are_independent():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: run(f"print({i} * {i})"), range(8)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]
    uids = [sandbox_uid(r) for r in results]
    if all(u is not None for u in uids):
        assert len(set(uids)) >= 2  # concurrent runs held different uids


# --- weaker machines ------------------------------------------------------------------------------


def test_without_namespaces_timeouts_and_escaped_processes_are_still_handled(monkeypatch):
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    assert run("while True:\n    pass\n", timeout_s=1.0).status == "timeout"
    marker = f"{time.time_ns() % 10**6}.{os.getpid() + 1}"
    source = f"""
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", "{marker}"])
        os._exit(0)
    time.sleep(0.2)
    print("parent done")
    """
    result = run(source)
    assert result.status == "ok", result
    assert "netns" not in result.isolation
    assert wait_gone(lambda: live_processes(marker=marker)), "an escaped process outlived the run"


def _unprivileged_python() -> str | None:
    """A world-readable interpreter to run the sandbox as an ordinary user, if this machine has one."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and sandbox.world_reachable(os.path.realpath(candidate)):
            return candidate
    return None


@pytest.mark.skipif(_unprivileged_python() is None, reason="needs root, setpriv and a world-readable python3")
def test_unprivileged_caller_gets_user_namespace_isolation():
    tmp_path = Path(tempfile.mkdtemp(prefix="knapsack-sbx-test-"))  # pytest's own tmp is private
    try:
        _run_as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run_as_nobody(tmp_path: Path) -> None:
    """Run a copy of the sandbox as uid 65534 and check what it could set up."""
    tmp_path.chmod(0o755)
    shutil.copy(sandbox.__file__, tmp_path / "sbx.py")
    (tmp_path / "sbx.py").chmod(0o644)
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import sbx
        r = sbx.run_python("import os, socket\\nprint(os.getuid())\\nsocket.create_connection(('127.0.0.1', 22), 1)")
        print(r.status, r.stdout.strip(), "unreachable" in r.stderr, " ".join(r.isolation))
        r = sbx.run_python("while True: pass", timeout_s=1.0)
        print(r.status)
        """
    )
    (tmp_path / "driver.py").write_text(script)
    (tmp_path / "driver.py").chmod(0o644)
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", _unprivileged_python(), "-I",
         str(tmp_path / "driver.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    status, uid, unreachable, *isolation = first.split()
    if "userns" not in isolation:
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    assert (status, uid, unreachable) == ("failed", "65534", "True")
    assert {"netns", "pidns", "mountns"} <= set(isolation)
    assert second == "timeout"

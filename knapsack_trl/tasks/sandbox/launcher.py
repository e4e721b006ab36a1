"""The sandbox launcher: runs in a fresh single-threaded ``python -I -S`` interpreter, never in the caller.

Standard library only and no package imports: :mod:`knapsack_trl.tasks.sandbox.runner` compiles this file
once and starts it for every sandboxed program. Process tree of one run::

    launcher (caller's uid, host namespaces: keeps the clock, writes uid maps, kills everything at the end)
      └─ setup  (joins the run's cgroup, creates the namespaces, builds the root file system)
          └─ init  (pid 1 of the new pid namespace: pivots into the new root, reaps orphans,
              │        ignores every signal the program can send it)
              └─ program  (limits, unprivileged uid, seccomp, the required measures checked, then
                           exec python)

The caller's half (:mod:`~knapsack_trl.tasks.sandbox.runner`) prepares everything that needs the caller's
knowledge (the uid, the cgroup, which host paths to show); this half only executes it and reports,
as marshalled dicts on ``report_fd``, which measures took effect, and ``started`` just before the
program's exec (after it, however the run ends is the program's doing, never a setup failure).
The runner also imports this module for :data:`REQUIRED_ISOLATION` and :func:`missing_isolation`.
"""

from __future__ import annotations

import fcntl
import marshal
import os
import signal
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
NAMESPACE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
) | CLONE_NEWTIME

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
_ST_TO_MS = ((8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME))

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# What running untrusted code needs; a separate identity is "uid:<n>" (root callers) or "userns".
REQUIRED_ISOLATION = ("netns", "ipcns", "mountns", "pidns", "rootfs", "seccomp", "no_new_privs", "rlimits")
SETUP_FAILED = 125  # exit code of the launcher's processes when the sandbox could not be set up
WORKDIR = "/tmp/sandbox"
DEVICES = ("null", "zero", "full", "random", "urandom")

# Syscall numbers (x86_64 from asm/unistd_64.h, aarch64 from asm-generic/unistd.h) and the
# AUDIT_ARCH value a seccomp filter must check before trusting them.
SYSCALLS = {
    "x86_64": (
        0xC000003E,
        {
            "keyctl": 250, "add_key": 248, "request_key": 249, "memfd_create": 319, "memfd_secret": 447,
            "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66,
            "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "unshare": 272,
            "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "ptrace": 101,
            "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "bpf": 321,
            "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
            "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "fspick": 433, "mount_setattr": 442, "name_to_handle_at": 303,
            "open_by_handle_at": 304, "fanotify_init": 300, "kexec_load": 246, "kexec_file_load": 320,
            "init_module": 175, "finit_module": 313, "delete_module": 176, "swapon": 167, "swapoff": 168,
            "reboot": 169, "acct": 163, "syslog": 103, "sethostname": 170, "clone3": 435, "clone": 56,
            "socket": 41, "socketpair": 53,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "keyctl": 219, "add_key": 217, "request_key": 218, "memfd_create": 279, "memfd_secret": 447,
            "shmget": 194, "shmat": 196, "shmctl": 195, "semget": 190, "semop": 193, "semctl": 191,
            "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "unshare": 97,
            "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "ptrace": 117,
            "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "bpf": 280,
            "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
            "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "fspick": 433, "mount_setattr": 442, "name_to_handle_at": 264,
            "open_by_handle_at": 265, "fanotify_init": 262, "kexec_load": 104, "kexec_file_load": 294,
            "init_module": 105, "finit_module": 273, "delete_module": 106, "swapon": 224, "swapoff": 225,
            "reboot": 142, "acct": 89, "syslog": 116, "sethostname": 161, "clone3": 435, "clone": 220,
            "socket": 198, "socketpair": 199,
        },
    ),
}  # fmt: skip

# What the program may not call (EPERM): kernel objects that outlive the run or escape its memory
# bound (keyrings, SysV IPC, memfd), namespace and mount changes, tracing, and the interfaces with
# a record of kernel bugs that no HumanEval solution needs. clone3 answers ENOSYS so that glibc falls
# back to clone, whose flags the filter can inspect (no new namespaces).
DENIED_SYSCALLS = (
    "keyctl", "add_key", "request_key", "memfd_create", "memfd_secret", "shmget", "shmat", "shmctl",
    "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd", "msgrcv", "msgctl", "unshare", "setns",
    "mount", "umount2", "pivot_root", "chroot", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "name_to_handle_at", "open_by_handle_at", "fanotify_init", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot", "acct", "syslog",
    "sethostname",
)  # fmt: skip

# Socket families the program may open, an allow-list: AF_INET and AF_INET6, which the empty network
# namespace confines (a loopback that is down). Every other family fails with EPERM: AF_UNIX (a
# path-named socket connects across network namespaces, even through a read-only bind mount),
# AF_VSOCK (the host of a virtual machine), AF_NETLINK, AF_PACKET, AF_ALG and the rest, known or
# added by a later kernel. ``socketpair`` makes only a connected AF_UNIX pair.
SOCKET_FAMILIES = {"socket": (2, 10), "socketpair": (1,)}


def missing_isolation(capabilities) -> list[str]:
    """The measures in :data:`REQUIRED_ISOLATION` (and a separate identity) that ``capabilities`` lack."""
    missing = [m for m in REQUIRED_ISOLATION if m not in capabilities]
    if not any(c.startswith("uid:") for c in capabilities) and "userns" not in capabilities:
        missing.append("a separate user (uid pool for root, or a user namespace)")
    return missing


def launch(config_path: str, report_fd: int) -> int:
    """The launcher: start the setup process, keep the wall clock, stop everything at the end."""
    cfg = _load_config(config_path)
    libc = _libc()
    _prctl(libc, PR_SET_CHILD_SUBREAPER, 1)  # orphans of the program become ours, not init's
    to_setup_r, to_setup_w = os.pipe()
    from_setup_r, from_setup_w = os.pipe()
    started = time.monotonic()
    setup_pid = os.fork()
    if setup_pid == 0:
        os.close(to_setup_w)
        os.close(from_setup_r)
        os.close(cfg["control_fd"])
        _guard(report_fd, lambda: _setup(cfg, libc, report_fd, to_setup_r, from_setup_w))
    os.close(to_setup_r)
    os.close(from_setup_w)
    for fd in cfg["pass_fds"].values():
        os.close(fd)  # only the program keeps the caller's pipes
    init_pid = _serve_setup(cfg, setup_pid, from_setup_r, to_setup_w, report_fd)
    deadline = started + cfg["timeout_s"]
    outcome = _wait_setup(setup_pid, cfg["control_fd"], deadline)
    if init_pid:
        _kill(init_pid)  # pid 1 of the namespace: the kernel kills every process in it
    _kill(setup_pid)
    _waitpid(setup_pid)
    _kill_descendants()
    _report(report_fd, {outcome: True})
    return 0


def _wait_setup(pid: int, control_fd: int, deadline: float) -> str:
    """Wait for the setup process to exit (without reaping it), the deadline, or the caller's stop."""
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernels before 5.3: poll
        pidfd = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed_out"
            fds = [control_fd] if pidfd is None else [pidfd, control_fd]
            ready = select.select(fds, [], [], remaining if pidfd is not None else min(remaining, 0.005))[0]
            if control_fd in ready:  # the caller asked to stop, or died
                return "stopped"
            if pidfd in ready or (
                pidfd is None and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            ):
                return "exited"
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _serve_setup(cfg: dict, setup_pid: int, from_setup: int, to_setup: int, report_fd: int) -> int:
    """Answer the setup process's requests: write its uid maps; return the pid of its init process."""
    reader = os.fdopen(from_setup, "rb", buffering=0)
    while True:
        line = _read_line(reader)
        if not line:
            return 0
        kind, _, value = line.partition(b" ")
        if kind == b"maps":
            ok = _write_maps(setup_pid, cfg["outer_uid"], cfg["outer_gid"], cfg["uid"])
            os.write(to_setup, b"1" if ok else b"0")
        elif kind == b"init":
            os.close(to_setup)
            reader.close()
            return int(value)


def _read_line(reader) -> bytes:
    """One newline-terminated message from the setup process (empty at end of file)."""
    chunks = []
    while True:
        byte = reader.read(1)
        if not byte or byte == b"\n":
            return b"".join(chunks)
        chunks.append(byte)


def _write_maps(pid: int, uid: int, gid: int, target: int | None) -> bool:
    """Map the uids of the setup process's new user namespace, from outside it.

    Root maps itself (to build the sandbox) and the run's dedicated uid (to run the program as);
    any other caller can map only itself, and must deny ``setgroups`` first.
    """
    try:
        if uid == 0 and target is not None:
            _write(f"/proc/{pid}/uid_map", f"0 0 1\n{target} {target} 1\n")
            _write(f"/proc/{pid}/gid_map", f"0 0 1\n{target} {target} 1\n")
        else:
            _write(f"/proc/{pid}/setgroups", "deny")
            _write(f"/proc/{pid}/uid_map", f"{uid} {uid} 1\n")
            _write(f"/proc/{pid}/gid_map", f"{gid} {gid} 1\n")
    except OSError:
        return False
    return True


def _setup(cfg: dict, libc, report_fd: int, from_launcher: int, to_launcher: int) -> None:
    """In the setup process: cgroup, namespaces, the new root, then fork the init process."""
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    isolation: list[str] = []
    notes: list[str] = []
    for procs in cfg["cgroup_procs"]:  # before anything else, so every descendant is counted
        _write(procs, str(os.getpid()))
    if cfg["cgroup_procs"]:
        isolation.append(cfg["cgroup_label"])
        _set_oom_score_adj("-1000")  # the cgroup's OOM killer must pick the program, not us
    mode = _enter_namespaces(cfg, libc, from_launcher, to_launcher, isolation, notes)
    fs_view = False
    if "mountns" in isolation:
        try:
            _build_root(cfg, libc)
            fs_view = True
        except OSError as err:
            notes.append(f"no private root file system: {err}")
    _report(report_fd, {"isolation": isolation, "notes": notes})
    init_pid = os.fork()
    if init_pid == 0:
        os.close(to_launcher)
        _guard(report_fd, lambda: _init(cfg, libc, report_fd, set(isolation), fs_view, mode))
    os.write(to_launcher, f"init {init_pid}\n".encode())
    os.close(to_launcher)
    for fd in cfg["pass_fds"].values():
        os.close(fd)
    status = _waitpid(init_pid)
    os._exit(0 if os.waitstatus_to_exitcode(status) == 0 else SETUP_FAILED)


def _enter_namespaces(
    cfg: dict, libc, from_launcher: int, to_launcher: int, isolation: list[str], notes: list[str]
) -> str:
    """Unshare what the kernel allows; the mode is ``"plain"`` (root with CAP_SYS_ADMIN),
    ``"userns"`` (through a new user namespace) or ``"none"``."""
    if not cfg["namespaces"]:
        return "none"
    mode = "none"
    if os.geteuid() == 0 and _unshare(libc, CLONE_NEWNET):
        mode = "plain"
        isolation.append("netns")
    elif _unshare(libc, CLONE_NEWUSER):
        os.write(to_launcher, b"maps\n")
        if os.read(from_launcher, 1) == b"1":
            mode = "userns"
            isolation.append("userns")
        else:
            notes.append("the launcher could not write the uid maps of the user namespace")
            return "none"
    else:
        notes.append(f"unshare refused: {os.strerror(_errno())}")
        return "none"
    os.close(from_launcher)
    flags = [("netns", CLONE_NEWNET), ("ipcns", CLONE_NEWIPC), ("utsns", CLONE_NEWUTS)]
    flags += [("cgroupns", CLONE_NEWCGROUP), ("mountns", CLONE_NEWNS)]
    for name, flag in flags:
        if name not in isolation and _unshare(libc, flag):
            isolation.append(name)
    if "mountns" in isolation and not _mount(libc, None, b"/", None, MS_REC | MS_PRIVATE):
        isolation.remove("mountns")  # unshared but propagating to the host: never mount anything in it
    if "utsns" in isolation:
        libc.sethostname(b"sandbox", 7)
    if _unshare(libc, CLONE_NEWPID):
        isolation.append("pidns")
    return mode


def _build_root(cfg: dict, libc) -> None:
    """A tmpfs root holding only what the program needs: the interpreter and its standard library
    (read-only, site-packages masked), a few devices, a private ``/tmp``; no host sockets, no
    checkout, no datasets. The init process mounts ``/proc`` and pivots into it."""
    root = cfg["root_dir"]
    view = cfg["view"]
    _mount_or_raise(libc, b"tmpfs", root, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,nr_inodes=4096,mode=0755")
    for path, target in view["symlinks"]:
        os.symlink(target, root + path)
    for path in view["binds"]:
        os.makedirs(root + path, 0o755, exist_ok=True)
        _bind_readonly(libc, path, root + path)
    for path in view["files"]:
        os.makedirs(os.path.dirname(root + path), 0o755, exist_ok=True)
        with open(root + path, "wb"):
            pass
        _bind_readonly(libc, path, root + path)
    for path in view["masks"]:
        if os.path.isdir(root + path):
            _mount_or_raise(
                libc, b"tmpfs", root + path, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k,mode=0755"
            )
    dev = root + "/dev"
    os.makedirs(dev, 0o755, exist_ok=True)
    _mount_or_raise(libc, b"tmpfs", dev, b"tmpfs", MS_NOSUID | MS_NOEXEC, b"size=64k,nr_inodes=64,mode=0755")
    for name in DEVICES:
        with open(f"{dev}/{name}", "wb"):
            pass
        _mount_or_raise(libc, f"/dev/{name}".encode(), f"{dev}/{name}", None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm", 0o1777)
    _mount_or_raise(
        libc,
        b"tmpfs",
        f"{dev}/shm",
        b"tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        b"size=4m,nr_inodes=256,mode=1777",
    )
    _remount_readonly(libc, dev)
    os.makedirs(root + "/tmp", 0o1777, exist_ok=True)
    size = cfg["limits"]["disk_mb"]
    _mount_or_raise(
        libc,
        b"tmpfs",
        root + "/tmp",
        b"tmpfs",
        MS_NOSUID | MS_NODEV,
        f"size={size}m,nr_inodes=8192,mode=1777".encode(),
    )
    os.mkdir(root + WORKDIR, 0o700)
    os.makedirs(root + "/etc", 0o755, exist_ok=True)
    uid = cfg["uid"] if cfg["uid"] is not None else cfg["outer_uid"]
    gid = uid if cfg["uid"] is not None else cfg["outer_gid"]
    with open(root + "/etc/passwd", "w", encoding="ascii") as fh:
        fh.write(f"root:x:0:0::/:/bin/false\nsandbox:x:{uid}:{gid}::{WORKDIR}:/bin/false\n")
    with open(root + "/etc/group", "w", encoding="ascii") as fh:
        fh.write(f"root:x:0:\nsandbox:x:{gid}:\n")
    with open(root + "/etc/hosts", "w", encoding="ascii") as fh:
        fh.write("127.0.0.1 localhost sandbox\n")
    os.chown(root + WORKDIR, uid, gid)
    os.mkdir(root + "/proc", 0o555)


def _bind_readonly(libc, source: str, target: str) -> None:
    """Bind ``source`` at ``target`` read-only, nosuid and nodev, keeping flags the kernel locks."""
    _mount_or_raise(libc, source.encode(), target, None, MS_BIND | MS_REC)
    _remount_readonly(libc, target, os.statvfs(source).f_flag)


def _remount_readonly(libc, target: str, st_flags: int = 0) -> None:
    """Make a bind or tmpfs mount read-only (a mount made in a user namespace keeps its atime flags)."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    for st_flag, ms_flag in _ST_TO_MS:
        if st_flags & st_flag:
            flags |= ms_flag
    _mount_or_raise(libc, None, target, None, flags)


def _init(cfg: dict, libc, report_fd: int, isolation: set[str], fs_view: bool, mode: str) -> None:
    """Pid 1 of the sandbox: pivot into the new root, write the program, fork it, reap everything."""
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    added: list[str] = []
    if fs_view:
        root = cfg["root_dir"]
        if "pidns" in isolation and _mount(
            libc, b"proc", (root + "/proc").encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC
        ):
            added.append("proc")
        os.chdir(root)
        if libc.syscall(_syscall_number("pivot_root"), b".", b".") != 0:
            raise OSError(_errno(), f"pivot_root: {os.strerror(_errno())}")
        if libc.umount2(b".", MNT_DETACH) != 0:
            raise OSError(_errno(), f"detaching the old root: {os.strerror(_errno())}")
        os.chdir("/")
        _remount_readonly(libc, "/")
        added.append("rootfs")
        workdir = WORKDIR
    else:
        workdir = cfg["fallback_workdir"]
    uid = cfg["uid"]
    owner = uid if uid is not None else os.getuid()
    for name, text in [("main.py", cfg["source"]), *cfg["files"].items()]:
        path = os.path.join(workdir, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chown(path, owner, owner if uid is not None else os.getgid())
    _report(report_fd, {"isolation": added})
    _set_signals(signal.SIG_IGN)  # nothing the program sends can end init (SIGKILL: see below)
    program = os.fork()
    if program == 0:
        _guard(report_fd, lambda: _exec_program(cfg, libc, report_fd, isolation | set(added), workdir, mode))
    for fd in cfg["pass_fds"].values():
        os.close(fd)
    status = None
    while True:  # as pid 1, every orphan of the program is ours to reap
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == program:
            status = st
            if "pidns" in isolation:
                break  # leaving kills the rest of the namespace
    _report(report_fd, {"wait_status": status})
    os._exit(0)


def _exec_program(cfg: dict, libc, report_fd: int, isolation: set[str], workdir: str, mode: str) -> None:
    """In the program's process: limits, an unprivileged uid, seccomp, only its own fds; then exec."""
    import resource

    _set_signals(signal.SIG_DFL)  # ignored signals survive exec: give the program the defaults back
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    limits = cfg["limits"]
    mb = 1024 * 1024
    rlimits = [
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_CPU, limits["cpu_s"]),
        (resource.RLIMIT_FSIZE, limits["max_file_mb"] * mb),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_MSGQUEUE, 0),
    ]
    uid = cfg["uid"]
    if uid is not None or mode == "userns":
        rlimits.append((resource.RLIMIT_NPROC, limits["max_processes"]))  # counts this sandbox only
    for which, value in rlimits:
        # The CPU hard limit (SIGKILL) sits 1 s above the soft one (SIGXCPU, reported as a timeout).
        resource.setrlimit(which, (value, value + 1 if which == resource.RLIMIT_CPU else value))
    added = ["rlimits"]
    _set_oom_score_adj("0")  # the setup and init processes are protected; the program is not
    if uid is not None:
        if mode != "userns" or cfg["outer_uid"] == 0:
            os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        added.append(f"uid:{uid}")
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PermissionError("refusing to run the program as uid 0: no unprivileged uid is available")
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)  # a credential change clears it: arm again
    if not _prctl(libc, PR_SET_NO_NEW_PRIVS, 1):
        raise OSError(_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    added.append("no_new_privs")
    if install_seccomp(libc, DENIED_SYSCALLS, socket_families=SOCKET_FAMILIES):
        added.append("seccomp")
    missing = missing_isolation(isolation | set(added)) if cfg["require_isolation"] else []
    if missing:  # this run lacks what the caller's check found on the machine: never run it so
        raise PermissionError(f"refusing to run untrusted code without: {', '.join(missing)}")
    python = cfg["python"]
    if not os.access(python, os.X_OK):
        raise PermissionError(
            f"uid {os.getuid()} cannot run {python}; without a private root file system the "
            "interpreter must be readable by every user (e.g. /usr/bin/python3)"
        )
    os.chdir(workdir)
    _report(report_fd, {"isolation": added})
    report_fd = _keep_only_fds(cfg["pass_fds"], report_fd)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(HOME=workdir, TMPDIR=workdir)
    if cfg["libdir"]:
        env["LD_LIBRARY_PATH"] = cfg["libdir"]
    # From here on the run is the program's: however it ends, the caller scores it (never "error").
    _report(report_fd, {"started": True})
    try:
        os.execve(python, [python, "-I", "-S", "-B", "-X", "utf8", "main.py"], env)
    except OSError as err:  # the original report descriptor is closed: report on the kept one
        _report(report_fd, {"started": False, "error": f"exec {python}: {err}"})
        os._exit(SETUP_FAILED)


def _set_signals(handler) -> None:
    """Set every catchable signal but SIGCHLD (whose SIG_IGN would reap children unseen) to ``handler``.

    In init, SIG_IGN: the kernel never delivers SIGKILL or SIGSTOP to a namespace's init from
    inside it, and an ignored signal cannot interrupt it (Python's SIGINT handler would).
    """
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            try:  # noqa: SIM105
                signal.signal(sig, handler)
            except (OSError, ValueError):  # the real-time signals glibc keeps for itself
                pass


def _keep_only_fds(pass_fds: dict[int, int], report_fd: int) -> int:
    """Close every descriptor but stdin, stdout, stderr and the caller's pipes, moved to their
    numbers; the report pipe stays open until exec (close-on-exec) and its new number is returned.

    Everything is copied above every target first: a target may carry the report pipe's number (the
    caller's lowest free ones), and a ``dup2`` onto it would send the launcher's last report into the
    program's pipe."""
    above = max(64, *pass_fds, report_fd) + 1
    report = fcntl.fcntl(report_fd, fcntl.F_DUPFD_CLOEXEC, above)
    moved = {target: fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, above) for target, source in pass_fds.items()}
    for target, fd in moved.items():
        os.dup2(fd, target, inheritable=True)
    keep = {0, 1, 2, *moved}
    report = fcntl.fcntl(report, fcntl.F_DUPFD_CLOEXEC, max(keep) + 1)
    for fd in range(3, report):
        if fd not in keep:
            try:  # noqa: SIM105 (contextlib would be one more import in every launcher)
                os.close(fd)
            except OSError:
                pass
    os.closerange(report + 1, 1 << 20)
    return report


def install_seccomp(
    libc,
    denied: tuple[str, ...],
    *,
    deny_new_namespaces: bool = True,
    socket_families: dict[str, tuple[int, ...]] | None = None,
) -> bool:
    """Install a seccomp filter: ``denied`` syscalls fail with EPERM (``clone3`` with ENOSYS); with
    ``deny_new_namespaces`` so does ``clone`` with a namespace flag; ``socket_families`` maps
    ``socket`` / ``socketpair`` to the only address families they may create (others: EPERM).
    False on an unknown architecture. Needs ``no_new_privs`` (or CAP_SYS_ADMIN); stacks on filters
    already in place."""
    import ctypes

    arch = os.uname().machine
    if arch not in SYSCALLS:
        return False
    audit_arch, numbers = SYSCALLS[arch]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000

    def errno(value: int) -> int:
        return 0x00050000 | value

    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if arch == "x86_64":  # the x32 ABI shares the architecture value: refuse all of it
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, errno(1))]
    for name in denied:
        prog += [(jeq, 0, 1, numbers[name]), (ret, 0, 0, errno(1))]
    # A check on the first argument: [nr?] [load arg] [test?] [EPERM] [reload nr], skipped whole
    # when the number differs.
    if deny_new_namespaces:
        prog += [(jeq, 0, 1, numbers["clone3"]), (ret, 0, 0, errno(38))]
        prog += [(jeq, 0, 4, numbers["clone"]), (ld, 0, 0, 16), (jset, 0, 1, NAMESPACE_FLAGS)]
        prog += [(ret, 0, 0, errno(1)), (ld, 0, 0, 0)]
    for name, families in (socket_families or {}).items():
        # [nr?] [load the family (the low 32 bits of arg 0)] [allowed? -> reload] ... [EPERM] [reload nr]
        k = len(families)
        prog += [(jeq, 0, k + 3, numbers[name]), (ld, 0, 0, 16)]
        prog += [(jeq, k - i, 0, family) for i, family in enumerate(families)]
        prog += [(ret, 0, 0, errno(1)), (ld, 0, 0, 0)]
    prog += [(ret, 0, 0, allow)]
    blob = b"".join(struct.pack("=HBBI", *insn) for insn in prog)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(prog), blob)
    rc = libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0)
    if rc != 0:
        raise OSError(_errno(), f"installing the seccomp filter: {os.strerror(_errno())}")
    return True


def _set_oom_score_adj(value: str) -> None:
    """Set this process's OOM score adjustment where allowed (lowering it needs root)."""
    try:  # noqa: SIM105
        _write("/proc/self/oom_score_adj", value)
    except OSError:
        pass


def _load_config(path: str) -> dict:
    """The run's configuration, after the launcher's own code object at the head of the file."""
    with open(path, "rb") as fh:
        marshal.load(fh)
        return marshal.load(fh)


def _libc():
    """libc through ctypes, with the argument types of the calls that take pointers."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return libc


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _syscall_number(name: str) -> int:
    """The syscall number of ``name`` on this machine (for calls glibc does not wrap)."""
    arch = os.uname().machine
    if arch not in SYSCALLS:
        raise OSError(38, f"no syscall table for {arch}")
    return SYSCALLS[arch][1][name]


def _guard(report_fd: int, step) -> None:
    """Run one forked process's work; report any failure and never return into the parent's code."""
    try:
        step()
    except BaseException as err:
        try:
            _report(report_fd, {"error": f"{type(err).__name__}: {err}"[:2000]})
        finally:
            os._exit(SETUP_FAILED)
    os._exit(SETUP_FAILED)


def _unshare(libc, flag: int) -> bool:
    """``unshare(2)``; False when the kernel or our privileges refuse."""
    return libc.unshare(flag) == 0


def _mount(libc, source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data=None) -> bool:
    """``mount(2)``; False on failure."""
    return libc.mount(source, target, fstype, flags, data) == 0


def _mount_or_raise(
    libc, source: bytes | None, target: str, fstype: bytes | None, flags: int, data=None
) -> None:
    """``mount(2)``, raising OSError with the target named."""
    if not _mount(libc, source, target.encode(), fstype, flags, data):
        err = _errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _prctl(libc, option: int, arg: int) -> bool:
    """``prctl(2)`` with one argument; False on failure."""
    return libc.prctl(option, arg, 0, 0, 0) == 0


def _write(path: str, text: str) -> None:
    """Write a short string to a /proc or cgroup control file."""
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def _report(fd: int, item: dict) -> None:
    """One marshalled dict to the caller's report pipe (small, so a single atomic write)."""
    os.write(fd, marshal.dumps(item))


def _kill(pid: int) -> None:
    """SIGKILL one process; it may already be gone."""
    try:  # noqa: SIM105
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _waitpid(pid: int) -> int:
    """Reap ``pid`` and return its raw wait status."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def _kill_descendants() -> None:
    """SIGKILL and reap every process reparented to this subreaper, until none is left.

    With a pid namespace the kernel has already killed them all when its init died; without one,
    a grandchild that called ``setsid`` or double-forked lands here.
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


if __name__ == "knapsack_trl_sandbox_launcher":
    sys.exit(launch(sys.argv[1], int(sys.argv[2])))

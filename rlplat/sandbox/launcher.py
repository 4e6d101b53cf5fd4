"""Staging one execution: the launcher script (the sandbox's first process), the work dir, and what the launcher
is told (namespaces, mounts, rlimits, uid). Standard library only."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from rlplat.sandbox.records import SandboxLimits

# BLAS/OpenMP start a thread per core on import; on a 128-core node that alone exceeds RLIMIT_NPROC
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Runs as the sandbox's first process (root where namespaces are on), stdlib only, no site import.
# argv[1] is a JSON spec; fd spec["report_fd"] gets the host pid of the program when it runs in a PID namespace.
LAUNCHER = r"""
import ctypes, json, os, resource, shutil, signal, sys
spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def fail(msg):
    os.write(2, ("sandbox setup failed: " + msg + "\n").encode())
    os._exit(125)
def check(rc, what):
    if rc != 0:
        fail(what + ": " + os.strerror(ctypes.get_errno()))
report = spec["report_fd"]
if spec["namespaces"]:
    NEWNET, NEWPID, NEWNS = 0x40000000, 0x20000000, 0x00020000
    MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 1, 4096, 16384, 262144
    NEWUSER = 0x10000000 if spec["userns"] else 0
    check(libc.unshare(NEWUSER | NEWNET | NEWPID | NEWNS), "unshare(CLONE_NEWNET|CLONE_NEWPID|CLONE_NEWNS%s)"
          % ("|CLONE_NEWUSER" if NEWUSER else ""))
    if NEWUSER:  # keep the caller's uid and gid inside; the launcher holds capabilities only in its namespace
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (os.getuid(), os.getuid())),
                           ("gid_map", "%d %d 1" % (os.getgid(), os.getgid()))):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    workdir_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)  # the staged files, before /tmp is covered
    # every existing mount read-only (mount_setattr, AT_RECURSIVE, MOUNT_ATTR_RDONLY; Linux >= 5.12); the
    # tmpfs mounts below are new, so they stay writable
    attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)
    rdonly = libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr))
    if spec["require_readonly_root"]:
        check(rdonly, "mount_setattr(/, MOUNT_ATTR_RDONLY)")
    for top, inner in spec["expose"]:
        # `top` is not traversable by the sandbox's uid (e.g. /root holding the interpreter): cover it with an
        # empty tmpfs and bind back only the directories the interpreter needs; the rest of `top` stays hidden.
        fds = [os.open(p, os.O_PATH) for p in inner]
        check(libc.mount(b"tmpfs", top.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64k,mode=755"), "cover " + top)
        for p, fd in zip(inner, fds):
            os.makedirs(p, exist_ok=True)
            check(libc.mount(("/proc/self/fd/%d" % fd).encode(), p.encode(), None, MS_BIND | MS_REC, None), "bind " + p)
            os.close(fd)
    for p in spec["hidden_paths"]:
        check(libc.mount(b"tmpfs", p.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
                         b"size=4k,mode=555"), "hide " + p)
    for d in spec["private_tmp"]:  # fresh, size-capped tmpfs: what the program writes vanishes with it
        os.makedirs(d, exist_ok=True)
        check(libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                         b"size=%d,mode=1777" % spec["disk_bytes"]), "private " + d)
    shutil.copytree("/proc/self/fd/%d" % workdir_fd, spec["workdir"], dirs_exist_ok=True)
    os.close(workdir_fd)
    for root, dirs, files in os.walk(spec["workdir"]) if spec["uid"] is not None else ():
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.lchown(name, spec["uid"], spec["uid"])
    os.chdir(spec["workdir"])
    pid = os.fork()
    if pid:
        os.write(report, (str(pid) + "\n").encode())
        os.close(report)
        # waitpid returns only after the kernel has killed every process left in the namespace
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):  # die of the same signal, so the caller sees the program's own status
            if os.WTERMSIG(status) != signal.SIGKILL:
                signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status))
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: if the launcher dies, PID 1 (and so the namespace) dies
    check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
os.close(report)
try:
    for name, value in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (value, value))
    if spec["uid"] is not None:
        os.setgroups([])
        os.setresgid(spec["uid"], spec["uid"], spec["uid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    os.execve(spec["argv"][0], spec["argv"], os.environ)
except OSError as e:
    fail(repr(e))
"""



def write_files(workdir: str, code: str, files: Mapping[str, str], uid: int | None) -> None:
    root = Path(workdir)
    if "main.py" in files:
        raise ValueError("sandbox file 'main.py' is the program itself: pass it as `code`")
    for name, text in {"main.py": code, **files}.items():
        path = (root / name).resolve()
        if root.resolve() not in path.parents:
            raise ValueError(f"sandbox file {name!r} must be a relative path inside the work dir")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if uid is not None:
        for p in [root, *root.rglob("*")]:
            os.chown(p, uid, uid)
    os.chmod(root, 0o700)


def _interpreter_dirs(python: str) -> set[str]:
    """Directories the interpreter reads: its installation and, for this process's interpreter, the venv."""
    real = os.path.realpath(python)
    dirs = {os.path.dirname(os.path.dirname(real))}
    if real == os.path.realpath(sys.executable):
        dirs |= {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    return dirs


def exposed_dirs(python: str) -> list[tuple[str, list[str]]]:
    """[(top, [dirs under it])]: for each interpreter dir, its highest ancestor that others cannot traverse."""
    by_top: dict[str, list[str]] = {}
    for d in sorted(_interpreter_dirs(python)):
        closed = [a for a in [*reversed(Path(d).parents), Path(d)] if not os.stat(a).st_mode & 0o001]
        if closed and str(closed[0]) != "/":
            by_top.setdefault(str(closed[0]), []).append(d)
    return sorted(by_top.items())


def private_tmp_dirs() -> list[str]:
    """World-writable scratch dirs that get a private tmpfs in the mount namespace (the work dir's root first)."""
    dirs = {os.path.realpath(tempfile.gettempdir()), "/tmp", "/var/tmp", "/dev/shm"}
    return sorted(d for d in dirs if os.path.isdir(d))


def rlimits(limits: SandboxLimits, uid: int | None, userns: bool) -> list[tuple[str, int]]:
    nproc = limits.max_processes
    if uid is None and not userns:  # RLIMIT_NPROC counts every task of the uid, so allow what the caller already runs
        nproc += count_tasks_of_uid(os.getuid())
    return [("RLIMIT_CPU", limits.cpu_s), ("RLIMIT_AS", limits.memory_bytes),
            ("RLIMIT_FSIZE", limits.file_size_bytes), ("RLIMIT_NPROC", nproc),
            ("RLIMIT_NOFILE", limits.max_open_files), ("RLIMIT_CORE", 0)]



def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]



def count_tasks_of_uid(uid: int) -> int:
    total = 0
    for pid in pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            total += int(fields.get("Threads", "1").strip())
    return total

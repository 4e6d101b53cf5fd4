"""Run untrusted Python (a model's tool call, a program under test) in a fresh, limited, short-lived process.

Contract of one execution (`Sandbox.run` / `Sandbox.run_sync`):
  1. A new temporary working directory holds `main.py` (the code) and any extra files; it is removed afterwards.
  2. A launcher (`python -I -S -c _LAUNCHER`, no preexec_fn: safe with threads) starts in a new session and
     process group with a cleared environment (PATH, HOME=TMPDIR=the work dir, LANG, one BLAS/OpenMP thread,
     a marker variable).
  3. Where the kernel allows it (`probe_isolation`): new network, PID and mount namespaces. No network at all
     (only a down loopback); every host mount read-only; fresh size-capped tmpfs on /tmp (holding a copy of the
     work dir), /var/tmp and /dev/shm, so nothing written survives the run; a private /proc; `hidden_paths`
     covered by empty mounts; a directory holding the interpreter that others cannot traverse (/root with
     pyenv) is covered too, with only the interpreter's directories bound back. The program is PID 1 of its
     namespace, so when it exits or is killed the kernel kills everything it started, including children that
     left the process group with setsid(). It runs as an unprivileged uid, one per pool slot
     (uid_base + slot), so RLIMIT_NPROC counts only that run's processes and it cannot signal other runs.
  4. In the program's process: rlimits for CPU seconds, address space, file size, processes, open files.
  5. Reading stdout/stderr never blocks on a huge output: both are drained, and kept up to
     `max_output_bytes` each (the rest is counted, then dropped).
  6. At the wall-clock deadline, or once the program has exited, everything is killed: the namespace's PID 1,
     the process group, and (without a PID namespace) every process that still carries the run's marker.
Where namespaces are not available, `Isolation.reasons` says why; docs/sandbox.md says what protects the host.

Concurrency: a `Sandbox` owns a thread pool of `max_concurrency` workers; that is the bound on simultaneous
executions. `run` (async) and `submit` (a concurrent.futures.Future) share it, so the agent loop and a batched
reward can use one pool from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

MARKER_ENV = "RLPLAT_SANDBOX_RUN"
SETUP_FAILED_EXIT = 125  # the launcher could not set up isolation; the program never ran
DEFAULT_UID_BASE = 1_500_000_000  # far above any uid that a passwd file or a subuid range hands out
# BLAS/OpenMP start a thread per core on import; on a 128-core node that alone exceeds RLIMIT_NPROC
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Runs as the sandbox's first process (root where namespaces are on), stdlib only, no site import.
# argv[1] is a JSON spec; fd spec["report_fd"] gets the host pid of the program when it runs in a PID namespace.
_LAUNCHER = r"""
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


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxLimits:
    """Per-execution limits. Sizes in bytes; RLIMIT_NPROC counts threads too."""

    timeout_s: float = 10.0  # wall clock, from start to kill
    cpu_s: int = 10  # RLIMIT_CPU, soft = hard: SIGKILL at cpu_s (PID 1 of a namespace ignores SIGXCPU)
    memory_bytes: int = 1 << 30  # RLIMIT_AS (virtual address space)
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE: a larger write fails with EFBIG
    max_processes: int = 32  # RLIMIT_NPROC for the sandbox's uid
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 64 << 10  # kept per stream (stdout, stderr)
    disk_bytes: int = 64 << 20  # each private tmpfs (/tmp with the work dir, /var/tmp, /dev/shm); namespaces only

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_bytes", "file_size_bytes", "max_processes", "max_open_files",
                     "disk_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)}")
        if self.max_output_bytes < 0:
            raise ValueError(f"sandbox limit max_output_bytes must be >= 0, got {self.max_output_bytes}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Isolation:
    """What this machine lets the sandbox enforce beyond rlimits (found once by `probe_isolation`).

    namespaces: new network + PID + mount namespaces (no network, private /proc and /tmp, hidden paths,
    PID-1 cleanup). uid_drop: programs run as uid_base + slot instead of the caller's uid (needs root).
    readonly_root: every mount of the host is read-only inside (mount_setattr, Linux >= 5.12).
    userns: the namespaces hang off a new user namespace (how a caller without root gets them; the program
    keeps the caller's uid, and RLIMIT_NPROC counts only the processes of that namespace).
    reasons: why something is off, e.g. "unshare(...): Operation not permitted".
    """

    namespaces: bool
    uid_drop: bool
    readonly_root: bool = False
    userns: bool = False
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxResult:
    """One execution's outcome.

    exit_code: the program's exit status; negative = killed by that signal (-9 after a timeout or at the CPU limit);
    None if it could not be started. stdout/stderr: decoded (UTF-8, errors replaced), at most max_output_bytes
    each; *_truncated says bytes were dropped. setup_error: isolation could not be set up (exit 125).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    wall_s: float
    isolation: Isolation
    setup_error: str = ""

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated

    @property
    def ok(self) -> bool:
        """The program ran to completion with exit status 0 within its limits."""
        return self.exit_code == 0 and not self.timed_out


def _run_probe(python: str, iso: Isolation, uid: int | None) -> str:
    """'' when a trivial program runs under `iso`, else why not."""
    res = _execute("print('ok')", python=python, limits=SandboxLimits(timeout_s=10.0), isolation=iso, uid=uid,
                   hidden_paths=(), stdin="", files={}, args=())
    if res.stdout.strip() == "ok" and res.exit_code == 0:
        return ""
    return res.setup_error or (res.stderr.strip().splitlines() or [f"exit {res.exit_code}"])[-1]


@functools.cache
def probe_isolation(python: str = sys.executable, uid_base: int = DEFAULT_UID_BASE) -> Isolation:
    """Try the strongest isolation first, once per (interpreter, uid_base); each step down records why."""
    reasons: list[str] = []
    uids: list[int | None] = [uid_base, None] if os.geteuid() == 0 else [None]
    if os.geteuid() != 0:
        reasons.append("not root: programs keep the caller's uid")
    for uid in uids:
        userns = uid is None  # root creates the namespaces directly; anyone else through a user namespace
        for namespaces, readonly_root in ((True, True), (True, False), (False, False)):
            iso = Isolation(namespaces=namespaces, uid_drop=uid is not None, readonly_root=readonly_root,
                            userns=userns and namespaces)
            why = _run_probe(python, iso, uid)
            if not why:
                return replace(iso, reasons=tuple(reasons))
            reasons.append(f"namespaces={namespaces} userns={iso.userns} readonly_root={readonly_root} "
                           f"uid={uid}: {why}")
    raise RuntimeError(f"the sandbox cannot run {python}: {'; '.join(reasons)}")


class Sandbox:
    """A bounded pool of sandboxed Python executions (see the module docstring for what one execution is).

    >>> with Sandbox(max_concurrency=2) as sb:
    ...     sb.run_sync("print(6 * 7)").stdout
    '42\\n'
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 4,
        limits: SandboxLimits = SandboxLimits(),
        python: str = sys.executable,
        hidden_paths: Sequence[str] = (),
        isolate: bool = True,
        uid_base: int = DEFAULT_UID_BASE,
    ) -> None:
        """python: the interpreter that runs programs (`-I`: no user site, PYTHON* variables ignored).
        hidden_paths: directories the program must not see (the run's output dir, credentials); they are
        covered by empty mounts where namespaces work. isolate=False skips namespaces and the uid drop
        (rlimits, timeout and cleanup stay)."""
        if max_concurrency <= 0:
            raise ValueError(f"max_concurrency must be > 0, got {max_concurrency}")
        tmp = os.path.realpath(tempfile.gettempdir())
        for p in hidden_paths:
            if not os.path.isabs(p) or not os.path.isdir(p):
                raise ValueError(f"hidden path {p!r} must be an absolute path to an existing directory")
            if tmp == os.path.realpath(p) or tmp.startswith(os.path.realpath(p) + os.sep):
                raise ValueError(f"hidden path {p!r} holds the sandbox's work dirs ({tmp}): hide something narrower")
        self.limits = limits
        self.python = python
        self.hidden_paths = tuple(os.path.realpath(p) for p in hidden_paths)
        self.uid_base = uid_base
        self.isolation = probe_isolation(python, uid_base) if isolate else Isolation(
            namespaces=False, uid_drop=False, reasons=("isolate=False",))
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(max_concurrency):
            self._slots.put(i)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="sandbox")

    def submit(
        self,
        code: str,
        *,
        stdin: str = "",
        files: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        limits: SandboxLimits | None = None,
    ) -> Future[SandboxResult]:
        """Queue one execution on the pool; the future never raises for anything the program does."""
        return self._pool.submit(self._run_in_slot, code, stdin, dict(files or {}), tuple(args), limits or self.limits)

    def run_sync(self, code: str, *, stdin: str = "", files: Mapping[str, str] | None = None,
                 args: Sequence[str] = (), limits: SandboxLimits | None = None) -> SandboxResult:
        """`submit(...)` and wait: for threads and scripts (e.g. a reward function)."""
        return self.submit(code, stdin=stdin, files=files, args=args, limits=limits).result()

    async def run(self, code: str, *, stdin: str = "", files: Mapping[str, str] | None = None,
                  args: Sequence[str] = (), limits: SandboxLimits | None = None) -> SandboxResult:
        """Run `code` without blocking the event loop; same arguments as `submit`."""
        return await asyncio.wrap_future(self.submit(code, stdin=stdin, files=files, args=args, limits=limits))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_in_slot(self, code: str, stdin: str, files: dict[str, str], args: tuple[str, ...],
                     limits: SandboxLimits) -> SandboxResult:
        slot = self._slots.get()
        try:
            uid = self.uid_base + slot if self.isolation.uid_drop else None
            return _execute(code, python=self.python, limits=limits, isolation=self.isolation, uid=uid,
                            hidden_paths=self.hidden_paths, stdin=stdin, files=files, args=args)
        finally:
            self._slots.put(slot)


@functools.cache
def default_sandbox() -> Sandbox:
    """One process-wide pool (one slot per CPU) for callers without their own, e.g. the `code_tests` reward."""
    return Sandbox(max_concurrency=os.cpu_count() or 1)


def _write_files(workdir: str, code: str, files: Mapping[str, str], uid: int | None) -> None:
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


def _exposed_dirs(python: str) -> list[tuple[str, list[str]]]:
    """[(top, [dirs under it])]: for each interpreter dir, its highest ancestor that others cannot traverse."""
    by_top: dict[str, list[str]] = {}
    for d in sorted(_interpreter_dirs(python)):
        closed = [a for a in [*reversed(Path(d).parents), Path(d)] if not os.stat(a).st_mode & 0o001]
        if closed and str(closed[0]) != "/":
            by_top.setdefault(str(closed[0]), []).append(d)
    return sorted(by_top.items())


def _private_tmp_dirs() -> list[str]:
    """World-writable scratch dirs that get a private tmpfs in the mount namespace (the work dir's root first)."""
    dirs = {os.path.realpath(tempfile.gettempdir()), "/tmp", "/var/tmp", "/dev/shm"}
    return sorted(d for d in dirs if os.path.isdir(d))


def _rlimits(limits: SandboxLimits, uid: int | None, userns: bool) -> list[tuple[str, int]]:
    nproc = limits.max_processes
    if uid is None and not userns:  # RLIMIT_NPROC counts every task of the uid, so allow what the caller already runs
        nproc += _count_tasks_of_uid(os.getuid())
    return [("RLIMIT_CPU", limits.cpu_s), ("RLIMIT_AS", limits.memory_bytes),
            ("RLIMIT_FSIZE", limits.file_size_bytes), ("RLIMIT_NPROC", nproc),
            ("RLIMIT_NOFILE", limits.max_open_files), ("RLIMIT_CORE", 0)]


def _execute(
    code: str,
    *,
    python: str,
    limits: SandboxLimits,
    isolation: Isolation,
    uid: int | None,
    hidden_paths: Sequence[str],
    stdin: str,
    files: Mapping[str, str],
    args: Sequence[str],
) -> SandboxResult:
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rlplat-sandbox-")
    marker = uuid.uuid4().hex
    report_r, report_w = os.pipe()
    try:
        _write_files(workdir, code, files, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               MARKER_ENV: marker, **_ONE_THREAD}
        expose = _exposed_dirs(python) if isolation.namespaces and uid is not None else []
        spec = {"namespaces": isolation.namespaces, "hidden_paths": list(hidden_paths), "uid": uid, "expose": expose,
                "workdir": workdir, "private_tmp": _private_tmp_dirs(), "disk_bytes": limits.disk_bytes,
                "require_readonly_root": isolation.readonly_root, "userns": isolation.userns,
                "report_fd": report_w, "rlimits": _rlimits(limits, uid, isolation.userns),
                "argv": [python, "-I", "main.py", *args]}
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)], cwd=workdir, env=env,
                stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                pass_fds=(report_w,))
        os.close(report_w)
        report_w = -1
        try:
            out, err, timed_out = _read_until_exit(proc, limits, deadline=start + limits.timeout_s)
        finally:
            _kill_all(proc, report_r, marker, pid_namespace=isolation.namespaces)
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    exit_code = proc.returncode
    stderr = err.text()
    setup_error = ""
    if exit_code == SETUP_FAILED_EXIT and stderr.startswith("sandbox setup failed:"):
        setup_error = stderr.strip()
    return SandboxResult(stdout=out.text(), stderr=stderr, exit_code=exit_code, timed_out=timed_out,
                         stdout_truncated=out.dropped > 0, stderr_truncated=err.dropped > 0,
                         wall_s=time.monotonic() - start, isolation=isolation, setup_error=setup_error)


@dataclass(slots=True)
class _CappedBuffer:
    cap: int
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.dropped += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _read_until_exit(proc: subprocess.Popen[bytes], limits: SandboxLimits,
                     deadline: float) -> tuple[_CappedBuffer, _CappedBuffer, bool]:
    """Drain stdout/stderr (keeping max_output_bytes each) until both close, the launcher exits, or the deadline.

    A process that outlives the program can hold the pipes open; the launcher's exit ends the wait instead.
    """
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {proc.stdout.fileno(): _CappedBuffer(limits.max_output_bytes),
            proc.stderr.fileno(): _CappedBuffer(limits.max_output_bytes)}
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bufs[proc.stdout.fileno()], bufs[proc.stderr.fileno()], True
            for key, _ in sel.select(timeout=min(remaining, 0.05)):
                chunk = _read_some(key.fd)
                if chunk == b"":
                    sel.unregister(key.fd)
                elif chunk is not None:
                    bufs[key.fd].add(chunk)
            if proc.poll() is not None and sel.get_map():
                _drain(sel, bufs)  # what the program wrote before exiting; leftovers' output is not waited for
                break
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return bufs[proc.stdout.fileno()], bufs[proc.stderr.fileno()], True
    return bufs[proc.stdout.fileno()], bufs[proc.stderr.fileno()], False


def _read_some(fd: int) -> bytes | None:
    """Up to 64 KiB from a non-blocking pipe: b"" at EOF, None when nothing is there yet."""
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _drain(sel: selectors.BaseSelector, bufs: dict[int, _CappedBuffer]) -> None:
    for key, _ in sel.select(timeout=0):
        while chunk := _read_some(key.fd):
            bufs[key.fd].add(chunk)


def _kill_all(proc: subprocess.Popen[bytes], report_r: int, marker: str, *, pid_namespace: bool) -> None:
    """Kill the program and everything it started; return once they are gone (zombies at most)."""
    if pid_namespace and proc.poll() is None:
        pid1 = _read_reported_pid(report_r)
        if pid1 is not None:  # still the launcher's unreaped child, so the pid cannot have been reused
            _signal(pid1, signal.SIGKILL)
            try:  # the launcher's waitpid returns after the kernel has emptied the namespace
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if not pid_namespace:
        _kill_marked(marker)


def _read_reported_pid(fd: int) -> int | None:
    os.set_blocking(fd, False)
    try:
        text = os.read(fd, 64).decode()
    except (BlockingIOError, OSError):
        return None
    return int(text) if text.strip().isdigit() else None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_marked(marker: str) -> None:
    """Without a PID namespace: kill processes that left the process group but still carry the run's marker.

    Best effort: a process that cleared its environment, or forks faster than this sweep, escapes it.
    """
    needle = f"{MARKER_ENV}={marker}".encode()
    for _ in range(3):
        found = [pid for pid in _pids() if needle in _environ(pid)]
        if not found:
            return
        for pid in found:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.01)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _count_tasks_of_uid(uid: int) -> int:
    total = 0
    for pid in _pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            total += int(fields.get("Threads", "1").strip())
    return total


def isolation_report(isolation: Isolation) -> str:
    """One line for logs: what is on and why something is off."""
    on = {k: v for k, v in asdict(isolation).items() if k != "reasons"}
    return json.dumps(on) + ("; " + "; ".join(isolation.reasons) if isolation.reasons else "")


__all__ = ["Isolation", "Sandbox", "SandboxLimits", "SandboxResult", "default_sandbox", "isolation_report",
           "probe_isolation"]

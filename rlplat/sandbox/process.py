"""One execution: start the launcher, drain its output under caps, kill everything at the deadline or exit."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rlplat.sandbox.launcher import (
    LAUNCHER,
    ONE_THREAD,
    exposed_dirs,
    pids,
    private_tmp_dirs,
    rlimits,
    write_files,
)
from rlplat.sandbox.records import MARKER_ENV, SETUP_FAILED_EXIT, Isolation, SandboxLimits, SandboxResult


def execute(
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
        write_files(workdir, code, files, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               MARKER_ENV: marker, **ONE_THREAD}
        expose = exposed_dirs(python) if isolation.namespaces and uid is not None else []
        spec = {"namespaces": isolation.namespaces, "hidden_paths": list(hidden_paths), "uid": uid, "expose": expose,
                "workdir": workdir, "private_tmp": private_tmp_dirs(), "disk_bytes": limits.disk_bytes,
                "require_readonly_root": isolation.readonly_root, "userns": isolation.userns,
                "report_fd": report_w, "rlimits": rlimits(limits, uid, isolation.userns),
                "argv": [python, "-I", "main.py", *args]}
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(spec)], cwd=workdir, env=env,
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
        found = [pid for pid in pids() if needle in _environ(pid)]
        if not found:
            return
        for pid in found:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.01)



def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""

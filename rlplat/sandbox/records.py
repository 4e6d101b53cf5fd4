"""The sandbox's records: per-execution limits, what isolation this machine allows, one execution's outcome."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MARKER_ENV = "RLPLAT_SANDBOX_RUN"
SETUP_FAILED_EXIT = 125  # the launcher could not set up isolation; the program never ran
DEFAULT_UID_BASE = 1_500_000_000  # far above any uid that a passwd file or a subuid range hands out


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



def isolation_report(isolation: Isolation) -> str:
    """One line for logs: what is on and why something is off."""
    on = {k: v for k, v in asdict(isolation).items() if k != "reasons"}
    return json.dumps(on) + ("; " + "; ".join(isolation.reasons) if isolation.reasons else "")

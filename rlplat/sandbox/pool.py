"""The pool callers use: `Sandbox` (bounded concurrency, sync / async / future), and the isolation probe."""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from rlplat.sandbox.process import execute
from rlplat.sandbox.records import DEFAULT_UID_BASE, Isolation, SandboxLimits, SandboxResult


def _run_probe(python: str, iso: Isolation, uid: int | None) -> str:
    """'' when a trivial program runs under `iso`, else why not."""
    res = execute("print('ok')", python=python, limits=SandboxLimits(timeout_s=10.0), isolation=iso, uid=uid,
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
        limits: SandboxLimits | None = None,
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
        self.limits = limits or SandboxLimits()
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
            return execute(code, python=self.python, limits=limits, isolation=self.isolation, uid=uid,
                            hidden_paths=self.hidden_paths, stdin=stdin, files=files, args=args)
        finally:
            self._slots.put(slot)


@functools.cache
def default_sandbox() -> Sandbox:
    """One process-wide pool (one slot per CPU) for callers without their own, e.g. the `code_tests` reward."""
    return Sandbox(max_concurrency=os.cpu_count() or 1)

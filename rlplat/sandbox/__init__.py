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

Modules: records (limits, isolation, results), launcher (the launcher script and the work dir), process (one
execution: start, drain, kill), pool (`Sandbox`, `default_sandbox`, `probe_isolation`). Standard library only,
so that both rewards/ (code_tests) and agents/ (the python tool) sit above it.
"""

from rlplat.sandbox.pool import Sandbox, default_sandbox, probe_isolation
from rlplat.sandbox.records import Isolation, SandboxLimits, SandboxResult, isolation_report

__all__ = ["Isolation", "Sandbox", "SandboxLimits", "SandboxResult", "default_sandbox", "isolation_report",
           "probe_isolation"]

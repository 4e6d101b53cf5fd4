"""A private directory for each engine's ZMQ sockets, so that no run leaves socket files in /tmp.

vLLM opens its IPC sockets (the front end <-> engine core queues) as files in VLLM_RPC_BASE_PATH, by default the
temp dir itself, and leaves them there when the engine stops; every engine start used to add a few to /tmp. Each
engine now gets `/tmp/rlplat-vllm-<pid>-<random>` (pid: the process that owns the engine), removed when the engine
shuts down. An engine killed with its process cannot remove its own: the next engine started on the machine
removes every such directory whose owner is no longer alive (a live owner's is never touched).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "rlplat-vllm-"


def owner_pid(path: Path) -> int | None:
    """'rlplat-vllm-1234-abcd' -> 1234; None for a name that does not carry a pid."""
    pid = path.name.removeprefix(PREFIX).split("-", 1)[0]
    return int(pid) if path.name.startswith(PREFIX) and pid.isdigit() else None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(base: Path) -> list[Path]:
    """Remove the socket directories under `base` whose owner process is gone; returns them."""
    removed = []
    for path in sorted(base.glob(f"{PREFIX}*")):
        pid = owner_pid(path)
        if pid is not None and path.is_dir() and not is_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def private_socket_dir(base: Path | None = None) -> Path:
    """A fresh socket directory for this process's engine, set as VLLM_RPC_BASE_PATH (read when vLLM opens its
    sockets); orphans of dead processes are removed first."""
    base = base or Path(tempfile.gettempdir())
    remove_orphans(base)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
    os.environ["VLLM_RPC_BASE_PATH"] = str(path)
    return path

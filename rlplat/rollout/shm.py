"""vLLM's shared-memory segments (/dev/shm/psm_*, 160-240 MB each), released when their engine is gone.

vLLM's engine-core and worker processes create their message queues as Python SharedMemory segments, unlinked only when
the queue object is garbage-collected. An engine core that is force-killed (vLLM's own shutdown does that when the
core does not exit at once, and so does the death of its actor or driver) leaves them in /dev/shm for good.

So the rollout actor writes down the segments its engine processes have mapped (a ledger file next to the engine
log, `engine_N.log.shm.json`) once the engine is up, and releases them when it is shut down (unlinked before the
engine stops; a mapping outlives the name), and, when it starts again after a crash (Ray restarts it, or a resumed
run starts an actor with the same log file), those its predecessor left, except any a live process still maps.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("rlplat")
SHM_DIR = "/dev/shm/"


def mapped_segments(pids: list[int]) -> set[str]:
    """The /dev/shm files (not yet unlinked) that processes `pids` have mapped."""
    found: set[str] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:  # ended meanwhile, or not Linux
            continue
        for line in maps.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith(SHM_DIR) and not parts[5].endswith("(deleted)"):
                found.add(parts[5])
    return found


def child_segments() -> set[str]:
    """The /dev/shm files mapped by this process's descendants (the engine core and its workers)."""
    import psutil

    return mapped_segments([p.pid for p in psutil.Process().children(recursive=True)])


def in_use(segments: set[str]) -> set[str]:
    """Those of `segments` some live process on this machine still maps."""
    all_pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return segments & mapped_segments(all_pids)


def _in_shm_dir(path: str) -> bool:
    """A file directly in /dev/shm ('/dev/shm/../etc/x' is not)."""
    return os.path.dirname(os.path.normpath(path)) == SHM_DIR.rstrip("/")


def record(ledger: Path, segments: set[str]) -> None:
    ledger.write_text(json.dumps(sorted(segments)))


def release(ledger: Path, *, mapped_too: bool = False) -> list[str]:
    """Unlink the segments `ledger` lists that still exist and that no live process maps (the ledger keeps the
    others, or goes). Returns the paths unlinked.

    mapped_too: also those still mapped: for an engine about to be stopped, whose own segments they are. Unlinking
    removes only the name; processes that have it mapped keep using it until they end. Done before the stop,
    because the stop can outlast the driver's patience (vLLM waits for its worker, then force-kills it)."""
    try:
        listed = {s for s in json.loads(ledger.read_text()) if isinstance(s, str) and _in_shm_dir(s)}
    except (OSError, ValueError):
        return []
    existing = {s for s in listed if Path(s).exists()}
    busy = set() if mapped_too else in_use(existing)
    freed = sorted(existing - busy)
    for s in freed:
        Path(s).unlink(missing_ok=True)
    if busy:  # kept for a later release
        record(ledger, busy)
    else:
        ledger.unlink(missing_ok=True)
    if freed:
        log.info("released %d shared-memory segments of a stopped vLLM engine: %s", len(freed), ", ".join(freed))
    return freed


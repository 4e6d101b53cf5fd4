"""Fault injection for `rlplat bench faults --chaos`: kill -9 a process at a chosen remote call of the driver.

RLPLAT_CHAOS="TARGET:PHASE:N" (set by the bench on the driver it starts): at the N-th remote call named PHASE (the
phase names of driver/workers.py: "generation", "train step", "weight sync", "checkpoint save", ...), right after
the call was issued and before it is waited for, SIGKILL goes to TARGET:
    driver    this process (its Ray and actors then die with it, as after an OOM kill or a lost terminal)
    learner   the learner actor's process      } the first process under this driver whose command line
    rollout   the first rollout actor's process } starts "ray::LearnerActor" / "ray::RolloutActor"
    engine    the first vLLM engine core process (its rollout actor then ends itself, and Ray restarts it)
Only the first match fires. The variable is read once at import; when it is unset `at` returns at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass

ENV = "RLPLAT_CHAOS"
TARGETS = {"driver": "", "learner": "ray::LearnerActor", "rollout": "ray::RolloutActor", "engine": "VLLM::EngineCore"}
log = logging.getLogger("rlplat")


@dataclass(frozen=True, slots=True)
class KillPoint:
    target: str  # a key of TARGETS
    phase: str  # a remote call's phase name
    nth_call: int  # 1-based count of calls with that phase name in this process

    def __str__(self) -> str:
        return f"{self.target}:{self.phase}:{self.nth_call}"


def parse(text: str) -> KillPoint:
    """'learner:train step:3' -> KillPoint('learner', 'train step', 3); ValueError for anything else.

    >>> parse("driver:checkpoint save:2")
    KillPoint(target='driver', phase='checkpoint save', nth_call=2)
    """
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in TARGETS or not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError(f"{ENV}={text!r}: expected TARGET:PHASE:N with TARGET one of {sorted(TARGETS)}, N >= 1")
    return KillPoint(parts[0], parts[1], int(parts[2]))


POINT = parse(os.environ[ENV]) if os.environ.get(ENV) else None
_calls: dict[str, int] = {}
_lock = threading.Lock()
_fired = False


def at(phase: str) -> None:
    """Called by every remote call of the driver (workers.call/acall); kills the target at the chosen point."""
    global _fired
    if POINT is None or phase != POINT.phase:
        return
    with _lock:
        _calls[phase] = _calls.get(phase, 0) + 1
        if _fired or _calls[phase] != POINT.nth_call:
            return
        _fired = True
    log.warning("chaos: kill -9 %s at %s", POINT.target, POINT)
    if POINT.target == "driver":
        os.kill(os.getpid(), signal.SIGKILL)
    pid = actor_pid(TARGETS[POINT.target])
    if pid is None:
        log.warning("chaos: no %s process found under this driver", POINT.target)
    else:
        os.kill(pid, signal.SIGKILL)


def actor_pid(title_prefix: str) -> int | None:
    """The lowest pid among this process's descendants whose command line starts with `title_prefix` (Ray names
    an actor's worker process 'ray::ClassName' or 'ray::ClassName.method', vLLM its engine core 'VLLM::EngineCore')."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].startswith(title_prefix):
            found.append(p.pid)
    return min(found, default=None)

"""A rollout actor whose vLLM engine core died ends its own process tree (rlplat/actors/rollout.py), so that Ray
restarts it. Checked in a child process with a real EngineDeadError and a real leftover subprocess, no Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil

PROGRAM = textwrap.dedent("""
    import asyncio, subprocess, sys
    from vllm.v1.engine.exceptions import EngineDeadError
    from rlplat.actors.rollout import exit_when_engine_dies

    class Actor:
        @exit_when_engine_dies
        async def fine(self):
            return "served"

        @exit_when_engine_dies
        async def generate(self):
            raise EngineDeadError()

    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # an engine worker, say
    print(leftover.pid, asyncio.run(Actor().fine()), flush=True)
    try:
        asyncio.run(Actor().generate())
    except Exception as e:  # what would happen without the guard: the error goes back to the caller, alive
        print("raised", type(e).__name__, flush=True)
""")


def test_a_dead_engine_ends_the_actor_process_and_what_it_started() -> None:
    proc = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.split()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert lines[1:] == ["served"], proc.stdout  # the method before the death answered; nothing ran after it
    pid = int(lines[0])
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the actor's subprocess outlived it"
        time.sleep(0.1)

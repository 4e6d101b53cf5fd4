"""RLPLAT_CHAOS kill points (rlplat/driver/chaos.py) without Ray: the N-th call of a phase kills its target, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from rlplat.driver import chaos


def test_parse_names_the_format_on_bad_input() -> None:
    assert chaos.parse("rollout:weight sync:4") == chaos.KillPoint("rollout", "weight sync", 4)
    for bad in ("rollout:weight sync", "gpu:train step:1", "driver:train step:0", "driver:train step:x"):
        with pytest.raises(ValueError, match="expected TARGET:PHASE:N"):
            chaos.parse(bad)


def test_unset_is_inert() -> None:
    code = "from rlplat.driver import chaos\nfor _ in range(5): chaos.at('train step')\nprint(chaos.POINT)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != chaos.ENV})
    assert done.returncode == 0 and done.stdout.strip() == "None"


def test_driver_is_killed_at_the_nth_call_of_its_phase() -> None:
    code = ("from rlplat.driver import chaos\n"
            "for i in range(1, 5):\n"
            "    chaos.at('generation')\n"
            "    chaos.at('train step')\n"
            "    print(i, flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, chaos.ENV: "driver:train step:3"})
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["1", "2"]


def test_an_actor_process_under_this_process_is_killed_once(monkeypatch) -> None:
    """A child titled like Ray's learner worker ('ray::LearnerActor.<method>') gets SIGKILL at the 2nd call."""
    child = subprocess.Popen(["bash", "-c", "exec -a ray::LearnerActor.train_step sleep 60"])
    other = subprocess.Popen(["bash", "-c", "exec -a ray::RolloutActor sleep 60"])
    try:
        monkeypatch.setattr(chaos, "POINT", chaos.KillPoint("learner", "train step", 2))
        monkeypatch.setattr(chaos, "_calls", {})
        monkeypatch.setattr(chaos, "_fired", False)
        chaos.at("train step")
        assert child.poll() is None
        deadline = 50
        while chaos.actor_pid("ray::LearnerActor") is None and deadline:  # bash has exec'd its new title
            deadline -= 1
            subprocess.run(["sleep", "0.1"], check=True)
        chaos.at("weight sync")
        chaos.at("train step")
        assert child.wait(timeout=10) == -signal.SIGKILL
        chaos.at("train step")  # fires once only
        assert other.poll() is None
    finally:
        for p in (child, other):
            p.kill()
            p.wait()

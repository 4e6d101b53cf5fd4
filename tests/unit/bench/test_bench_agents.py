"""`rlplat bench agents`: the sandbox part end to end at tiny sizes (real sandbox, no engine), the engine busy
clock on fake engines, and the per-step share arithmetic with hand values."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlplat.bench import agents
from rlplat.bench.agents import BusyClock, TimedEngine, step_shares, timed_engines


def test_sandbox_part_runs_and_ends_with_the_headline(capsys: pytest.CaptureFixture[str]) -> None:
    assert agents.main(["--steps", "0", "--num-runs", "2", "--timeout-s", "0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = json.loads(lines[-1])
    assert head["bench"] == "agents" and head["metric"] == "sandbox_executions_per_s" and head["value"] > 0
    rows = {name: [line for line in lines if line.strip().startswith(name)] for name in agents.PROGRAMS}
    assert all(len(found) == 1 for found in rows.values()), rows
    assert all(" 2/2 " in found[0] for found in rows.values()), rows  # right stdout, truncated, timed out


class FakeEngine:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def generate(self, samples: list, sampling: object, policy_version: int) -> list:
        await asyncio.sleep(self.seconds)
        return samples


def test_busy_clock_counts_overlapping_requests_once() -> None:
    clock = BusyClock()
    fast, slow = TimedEngine(FakeEngine(0.1), clock), TimedEngine(FakeEngine(0.3), clock)

    async def step(version: int) -> None:
        await asyncio.gather(fast.generate([], None, version), slow.generate([], None, version))
        await asyncio.sleep(0.2)  # nothing in flight: not engine time
        await fast.generate([], None, version)

    asyncio.run(step(0))
    asyncio.run(step(1))
    assert set(clock.busy_s) == {0, 1} and clock.in_flight == 0
    for v in (0, 1):
        assert clock.busy_s[v] == pytest.approx(0.4, abs=0.08)  # 0.3 (overlapped) + 0.1, not 0.5 or 0.6


def test_timed_engines_wraps_and_restores() -> None:
    from rlplat.driver.workers import Workers

    original = Workers.engines
    with timed_engines(BusyClock()):
        assert Workers.engines is not original
    assert Workers.engines is original


def test_step_shares_by_hand() -> None:
    history = {"time/step_s": [(1, 20.0), (2, 10.0), (3, 8.0)], "time/train_s": [(1, 2.0), (2, 2.0), (3, 2.0)],
               "time/tools_s": [(1, 3.0), (2, 3.0), (3, 3.0)]}
    rows = step_shares(history, {5: 15.0, 6: 7.5, 7: 5.6})  # versions map to steps in order
    assert [(r.step, r.engine_s) for r in rows] == [(1, 15.0), (2, 7.5), (3, 5.6)]
    assert [r.outside_s for r in rows] == pytest.approx([3.0, 0.5, 0.4])
    assert [r.outside_share for r in rows] == pytest.approx([0.15, 0.05, 0.05])
    with pytest.raises(RuntimeError, match="synchronous"):
        step_shares(history, {0: 1.0})

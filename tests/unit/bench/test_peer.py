"""`rlplat bench peer`'s pure parts: flag parsing, steps and seconds to a reward threshold on hand-made histories,
the table and the headline ratio. No TRL, Ray or vLLM here (the TRL driver script is never imported)."""

from __future__ import annotations

import math
import pkgutil
import time
from pathlib import Path

import pytest

import rlplat.bench
from rlplat.bench import peer
from rlplat.bench.common import print_table


def _run(side: str, rewards: list[float], step_s: float, seed: int = 0) -> peer.SideRun:
    n = len(rewards)
    return peer.SideRun(side, seed, rewards, [step_s] * n, [step_s * (i + 1) for i in range(n)], [100.0] * n,
                        setup_s=5.0, wall_s=step_s * n + 10)


def test_parse_floats() -> None:
    assert peer.parse_floats("0.5, 0.8,") == [0.5, 0.8]
    with pytest.raises(ValueError, match="'x'"):
        peer.parse_floats("0.5,x")
    with pytest.raises(ValueError, match="no values"):
        peer.parse_floats(" , ")


@pytest.mark.parametrize(("rewards", "threshold", "window", "expected"), [
    ([0.0, 0.2, 0.4, 0.6], 0.3, 2, 3),        # means of full windows: 0.1, 0.3 (step 3), 0.5
    ([0.0, 0.2, 0.4, 0.6], 0.5, 2, 4),
    ([0.0, 0.2, 0.4, 0.6], 0.6, 2, math.inf),  # best full-window mean is 0.5
    ([0.9, 0.9, 0.0], 0.5, 3, 3),             # (0.9 + 0.9 + 0) / 3 = 0.6
    ([1.0, 0.0, 0.0], 0.5, 3, math.inf),      # a partial window never counts: step 1 alone is 1.0
    ([0.5], 0.5, 1, 1),                       # equal counts as reached
])
def test_steps_to_reach(rewards: list[float], threshold: float, window: int, expected: float) -> None:
    assert peer.steps_to_reach(rewards, threshold, window=window) == expected


def test_time_to_reach_is_the_end_of_the_step_that_reaches() -> None:
    run = peer.SideRun("trl", 0, [0.0, 0.4, 0.8, 0.8], [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 6.5, 11.0], [6.0] * 4,
                       setup_s=2.0, wall_s=20.0)
    assert peer.time_to_reach(run, 0.6, window=2) == 6.5  # mean(0.4, 0.8) = 0.6 at step 3
    assert peer.time_to_reach(run, 0.9, window=2) == math.inf


def test_summary_row_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    run = _run("rlplat", [0.0, 0.6, 0.6, 1.0], step_s=0.5)
    row = peer.summary_row(run, [0.5, 0.9], window=2, samples_per_step=128)
    # side, seed, steps, s/step, samples/s, tokens/s, steps to 0.5/0.9, s to 0.5/0.9, last-2 mean, setup, wall
    assert row == ["rlplat", 0, 4, 0.5, 256.0, 200.0, 3, math.inf, 1.5, math.inf, 0.8, 5.0, 12.0]
    headers = peer.table_headers([0.5, 0.9], window=2)
    assert len(headers) == len(row)
    print_table(headers, [row])
    lines = capsys.readouterr().out.splitlines()
    assert "steps to 0.5" in lines[0] and "s to 0.9" in lines[0] and "reward last 2" in lines[0]
    assert lines[2].split() == ["rlplat", "0", "4", "0.5", "256", "200", "3", "inf", "1.5", "inf", "0.8", "5", "12"]


def test_headline_ratio_is_median_time_over_seeds() -> None:
    fast = [0.0, 1.0, 1.0, 1.0]  # window 2: reached at step 2
    runs = [_run("trl", fast, 1.0, seed=0), _run("trl", fast, 3.0, seed=1), _run("trl", fast, 2.0, seed=2),
            _run("rlplat", fast, 4.0, seed=0), _run("rlplat", [0.0] * 4, 1.0, seed=1),
            _run("rlplat", fast, 6.0, seed=2)]
    # TRL times 2, 6, 4 -> median 4; rlplat 8, inf, 12 -> median 12
    assert peer.headline_ratio(runs, 0.9, window=2) == 3.0
    never = [_run("trl", [0.0] * 4, 1.0), _run("rlplat", [0.0] * 4, 1.0)]
    assert math.isnan(peer.headline_ratio(never, 0.9, window=2))
    assert peer.headline_ratio([_run("trl", [0.0] * 4, 1.0), _run("rlplat", fast, 1.0)], 0.9, window=2) == 0.0


def test_step_clock_times_each_new_line(tmp_path: Path) -> None:
    path = tmp_path / "trained_groups.jsonl"
    clock = peer.StepClock(path, interval_s=0.005)
    start = time.perf_counter()
    path.write_text("{}\n")
    time.sleep(0.05)
    with open(path, "a") as f:
        f.write("{}\n{}\n")
    time.sleep(0.05)
    times = clock.stop()
    assert len(times) == 3 and start <= times[0] < times[1] == times[2]


def test_the_trl_driver_is_not_a_benchmark() -> None:
    names = {m.name for m in pkgutil.iter_modules(rlplat.bench.__path__)}
    assert "peer" in names and not any(n.startswith("peer_trl") or n.startswith("trl") for n in names)
    assert peer.TRL_SCRIPT.is_file() and not (peer.TRL_SCRIPT.parent / "__init__.py").exists()

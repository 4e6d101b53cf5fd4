"""`rlplat bench async`: phase medians from a run's metric history and the overlap bound, by hand."""

from __future__ import annotations

import importlib

import pytest

bench = importlib.import_module("rlplat.bench.async")  # `async` is a keyword: no plain import


def test_step_phases_are_medians_of_steps_after_the_first() -> None:
    history = {
        "time/rollout_s": [(1, 50.0), (2, 1.0), (3, 3.0), (4, 2.0)],
        "time/generate_s": [(1, 40.0), (2, 2.0), (3, 2.5), (4, 3.0)],
        "time/reward_s": [(1, 9.0), (2, 0.5), (3, 0.5), (4, 0.5)],
        "time/train_s": [(1, 20.0), (2, 1.0), (3, 1.2), (4, 1.1)],
        "time/weight_sync_s": [(1, 5.0), (2, 0.1), (3, 0.3), (4, 0.2)],
    }
    assert bench.step_phases(history) == pytest.approx(
        {"wait for batch": 2.0, "generate + reward": 3.0, "train": 1.1, "weight sync": 0.2})


def test_overlap_bound_by_hand() -> None:
    # rollout 2 s, learner 1.5 + 0.5 = 2 s: perfect overlap halves the step
    assert bench.overlap_bound({"generate + reward": 2.0, "train": 1.5, "weight sync": 0.5}) == pytest.approx(2.0)
    # rollout dominates: 4 s + 1 s sequential against 4 s overlapped
    assert bench.overlap_bound({"generate + reward": 4.0, "train": 0.8, "weight sync": 0.2}) == pytest.approx(1.25)

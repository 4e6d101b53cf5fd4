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


def _run(step_s: list[float], samples: int, reward: float) -> object:
    phases = dict.fromkeys(bench.PHASES, 1.0)
    return bench.RunSummary(step_s=step_s, first_step_s=9.0, samples_per_step=samples, reward_last10=reward,
                            max_staleness=0.0, phases_s=phases)


def test_samples_per_s_pools_the_steps_of_all_seeds() -> None:
    # 2 steps x 8 samples in 1 + 3 s, and 1 step x 8 samples in 4 s: 24 samples / 8 s (step 1 is left out).
    assert bench.samples_per_s([_run([1.0, 3.0], 8, 0.0), _run([4.0], 8, 0.0)]) == pytest.approx(3.0)


def test_reward_difference_is_welch_two_standard_errors_by_hand() -> None:
    sync = [0.30, 0.20, 0.25, 0.25]  # mean 0.25, sample variance 0.005 / 3
    lower = [0.20, 0.10, 0.15, 0.15]  # mean 0.15, same variance
    diff, two_se = bench.reward_difference(sync, lower)
    assert diff == pytest.approx(-0.10)
    assert two_se == pytest.approx(2 * (2 * (0.005 / 3) / 4) ** 0.5)  # 0.0577
    assert "outside noise" in bench._verdict(sync, lower)
    close = [0.28, 0.18, 0.23, 0.23]  # 0.02 lower: inside 2 SE
    assert "within noise" in bench._verdict(sync, close)
    assert bench._verdict(sync, [0.2]) == "(needs --seeds)"
    with pytest.raises(ValueError, match="two or more seeds"):
        bench.reward_difference([0.1], [0.2, 0.3])


def test_summarize_run_reads_steps_after_the_first_and_the_last_10_rewards() -> None:
    history = {"time/step_s": [(1, 5.0), (2, 1.0), (3, 2.0)],
               "rollout/reward_mean": [(i, float(i)) for i in range(1, 13)],  # last 10: 3..12, mean 7.5
               "async/batch_staleness_max": [(2, 1.0), (3, 0.0)]}
    r = bench.summarize_run(history, samples_per_step=4)
    assert (r.step_s, r.first_step_s, r.reward_last10, r.max_staleness) == ([1.0, 2.0], 5.0, 7.5, 1.0)

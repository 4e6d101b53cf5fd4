"""`rlplat bench data`'s pure helpers: rows/s, the step share, the warm-up median, fake responses, best-of timing
and the cold cache. Hand values, a fake clock; no tokenizer, model, Ray or vLLM."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from rlplat.bench import data


def test_rows_per_s_and_share_hand_values() -> None:
    assert data.rows_per_s(20_000, 4.0) == 5000.0
    assert data.data_share(0.0045, 0.225) == pytest.approx(0.02)
    assert data.data_share(0.0, 0.2) == 0.0


@pytest.mark.parametrize(("call", "says"), [
    (lambda: data.rows_per_s(10, 0.0), "> 0 s"),
    (lambda: data.data_share(0.001, 0.0), "--step-s"),
    (lambda: data.data_share(-0.001, 0.2), ">= 0"),
])
def test_bad_times_are_one_line_errors(call: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        call()  # type: ignore[operator]


def test_median_after_warmup_skips_the_first_steps() -> None:
    history = [(1, 5.0), (2, 3.0), (3, 0.2), (4, 0.6), (5, 0.3), (6, 0.4)]
    assert data.median_after_warmup(history, warmup_steps=2) == pytest.approx(0.35)
    assert data.median_after_warmup(history, warmup_steps=0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no steps after the 6 warm-up steps"):
        data.median_after_warmup(history, warmup_steps=6)


def test_random_responses_shape_ids_and_seed() -> None:
    out = data.random_responses(128, 6, [3, 5, 9], seed=1)
    assert len(out) == 128 and all(len(r) == 6 for r in out)
    assert {t for r in out for t in r} <= {3, 5, 9}
    assert out == data.random_responses(128, 6, [3, 5, 9], seed=1)
    assert out != data.random_responses(128, 6, [3, 5, 9], seed=2)
    with pytest.raises(ValueError, match="no token ids"):
        data.random_responses(1, 6, [], seed=0)


def test_best_seconds_is_the_minimum_over_repeats() -> None:
    ticks = iter([0.0, 3.0, 10.0, 11.5, 20.0, 22.0])  # calls of 3.0, 1.5 and 2.0 s
    calls = []
    best = data.best_seconds(lambda: calls.append(1), 3, clock=lambda: next(ticks))
    assert best == 1.5 and len(calls) == 3
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        data.best_seconds(lambda: None, 0)


def test_with_cold_cache_gives_every_call_a_new_cache_dir(tmp_path: Path) -> None:
    seen: list[Path] = []
    counter = itertools.count()
    load = data.with_cold_cache(lambda *, cache_dir: seen.append(cache_dir), lambda: tmp_path / str(next(counter)))
    load()
    load()
    assert seen == [tmp_path / "0", tmp_path / "1"]


def test_default_step_time_and_goal_are_the_documented_ones() -> None:
    # DEMO_STEP_S is BENCHMARKS.md's demo median (Per-phase step time); the goal is < 2% of a step.
    assert data.DEMO_STEP_S == 0.225 and data.GOAL == 0.02


def test_doctests() -> None:
    import doctest

    result = doctest.testmod(data)
    assert result.failed == 0 and result.attempted >= 4

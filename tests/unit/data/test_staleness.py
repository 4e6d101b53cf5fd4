"""Hand cases for the pure staleness rules (no Ray, no TransferQueue)."""

from __future__ import annotations

import pytest

from rlplat.data.staleness import is_stale, may_produce, staleness


@pytest.mark.parametrize(
    ("oldest", "learner", "k", "expected"),
    [
        (5, 5, 0, False),  # on-policy
        (4, 5, 0, True),  # k = 0: one version behind is already stale
        (4, 5, 1, False),
        (3, 5, 1, True),
        (3, 5, 2, False),  # exactly k behind is allowed
        (0, 5, 4, True),
        (0, 0, 0, False),
        (0, 100, 100, False),
    ],
)
def test_is_stale_hand_cases(oldest: int, learner: int, k: int, expected: bool) -> None:
    assert is_stale(oldest, learner, k) is expected


@pytest.mark.parametrize(
    ("producer", "learner", "k", "expected"),
    [
        (5, 5, 0, True),
        (4, 5, 0, False),  # synchronous: must sync weights before generating again
        (4, 5, 1, True),
        (3, 5, 1, False),
        (3, 5, 2, True),
        (0, 3, 3, True),
        (0, 4, 3, False),
    ],
)
def test_may_produce_hand_cases(producer: int, learner: int, k: int, expected: bool) -> None:
    assert may_produce(producer, learner, k) is expected


def test_may_produce_is_not_stale_at_generation_time() -> None:
    for k in range(4):
        for learner in range(6):
            for producer in range(learner + 1):
                assert may_produce(producer, learner, k) is (not is_stale(producer, learner, k))


def test_staleness_counts_versions_behind() -> None:
    assert staleness(3, 5) == 2
    assert staleness(5, 5) == 0


def test_negative_max_staleness_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_staleness"):
        is_stale(1, 1, -1)
    with pytest.raises(ValueError, match="max_staleness"):
        may_produce(1, 1, -1)


def test_version_newer_than_learner_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="newer than learner"):
        is_stale(6, 5, 0)
    with pytest.raises(ValueError, match="newer than learner"):
        may_produce(6, 5, 0)

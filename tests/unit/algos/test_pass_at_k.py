"""pass@k and mean@k against hand-computed values and the math.comb loop of Chen et al."""

from __future__ import annotations

import math

import pytest
import torch

from rlplat.algos.pass_at_k import mean_at_k, pass_at_k, pass_at_k_from_rewards


def _comb_loop(n: int, c: int, k: int) -> float:
    """The definition, one prompt at a time: 1 - C(n - c, k) / C(n, k)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_hand_values() -> None:
    # n=4, k=2: C(4,2)=6.  c=0 -> 0;  c=1 -> 1 - C(3,2)/6 = 1 - 3/6 = 1/2;  c=2 -> 1 - C(2,2)/6 = 5/6;
    # c=3 -> n-c=1 < k -> 1;  c=4 -> 1.
    got = pass_at_k(torch.tensor([0, 1, 2, 3, 4]), 4, 2)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 5 / 6, 1.0, 1.0]))


def test_pass_at_1_is_the_fraction_correct() -> None:
    got = pass_at_k(torch.tensor([0, 3, 8]), 8, 1)
    torch.testing.assert_close(got, torch.tensor([0.0, 3 / 8, 1.0]))


def test_pass_at_n_is_any_correct() -> None:
    got = pass_at_k(torch.tensor([0, 1, 5]), 5, 5)
    torch.testing.assert_close(got, torch.tensor([0.0, 1.0, 1.0]))


def test_per_prompt_sample_counts() -> None:
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10 = 0.9;  n=3, c=1, k=3 -> 1.
    got = pass_at_k(torch.tensor([2, 1]), torch.tensor([5, 3]), 3)
    torch.testing.assert_close(got, torch.tensor([0.9, 1.0]))


def test_vectorized_matches_comb_loop_for_large_n() -> None:
    n, k = 200, 10
    c = torch.arange(0, n + 1)
    expected = torch.tensor([_comb_loop(n, int(ci), k) for ci in c], dtype=torch.float32)
    torch.testing.assert_close(pass_at_k(c, n, k), expected, atol=1e-6, rtol=1e-5)


def test_from_rewards_thresholds_each_sample() -> None:
    rewards = torch.tensor([[1.0, 0.1, 0.0, 0.0], [0.1, 0.1, 1.0, 1.0], [0.9, 0.9, 0.9, 0.9]])
    torch.testing.assert_close(pass_at_k_from_rewards(rewards, 2), torch.tensor([0.5, 5 / 6, 0.0]))
    torch.testing.assert_close(pass_at_k_from_rewards(rewards, 2, threshold=0.9), torch.tensor([0.5, 5 / 6, 1.0]))


def test_mean_at_k_is_the_mean_reward() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(mean_at_k(rewards, 4), torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(mean_at_k(rewards, 2), torch.tensor([0.5, 0.25]))


@pytest.mark.parametrize(("correct", "n", "k", "match"), [
    (torch.tensor([1]), 4, 0, "k >= 1"),
    (torch.tensor([1]), 2, 3, "at least k samples"),
    (torch.tensor([5]), 4, 2, r"\[0, num_samples\]"),
    (torch.tensor([-1]), 4, 2, r"\[0, num_samples\]"),
    (torch.tensor([[1]]), 4, 2, r"must be \[P\]"),
])
def test_bad_arguments(correct: torch.Tensor, n: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pass_at_k(correct, n, k)


def test_mean_at_k_needs_k_samples() -> None:
    with pytest.raises(ValueError, match="1 <= k <= n"):
        mean_at_k(torch.zeros(2, 3), 4)


def test_doctests() -> None:
    import doctest

    import rlplat.algos.pass_at_k as module

    assert doctest.testmod(module).failed == 0

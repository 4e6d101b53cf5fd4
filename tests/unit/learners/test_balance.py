"""Token-balanced rank splits by hand, and the distributed loss: R ranks' losses with global denominators add up to
the single-rank loss for every aggregation mode."""

from __future__ import annotations

import doctest

import pytest
import torch

from rlplat.algos.losses import AGG_MODES, aggregate, aggregate_count
from rlplat.learners import balance
from rlplat.learners.balance import (
    balance_groups,
    balance_samples,
    global_agg_count,
    local_agg_count,
    rank_loads,
)


def test_doctests() -> None:
    assert doctest.testmod(balance).failed == 0


def test_samples_longest_first_into_least_loaded_rank() -> None:
    # by length (ties: lower index): 9 -> r0; 8 -> r1; 7 -> r2; 3 -> r2 (10); sample 0's 2 -> r1 (10);
    # sample 6's 2 -> r0 (9 < 10, 10) = 11; 1 -> r1 (10 = 10, same unit count: lower rank) = 11
    lengths = [2, 9, 3, 8, 1, 7, 2]
    split = balance_samples(lengths, 3)
    assert split == [[1, 6], [0, 3, 4], [2, 5]]
    assert rank_loads(lengths, split) == [11, 11, 10]
    assert sorted(i for part in split for i in part) == list(range(len(lengths)))


def test_tokens_not_sample_counts_decide() -> None:
    # one long sample balances three short ones: a sample-count split would put two and two
    assert balance_samples([30, 10, 10, 10], 2) == [[0], [1, 2, 3]]


def test_fewer_samples_than_ranks_leaves_empty_ranks() -> None:
    assert balance_samples([4], 3) == [[0], [], []]
    assert balance_samples([], 2) == [[], []]


def test_groups_stay_whole() -> None:
    lengths = [5, 5, 1, 1, 4, 4, 3, 3]
    gids = [0, 0, 1, 1, 2, 2, 3, 3]  # group tokens 10, 2, 8, 6
    split = balance_groups(lengths, gids, 2)
    # 10 -> r0; 8 -> r1; 6 -> r1 (8 < 10) = 14; 2 -> r0 (10 < 14) = 12
    assert split == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert rank_loads(lengths, split) == [12, 14]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_ranks"):
        balance_samples([1], 0)
    with pytest.raises(ValueError, match="group ids"):
        balance_groups([1, 2], [0], 2)
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        global_agg_count("mean", [1.0])
    with pytest.raises(ValueError, match="group_ids"):
        local_agg_count("prompt-level", [torch.ones(1, 2)])


def test_global_count_by_hand() -> None:
    r0 = [torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])]  # 2 tokens, 1 live sequence, 2 rows
    r1 = [torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[1.0, 0.0]])]  # 4 tokens, 2 live sequences, 2 rows
    g0, g1 = [torch.tensor([5, 6])], [torch.tensor([7]), torch.tensor([7])]
    expected = {"token-mean": 6.0, "seq-mean-token-mean": 3.0, "seq-mean-token-sum": 3.0,
                "seq-mean-token-sum-norm": 4.0, "prompt-level": 2.0}  # prompt 6 has no live token
    for mode, want in expected.items():
        counts = [local_agg_count(mode, r0, g0), local_agg_count(mode, r1, g1)]
        assert global_agg_count(mode, counts) == want, mode
        if mode != "prompt-level":
            assert global_agg_count(mode, counts) == aggregate_count(mode, r0 + r1)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(8, 6, generator=g)
    mask = (torch.rand(8, 6, generator=g) > 0.3).float()
    mask[3] = 0.0  # an empty sequence: it must leave the seq-mean averages on every rank
    group_ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return values, mask, group_ids


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("num_ranks", [1, 2, 3])
def test_rank_losses_sum_to_single_rank_loss(mode: str, num_ranks: int) -> None:
    values, mask, gids = _batch()
    norm_len = values.shape[1]
    single = aggregate(values, mask, mode, norm_len=norm_len, group_ids=gids)
    split = balance_groups(mask.sum(1).long().tolist(), gids.tolist(), num_ranks)
    counts = [local_agg_count(mode, [mask[p]], [gids[p]]) for p in split]
    count = global_agg_count(mode, counts)
    # each rank pads to its own length: trimming trailing columns must not change anything but norm_len's default
    parts = [aggregate(values[p], mask[p], mode, norm_len=norm_len, group_ids=gids[p], global_count=count)
             for p in split if p]
    torch.testing.assert_close(sum(parts), single, rtol=1e-6, atol=1e-6)


def test_samples_split_with_micro_batches_per_rank() -> None:
    values, mask, _ = _batch()
    single = aggregate(values, mask, "token-mean")
    split = balance_samples([3, 1, 4, 1, 5, 9, 2, 6], 2)
    micro = [[p[: len(p) // 2], p[len(p) // 2:]] for p in split]  # two micro-batches on each rank
    count = global_agg_count("token-mean", [local_agg_count("token-mean", [mask[m] for m in r]) for r in micro])
    total = sum(aggregate(values[m], mask[m], "token-mean", global_count=count) for r in micro for m in r)
    torch.testing.assert_close(total, single)

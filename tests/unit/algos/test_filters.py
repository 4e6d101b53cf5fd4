"""Tests for rlplat.algos.filters."""

from __future__ import annotations

import pytest
import torch

from rlplat.algos.filters import nonzero_variance_groups


def test_nonzero_variance_groups_hand_computed() -> None:
    # group 0: (1, 1) constant -> drop; group 1: (0, 1) -> keep; group 2: (0.5, 0.5) -> drop;
    # group 3: singleton (3) -> trivially constant -> drop
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 3.0])
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    keep = nonzero_variance_groups(rewards, ids)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, True, True, False, False, False]


def test_nonzero_variance_groups_interleaved_ids() -> None:
    # id 5: (0, 0, 0) drop; id 2: (1, 0) keep
    keep = nonzero_variance_groups(torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]), torch.tensor([5, 2, 5, 2, 5]))
    assert keep.tolist() == [False, True, False, True, False]


def test_nonzero_variance_groups_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (50,), generator=g).float()
    ids = torch.randint(0, 10, (50,), generator=g)
    expected = [bool(rewards[ids == ids[i]].unique().numel() > 1) for i in range(50)]
    assert nonzero_variance_groups(rewards, ids).tolist() == expected


def test_nonzero_variance_groups_edge_and_bad_inputs() -> None:
    assert nonzero_variance_groups(torch.zeros(0), torch.zeros(0, dtype=torch.int64)).shape == (0,)
    with pytest.raises(ValueError):
        nonzero_variance_groups(torch.zeros(3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        nonzero_variance_groups(torch.zeros(2), torch.zeros(2))  # float ids

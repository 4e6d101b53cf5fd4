"""Sample filters on outcome rewards."""

from __future__ import annotations

import torch
from torch import Tensor

from rlplat.algos._common import as_float_rewards, check_group_ids, group_index


def nonzero_variance_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Keep mask of samples whose group has non-identical rewards  keep_i = max_g(r) > min_g(r)
    [ScaleRL zero-variance filtering, arXiv:2510.13786; DAPO dynamic sampling, arXiv:2503.14476].

    A group whose G rewards are all equal has zero group-relative advantage for every sample, so it carries no
    learning signal; ScaleRL drops such prompts from the loss without refilling the batch. A group of size 1 is
    trivially constant and is dropped too. Typical use: ``mask = mask * keep[:, None]`` (then "seq-mean-*" and
    "prompt-level" aggregation no longer count those rows).

    rewards: [N] float32, group_ids: [N] int64. Returns: [N] bool (True = keep).
    Raises ValueError for mismatched shapes or non-integer group_ids.
    """
    r = as_float_rewards(rewards)
    check_group_ids(group_ids, r.shape[0])
    if r.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=r.device)
    inv, num_groups = group_index(group_ids)
    init_max = torch.full((num_groups,), float("-inf"), dtype=r.dtype, device=r.device)
    init_min = torch.full((num_groups,), float("inf"), dtype=r.dtype, device=r.device)
    group_max = init_max.scatter_reduce(0, inv, r, reduce="amax")
    group_min = init_min.scatter_reduce(0, inv, r, reduce="amin")
    return (group_max > group_min)[inv]

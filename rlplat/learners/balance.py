"""Splitting one step's samples over R learner ranks by token count, and the loss denominators that make the
ranks' losses add up to the single-rank loss. Pure functions: no torch.distributed here (the all-reduce of the
local counts lives in `rlplat.learners.fsdp.all_reduce_sum`).

Why tokens: a rank's forward/backward time grows with the tokens it holds, not with its number of samples, and
the FSDP collectives make every rank wait for the slowest one.

Why whole groups: the "prompt-level" aggregation divides each prompt's summed loss by that prompt's tokens, which
a rank can compute only when it holds every sample of the prompt; GRPO advantages are computed before the split
(by the driver), so nothing else needs whole groups. `balance_groups` keeps groups whole; `balance_samples` splits
single samples and balances better when groups are few and long.

The distributed loss: rank r holds the micro-batches with masks M_r. Each rank calls
`aggregate(values, mask, mode, norm_len=N, global_count=C)` with the SAME C = `global_agg_count(mode, [local
counts of every rank])` and the same N (the global padded length, or the configured constant), and the per-rank
losses, summed over ranks, equal the loss of the whole batch on one rank. Gradients must then be SUMMED over
ranks, not averaged (FSDP2 averages by default; `fsdp.shard_model` sets a divide factor of 1).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from torch import Tensor

from rlplat.types import TrainBatch

GLOBAL_COUNT_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
                      "prompt-level")


def _longest_first(weights: Sequence[int], num_ranks: int) -> list[list[int]]:
    """Greedy LPT: units by weight, longest first, each into the least-loaded rank (ties: fewer units, lower rank)."""
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {list(weights)}")
    heap = [(0, 0, r) for r in range(num_ranks)]  # (tokens, units, rank)
    out: list[list[int]] = [[] for _ in range(num_ranks)]
    for u in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, count, r = heapq.heappop(heap)
        out[r].append(u)
        heapq.heappush(heap, (load + weights[u], count + 1, r))
    return out


def balance_samples(lengths: Sequence[int], num_ranks: int) -> list[list[int]]:
    """Sample indices per rank so that every rank holds about the same number of tokens (greedy longest-first into
    the least-loaded rank, which is within 4/3 of the best split [Graham 1969]).

    lengths: tokens per sample (prompt + response: what the forward pays for). Returns `num_ranks` lists of
    indices, each ascending; a rank gets an empty list when there are fewer samples than ranks (it must still
    join the collectives: run a zero-weight forward/backward).

    >>> balance_samples([5, 1, 4, 2, 3], 2)  # 5 | 4 | 4+3 | 5+2 | 5+2+1 (tie: lower rank)
    [[0, 1, 3], [2, 4]]
    """
    return [sorted(u) for u in _longest_first(lengths, num_ranks)]


def balance_groups(lengths: Sequence[int], group_ids: Sequence[int], num_ranks: int) -> list[list[int]]:
    """Like `balance_samples`, but a group's samples (same group id: one prompt's samples) go to one rank together.

    lengths, group_ids: one entry per sample. Returns sample indices per rank, ascending.

    >>> balance_groups([3, 3, 1, 1, 2, 2], [7, 7, 8, 8, 9, 9], 2)
    [[0, 1], [2, 3, 4, 5]]
    """
    if len(lengths) != len(group_ids):
        raise ValueError(f"{len(lengths)} lengths but {len(group_ids)} group ids")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    groups = list(members.values())
    per_rank = _longest_first([sum(lengths[i] for i in g) for g in groups], num_ranks)
    return [sorted(i for u in units for i in groups[u]) for units in per_rank]


def rank_loads(lengths: Sequence[int], split: Sequence[Sequence[int]]) -> list[int]:
    """Tokens per rank of a split (for the balance metric max/mean)."""
    return [sum(lengths[i] for i in part) for part in split]


def local_agg_count(mode: str, masks: Sequence[Tensor], group_ids: Sequence[Tensor] | None = None) -> float:
    """This rank's share of the outer denominator of `aggregate(..., mode)`, unclamped (0 for an empty rank):

      "token-mean":              sum_bt mask_bt            over this rank's micro-batches
      "seq-mean-token-mean",
      "seq-mean-token-sum":      sequences with at least one unmasked token
      "seq-mean-token-sum-norm": rows (every sequence, empty or not)
      "prompt-level":            distinct group ids with at least one unmasked token (needs `group_ids`, and
                                 whole groups per rank and per micro-batch: see the module docstring)

    masks: one [B_i, T_i] float32 0/1 tensor per micro-batch. group_ids: one [B_i] int64 tensor per micro-batch.
    Raises ValueError for an unknown mode or "prompt-level" without group ids.
    """
    if mode == "token-mean":
        return float(sum(float(m.sum()) for m in masks))
    if mode == "seq-mean-token-sum-norm":
        return float(sum(m.shape[0] for m in masks))
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return float(sum(int((m.sum(1) > 0).sum()) for m in masks))
    if mode == "prompt-level":
        if group_ids is None or len(group_ids) != len(masks):
            raise ValueError("prompt-level needs one group_ids tensor per micro-batch")
        live = {int(g) for m, gid in zip(masks, group_ids, strict=True) for g in gid[m.sum(1) > 0].tolist()}
        return float(len(live))
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {GLOBAL_COUNT_MODES}")


def global_agg_count(mode: str, local_counts: Sequence[float]) -> float:
    """The `global_count` every rank passes to `aggregate`: the sum of the ranks' `local_agg_count`, clamped to 1
    as `aggregate` clamps an empty denominator (rows for seq-mean-token-sum-norm are not clamped, as in
    `aggregate_count`). Equals `aggregate_count(mode, all masks)` for the modes that function knows.

    >>> global_agg_count("token-mean", [7.0, 5.0])
    12.0
    >>> global_agg_count("seq-mean-token-sum", [0.0, 0.0])
    1.0
    """
    if mode not in GLOBAL_COUNT_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {GLOBAL_COUNT_MODES}")
    total = float(sum(local_counts))
    return total if mode == "seq-mean-token-sum-norm" else max(1.0, total)


def split_batch(batch: TrainBatch, num_ranks: int) -> tuple[list[TrainBatch], list[int]]:
    """A step's TrainBatch as one part per learner rank, balanced by tokens (prompt + response: what a forward pays
    for) with `balance_samples`, samples kept in batch order within a part; and the tokens per part.

    A part may be empty (fewer samples than ranks): that rank runs zero-weight passes. Advantages travel with their
    samples (None stays None: the critic computes them).
    """
    lengths = [len(s.prompt_token_ids) + s.num_response_tokens for s in batch.samples]
    split = balance_samples(lengths, num_ranks)
    adv = batch.advantages
    parts = [TrainBatch(samples=[batch.samples[i] for i in idx],
                        advantages=None if adv is None else [adv[i] for i in idx]) for idx in split]
    return parts, rank_loads(lengths, split)

"""Turning a TrainBatch into mini-batches (one optimizer update each) and micro-batches (one forward/backward each).

Mini-batches hold whole groups (a prompt's samples never straddle two updates). Micro-batches are built by
sorted-length bucketing under a token budget: the samples of a mini-batch are sorted by total length (prompt +
response) and cut greedily into buckets whose rows x padded length stays within `micro_batch_size_in_tokens`.
Neighbours in sorted order have similar lengths, so right padding wastes little; this is bucketing, not
sequence packing (no varlen attention), which keeps every row a plain causal sequence.

Tensors are aligned with the *predicting* position: column t of the [b, L-1] fields belongs to the token
input_ids[:, t+1] (response token j of a sample with P prompt tokens sits at input P + j, predicted at P + j - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlplat.types import Sample


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """Right-padded rows of one forward/backward.

    input_ids: [b, L] int64. resp_mask: [b, L-1] f32 loss mask (1 on model-generated response tokens).
    adv: [b, L-1] f32 sequence advantage broadcast over the response (0 when the learner computes advantages).
    logp_behaviour: [b, L-1] f32 log-probs of the policy that sampled each token (stored at generation).
    versions: [b, L-1] int64 policy version that generated each response token (-1 outside responses).
    reward_tok: [b, L-1] f32 the sample's outcome reward on its last unmasked response token, 0 elsewhere.
    index: [b] int64 positions of these rows in the TrainBatch.
    """

    input_ids: Tensor
    resp_mask: Tensor
    adv: Tensor
    logp_behaviour: Tensor
    versions: Tensor
    reward_tok: Tensor
    index: Tensor

    @property
    def targets(self) -> Tensor:
        """[b, L-1] int64 the token predicted at each position."""
        return self.input_ids[:, 1:]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device: torch.device) -> MicroBatch:
        return MicroBatch(*(t.to(device, non_blocking=True) for t in (
            self.input_ids, self.resp_mask, self.adv, self.logp_behaviour, self.versions, self.reward_tok,
            self.index)))


def sample_length(s: Sample) -> int:
    return len(s.prompt_token_ids) + s.num_response_tokens


def split_minibatches(samples: list[Sample], num_minibatches: int) -> list[list[int]]:
    """Sample indices of `num_minibatches` mini-batches of whole groups, groups dealt round-robin in batch order.

    Dealing in batch order spreads fresh and replayed groups (the controller appends replay after the fresh
    groups) evenly over the mini-batches. With fewer groups than mini-batches, the empty ones get every group.
    """
    group_order: list[int] = []
    members: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        if s.group_id not in members:
            group_order.append(s.group_id)
            members[s.group_id] = []
        members[s.group_id].append(i)
    out: list[list[int]] = [[] for _ in range(num_minibatches)]
    for k, gid in enumerate(group_order):
        out[k % num_minibatches].extend(members[gid])
    everything = list(range(len(samples)))
    return [m if m else everything for m in out]


def make_micro_batches(
    samples: list[Sample], adv: list[float] | None, token_budget: int, index: list[int] | None = None
) -> list[MicroBatch]:
    """Sorted-length bucketing of `samples` into micro-batches of at most `token_budget` padded tokens.

    A single sample longer than the budget gets a micro-batch of its own. `index` (default 0..n-1) is recorded in
    each MicroBatch so rows can be mapped back to the batch; `adv` is one advantage per sample or None.
    """
    index = list(range(len(samples))) if index is None else index
    order = sorted(range(len(samples)), key=lambda i: sample_length(samples[i]))
    chunks: list[list[int]] = []
    for i in order:
        length = sample_length(samples[i])
        if chunks and (len(chunks[-1]) + 1) * length <= token_budget:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return [_collate([samples[i] for i in c], None if adv is None else [adv[i] for i in c], [index[i] for i in c])
            for c in chunks]


def _collate(samples: list[Sample], adv: list[float] | None, index: list[int]) -> MicroBatch:
    length = max(sample_length(s) for s in samples)
    b = len(samples)
    ids = torch.zeros(b, length, dtype=torch.long)
    mask = torch.zeros(b, length - 1)
    adv_t = torch.zeros(b, length - 1)
    lpb = torch.zeros(b, length - 1)
    versions = torch.full((b, length - 1), -1, dtype=torch.long)
    reward_tok = torch.zeros(b, length - 1)
    for r, s in enumerate(samples):
        p, n = len(s.prompt_token_ids), s.num_response_tokens
        ids[r, : p + n] = torch.tensor(s.prompt_token_ids + s.response_token_ids)
        span = slice(p - 1, p - 1 + n)
        mask[r, span] = torch.tensor(s.loss_mask, dtype=torch.float32)
        lpb[r, span] = torch.tensor(s.logp_behaviour, dtype=torch.float32)
        versions[r, span] = torch.tensor(s.policy_versions, dtype=torch.long)
        if adv is not None:
            adv_t[r, span] = adv[r]
        trained = [j for j, m in enumerate(s.loss_mask) if m]
        if trained and s.reward is not None:
            reward_tok[r, p - 1 + trained[-1]] = s.reward
    return MicroBatch(ids, mask, adv_t, lpb, versions, reward_tok, torch.tensor(index))


def blank_micro_batch(length: int = 2) -> MicroBatch:
    """One row of `length` pad tokens with every mask, advantage and reward 0: a zero-weight forward/backward.

    FSDP ranks must run the same number of passes (each is a chain of collectives); a rank with fewer micro-batches
    (or none) runs blanks for the rest, which add exactly 0 to every loss, count and summed metric."""
    zeros = torch.zeros(1, length - 1)
    return MicroBatch(torch.zeros(1, length, dtype=torch.long), zeros, zeros.clone(), zeros.clone(),
                      torch.full((1, length - 1), -1, dtype=torch.long), zeros.clone(), torch.tensor([-1]))

"""Mini-batches of whole groups and token-budget micro-batches (sorted-length bucketing), with hand-built samples."""

from __future__ import annotations

import torch

from rlplat.learners.microbatch import make_micro_batches, split_minibatches
from rlplat.types import FinishReason, Sample


def _sample(group: int, index: int, prompt_len: int, resp_len: int, *, version: int = 0) -> Sample:
    s = Sample(group_id=group, sample_index=index, prompt_id=group, prompt_token_ids=list(range(2, 2 + prompt_len)))
    s.extend(list(range(10, 10 + resp_len)), [-0.5] * resp_len, version, FinishReason.STOP)
    s.reward = 1.0
    return s


def test_fields_are_aligned_with_the_predicting_position() -> None:
    s = Sample(group_id=0, sample_index=0, prompt_id=0, prompt_token_ids=[3, 4, 5])
    s.extend([6, 7], [-1.0, -2.0], 4, FinishReason.PENDING)
    s.response_token_ids.append(8)  # an environment token: loss mask 0
    s.logp_behaviour.append(0.0)
    s.policy_versions.append(4)
    s.loss_mask.append(0)
    s.extend([1], [-3.0], 5, FinishReason.STOP)
    s.reward = 0.5
    (mb,) = make_micro_batches([s], [2.0], token_budget=100)
    assert mb.input_ids.tolist() == [[3, 4, 5, 6, 7, 8, 1]]
    assert mb.targets.tolist() == [[4, 5, 6, 7, 8, 1]]
    assert mb.resp_mask.tolist() == [[0, 0, 1, 1, 0, 1]]
    assert mb.logp_behaviour.tolist() == [[0, 0, -1, -2, 0, -3]]
    assert mb.versions.tolist() == [[-1, -1, 4, 4, 4, 5]]
    assert mb.adv.tolist() == [[0, 0, 2, 2, 2, 2]]
    assert mb.reward_tok.tolist() == [[0, 0, 0, 0, 0, 0.5]]  # on the last trained response token


def test_bucketing_sorts_by_length_and_respects_the_budget() -> None:
    lengths = [(3, 9), (3, 1), (3, 4), (3, 2), (3, 8), (3, 3)]
    samples = [_sample(i, 0, p, r) for i, (p, r) in enumerate(lengths)]
    micro = make_micro_batches(samples, None, token_budget=16)
    seen = sorted(i for mb in micro for i in mb.index.tolist())
    assert seen == list(range(len(samples)))
    for mb in micro:
        assert mb.input_ids.numel() <= 16 or mb.input_ids.shape[0] == 1
    # Sorted totals 4, 5 | 6, 7 | 11 | 12: padding stays inside buckets of similar lengths.
    assert [mb.index.tolist() for mb in micro] == [[1, 3], [5, 2], [4], [0]]
    assert torch.equal(micro[0].adv, torch.zeros_like(micro[0].adv))


def test_one_sample_longer_than_the_budget_gets_its_own_micro_batch() -> None:
    micro = make_micro_batches([_sample(0, 0, 5, 20), _sample(1, 0, 5, 20)], None, token_budget=8)
    assert [mb.input_ids.shape for mb in micro] == [torch.Size([1, 25])] * 2


def test_minibatches_hold_whole_groups_dealt_round_robin() -> None:
    samples = [_sample(g, i, 3, 2) for g in (7, 8, 9) for i in range(2)]
    assert split_minibatches(samples, 2) == [[0, 1, 4, 5], [2, 3]]
    assert split_minibatches(samples, 1) == [list(range(6))]
    # More updates than groups: an empty mini-batch trains on everything rather than on nothing.
    assert split_minibatches(samples, 4)[3] == list(range(6))

"""The Group <-> TransferQueue row encoding of the store, without Ray (the TensorDict never leaves the process)."""

from __future__ import annotations

import pytest
from transfer_queue.metadata import BatchMeta

from rlplat.data.store import _check_groups, _decode, _encode, _Entry
from rlplat.types import FinishReason, Group, Sample


def _sample(group_id: int, index: int, tokens: list[int], versions: list[int], *, reward: float | None) -> Sample:
    return Sample(group_id=group_id, sample_index=index, prompt_id=7, prompt_token_ids=[5, 6, 7], answer="42",
                  response_token_ids=tokens, logp_behaviour=[-0.1 * (t + 1) for t in range(len(tokens))],
                  policy_versions=versions, loss_mask=[1, 0, 1, 1, 0][: len(tokens)],
                  finish_reason=FinishReason.STOP if tokens else FinishReason.LENGTH, reward=reward)


def _entries(groups: list[Group]) -> list[_Entry]:
    meta = BatchMeta(global_indexes=[], partition_ids=[])
    return [_Entry(seq=i, oldest_version=g.oldest_policy_version or 0, num_samples=len(g.samples),
                   prompt_id=g.prompt_id, meta=meta) for i, g in enumerate(groups)]


def test_encode_decode_is_exact() -> None:
    groups = [
        Group(group_id=1, prompt_id=7, samples=[_sample(1, 0, [3, 4, 5], [2, 2, 3], reward=None),
                                                 _sample(1, 1, [], [], reward=0.1),
                                                 _sample(1, 2, [9], [3], reward=-1.5)]),
        Group(group_id=2, prompt_id=8, samples=[_sample(2, 0, [1, 2, 3, 4, 5], [0, 0, 0, 1, 1], reward=1.0)]),
    ]
    data = _encode(groups)
    assert data.batch_size[0] == 4  # one TransferQueue row per sample
    assert _decode(data, _entries(groups)) == groups


def test_only_finished_groups_with_tokens_are_accepted() -> None:
    unfinished = _sample(3, 0, [1], [0], reward=None)
    unfinished.finish_reason = FinishReason.PENDING
    with pytest.raises(ValueError, match="unfinished"):
        _check_groups([Group(group_id=3, prompt_id=7, samples=[unfinished])])
    with pytest.raises(ValueError, match="no generated tokens"):
        _check_groups([Group(group_id=4, prompt_id=7, samples=[_sample(4, 0, [], [], reward=None)])])
    with pytest.raises(ValueError, match="no samples"):
        _check_groups([Group(group_id=5, prompt_id=7, samples=[])])
    with pytest.raises(ValueError, match="inside group"):
        _check_groups([Group(group_id=6, prompt_id=7, samples=[_sample(9, 0, [1], [0], reward=None)])])

"""The Sample <-> TransferQueue row codec of the store, without Ray (the TensorDict never leaves the process)."""

from __future__ import annotations

import dataclasses
from enum import Enum

import pytest
import torch
from transfer_queue.metadata import BatchMeta

from rlplat.data import codec
from rlplat.data.store import _check_groups, _Entry, _regroup
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
    data = codec.encode([s for g in groups for s in g.samples])
    assert data.batch_size[0] == 4  # one TransferQueue row per sample
    assert _regroup(codec.decode(data), _entries(groups)) == groups


def _every_field_set() -> Sample:
    """A Sample whose every field differs from its default (and from a zero), so that a field the codec forgot
    would come back different."""
    return Sample(group_id=3, sample_index=2, prompt_id=11, prompt_token_ids=[9, 8, 7], answer="the answer",
                  response_token_ids=[4, 5, 6, 7], logp_behaviour=[-0.125, -1e-9, -3.0, 0.0],
                  policy_versions=[2, 2, 3, 3], loss_mask=[1, 0, 1, 1], finish_reason=FinishReason.LENGTH,
                  reward=0.1 + 0.2)


def test_every_sample_field_is_a_column_and_round_trips() -> None:
    names = [f.name for f in dataclasses.fields(Sample)]
    assert [c.name for c in codec.COLUMNS] == names  # derived from the dataclass, in field order
    sample = _every_field_set()
    defaults = Sample(group_id=0, sample_index=0, prompt_id=0, prompt_token_ids=[])
    assert all(getattr(sample, n) != getattr(defaults, n) for n in names), "the test sample must set every field"
    data = codec.encode([sample, defaults])
    assert set(data.keys()) == set(codec.column_names()) == {*names, "reward_is_set"}
    back = codec.decode(data)
    assert back == [sample, defaults]
    assert back[0].reward == 0.1 + 0.2  # float64 columns: bit-exact
    assert isinstance(back[0].finish_reason, FinishReason)


def test_stored_dtypes() -> None:
    data = codec.encode([_every_field_set()])
    assert data.get("response_token_ids").dtype == torch.int64
    assert data.get("logp_behaviour").dtype == torch.float64
    assert data.get("loss_mask").dtype == torch.int8
    assert data.get("prompt_id").dtype == torch.int64
    assert data.get("reward_is_set").dtype == torch.bool


class _Colour(str, Enum):
    RED = "red"


@dataclasses.dataclass
class _Record:  # a record with one field of every supported kind: what a new Sample field would get
    ids: list[int]
    scores: list[float]
    count: int
    weight: float
    flag: bool
    maybe: float | None
    maybe_int: int | None
    note: str
    colour: _Colour


def test_columns_follow_the_annotations() -> None:
    kinds = {c.name: (c.kind, c.dtype) for c in codec.columns_for(_Record)}
    assert kinds == {
        "ids": ("jagged", torch.int64), "scores": ("jagged", torch.float64), "count": ("scalar", torch.int64),
        "weight": ("scalar", torch.float64), "flag": ("scalar", torch.bool), "maybe": ("optional", torch.float64),
        "maybe_int": ("optional", torch.int64), "note": ("text", None), "colour": ("enum", None),
    }
    assert codec.column_names(codec.columns_for(_Record))[5:8] == ["maybe", "maybe_is_set", "maybe_int"]


def test_a_field_the_codec_cannot_store_fails_at_once() -> None:
    @dataclasses.dataclass
    class Bad:
        extra: dict[str, int]

    with pytest.raises(TypeError, match="field 'extra'"):
        codec.columns_for(Bad)


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

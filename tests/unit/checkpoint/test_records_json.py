"""The driver state goes to JSON and back exactly: records from their dataclass fields, enums, tuples, RNG tensors."""

from __future__ import annotations

import dataclasses
import json
import random
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlplat import checkpoint as ck
from rlplat.config import RemixConfig
from rlplat.envs.agent_loop import Episode
from rlplat.envs.episode_april import EpisodeGroup
from rlplat.learners.replay import ReplayBuffer
from rlplat.types import FinishReason, Group, Sample
from tests.unit.checkpoint.helpers import save

RECORDS = sorted((c for c in ck._record_types(envs=True).values()
                  if dataclasses.is_dataclass(c) and c is not ck.DriverState), key=lambda c: c.__name__)


def _value(tp: Any, n: int) -> Any:
    """A value of type `tp` (from a record's annotations) that is no field's default."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:  # e.g. a chat message's values (agents.loop.Message): plain JSON data
        return {"text": f"any {n}", "ids": [n, n + 1], "nested": {"ok": True}}
    if origin in (types.UnionType, typing.Union):
        return _value(next(a for a in args if a is not type(None)), n)
    if origin is list:
        return [_value(args[0], n), _value(args[0], n + 1)]
    if origin is tuple:
        return tuple(_value(a, n + i) for i, a in enumerate(args) if a is not Ellipsis)
    if origin is dict:
        return {_value(args[0], n): _value(args[1], n)}
    if isinstance(tp, type) and issubclass(tp, Enum):
        return list(tp)[-1]
    if dataclasses.is_dataclass(tp):
        return _filled(tp, n)
    values = {bool: True, int: 100 + n, float: n + 0.25, str: f"{{observation}} {n}"}  # EpisodeFormat wants it
    if tp in values:
        return values[tp]
    raise TypeError(f"no test value for {tp}: teach _value this type (and check rlplat.checkpoint.to_json)")


def _filled(cls: type, n: int = 0) -> Any:
    """An instance of record `cls` with every field set to something other than its default."""
    hints = typing.get_type_hints(cls)
    values = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        value = _value(hints[f.name], n + i)
        if f.default is True:
            value = False
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        assert value != default, (cls.__name__, f.name)
        values[f.name] = value
    return cls(**values)


def _round_trip(obj: Any) -> Any:
    return ck.from_json(json.loads(json.dumps(ck.to_json(obj))))


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_every_record_round_trips_with_every_field_set(cls: type) -> None:
    record = _filled(cls)
    back = _round_trip(record)
    assert type(back) is cls and back == record


def test_enum_comes_back_as_the_enum_not_its_string() -> None:
    s = _filled(Sample)
    s.finish_reason = FinishReason.STOP
    back = _round_trip(s)
    assert back.finish_reason is FinishReason.STOP and back.is_finished


def test_plain_values_round_trip_exactly() -> None:
    value = {"tuple": (3, (1, 2), None), "ints": {1: "a", -2: "b"}, "dunder": {"__record__": 1}, "inf": float("inf"),
             "float": 0.1 + 0.2, "bool": [True, False], "bytes": torch.tensor([[1, 255]], dtype=torch.uint8),
             "bf16": torch.tensor([1.5, -3.0e-3], dtype=torch.bfloat16), "array": np.arange(4, dtype=np.uint32)}
    back = _round_trip(value)
    assert {k: back[k] for k in ("tuple", "ints", "dunder", "inf", "float", "bool")} == {
        k: value[k] for k in ("tuple", "ints", "dunder", "inf", "float", "bool")}
    for key in ("bytes", "bf16"):
        assert back[key].dtype == value[key].dtype and torch.equal(back[key], value[key])
    assert back["array"].dtype == np.uint32 and (back["array"] == value["array"]).all()


def test_driver_state_with_every_field_set_survives_a_checkpoint(tmp_path: Path) -> None:
    groups = [_filled(Group, n) for n in range(3)]
    replay = ReplayBuffer(RemixConfig(enabled=True, replay_versions=2), seed=3)
    replay.add(1, groups[:2])
    replay.add(2, groups[2:])
    replay.sample(3, 3, 4)  # move its generators on
    episodes = EpisodeGroup(group_id=4, seed=11, episodes=[_filled(Episode)])
    state = ck.DriverState(step=9, policy_version=8, run_id="run-1", cursor={"epoch": 1, "position": 5},
                           partial_buffer=[groups[0], episodes], store_groups=groups[1:], counters={"tokens": 12.5},
                           replay=replay.state(), rng=ck.rng_state(), probe_token_ids=[5, 9, 2])
    expected_draw = (random.random(), np.random.rand(), torch.rand(2).tolist())
    root = tmp_path / "checkpoints"
    tmp = ck.begin(root, 9)
    (tmp / "learner").mkdir()
    torch.save({"model": {}}, tmp / ck.LEARNER_STATE)
    back = ck.load_driver_state(ck.commit(root, tmp, state, "", keep_last=2))
    for f in ("step", "policy_version", "run_id", "cursor", "partial_buffer", "store_groups", "counters",
              "probe_token_ids"):
        assert getattr(back, f) == getattr(state, f), f
    assert type(back.partial_buffer[1]) is EpisodeGroup
    ck.set_rng_state(back.rng)
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == expected_draw
    resumed = ReplayBuffer(RemixConfig(enabled=True, replay_versions=2), seed=0)
    resumed.load_state(back.replay)
    assert resumed.sample(3, 3, 4) == replay.sample(3, 3, 4)


def test_a_value_that_is_not_data_cannot_be_saved() -> None:
    @dataclasses.dataclass
    class Foreign:
        x: int = 0

    with pytest.raises(TypeError, match=r"state.replay.x: .*Foreign is not a record type"):
        ck.to_json(ck.DriverState(step=1, policy_version=1, run_id="", cursor={}, replay={"x": Foreign()}))
    counters: dict[str, Any] = {"f": len}
    with pytest.raises(TypeError, match=r"state.counters.f: a builtin_function_or_method cannot go into a checkpoint"):
        ck.to_json(ck.DriverState(step=1, policy_version=1, run_id="", cursor={}, counters=counters))


@pytest.mark.parametrize(("data", "error"), [
    ({"__record__": "Popen", "fields": {"args": "touch x"}}, "'Popen' is not a record type"),
    ({"__record__": "Sample", "fields": {"group_id": 1, "evil": 2}}, "Sample has no field evil"),
    ({"__record__": "Sample", "fields": {"group_id": 1}}, "cannot rebuild Sample"),
    ({"__enum__": "FinishReason", "value": "exploded"}, "'exploded' is no FinishReason"),
    ({"__tensor__": "Tensor", "shape": [], "data": 1}, "unknown tensor dtype 'Tensor'"),
])
def test_unknown_or_malformed_records_are_refused(data: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ck.from_json({"x": data})


def test_written_checkpoint_is_plain_json(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoints", 2)
    data = json.loads((final / ck.DRIVER_STATE).read_text())
    assert data["__record__"] == "DriverState" and data["fields"]["cursor"] == {"epoch": 0, "position": 2}
    sample = data["fields"]["partial_buffer"][0]["fields"]["samples"][0]["fields"]
    assert sample["finish_reason"] == {"__enum__": "FinishReason", "value": "pending"}

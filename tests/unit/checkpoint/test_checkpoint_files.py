"""Atomic checkpoints: `latest` only ever names a complete one; the last K are kept; spec differences named."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rlplat import checkpoint as ck
from rlplat.types import FinishReason, Group, Sample


def _state(step: int) -> ck.DriverState:
    s = Sample(group_id=7, sample_index=0, prompt_id=3, prompt_token_ids=[1, 2])
    s.extend([5, 6], [-0.5, -0.25], [step, step + 1], FinishReason.PENDING)
    return ck.DriverState(step=step, policy_version=step, run_id="abc", cursor={"epoch": 0, "position": step},
                          partial_buffer=[Group(group_id=7, prompt_id=3, samples=[s])], rng=ck.rng_state())


def test_commit_then_latest_round_trips(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    tmp = ck.begin(root, 4)
    (tmp / "learner").mkdir()
    final = ck.commit(root, tmp, _state(4), "a: 1\n", keep_last=2)
    assert ck.latest(root) == final and final.name == "step_000004"
    loaded = ck.load_driver_state(final)
    assert loaded.cursor == {"epoch": 0, "position": 4}
    assert loaded.partial_buffer[0].samples[0].policy_versions == [4, 5]
    assert (final / "spec.yaml").read_text() == "a: 1\n"


def test_interrupted_write_is_ignored_and_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    first = ck.commit(root, ck.begin(root, 2), _state(2), "", keep_last=3)
    half = ck.begin(root, 4)  # a crash here: no driver.pkl, no rename, no marker
    assert ck.latest(root) == first
    ck.commit(root, ck.begin(root, 6), _state(6), "", keep_last=3)
    assert not half.exists()
    assert ck.latest(root).name == "step_000006"


def test_keeps_last_k(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        ck.commit(root, ck.begin(root, step), _state(step), "", keep_last=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000003", "step_000004"]


def test_rng_state_restores_streams() -> None:
    state = ck.rng_state()
    a = (random.random(), torch.rand(2).tolist())
    ck.set_rng_state(state)
    assert (random.random(), torch.rand(2).tolist()) == a


def test_spec_differences_name_keys_but_allow_resumable_ones() -> None:
    saved = "learner:\n  lr: 0.001\nexperiment:\n  num_steps: 10\nrollout:\n  max_new_tokens: 6\n"
    now = {"learner": {"lr": 0.002}, "experiment": {"num_steps": 20}, "rollout": {"max_new_tokens": 6}}
    assert ck.spec_differences(saved, now) == ["learner.lr"]

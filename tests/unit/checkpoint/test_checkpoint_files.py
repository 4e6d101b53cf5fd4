"""Atomic checkpoints: only complete ones count; pruning by step number, this run only, never the new one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from rlplat import checkpoint as ck
from tests.unit.checkpoint.helpers import save, steps


def test_commit_then_latest_round_trips(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    final = save(root, 4, keep_last=2)
    assert ck.latest(root) == final and final.name == "step_000004"
    assert (root / ck.LATEST).read_text() == "step_000004"
    loaded = ck.load_driver_state(final)
    assert loaded.cursor == {"epoch": 0, "position": 4}
    assert loaded.partial_buffer[0].samples[0].policy_versions == [4, 5]
    assert (final / "spec.yaml").read_text() == "a: 1\n"
    assert sorted(p.name for p in final.iterdir()) == ["driver.json", "learner", "manifest.json", "spec.yaml"]


def test_interrupted_write_is_ignored_and_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    first = save(root, 2)
    half = ck.begin(root, 4)  # a crash here: no driver state, no manifest, no rename
    assert ck.latest(root) == first and steps(root) == [2]
    save(root, 6)
    assert not half.exists()
    assert ck.latest(root).name == "step_000006"


def test_keeps_last_k(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        save(root, step, keep_last=2)
    assert steps(root) == [3, 4]


def test_prunes_by_step_number_not_by_name(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (999_998, 999_999, 1_000_000):  # by name "step_1000000" sorts before "step_999998"
        save(root, step, keep_last=2)
    assert steps(root) == [999_999, 1_000_000]
    assert ck.latest(root).name == "step_1000000"


def test_another_runs_higher_checkpoints_are_kept_and_never_cost_the_new_one(tmp_path: Path) -> None:
    """The issue's case: a fresh run over a longer run's checkpoints deleted each new one right after writing it."""
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        save(root, step, run_id="old", keep_last=3)
    for step in (1, 2, 3):
        new = save(root, step, run_id="new", keep_last=2)
        assert new.is_dir() and (root / ck.LATEST).read_text() == new.name
    assert steps(root) == [2, 3, 10, 20, 30]  # the old run's are not ours to prune


def test_resumed_run_drops_its_own_later_checkpoints(tmp_path: Path) -> None:
    """Resumed from step 2 (step 4 was damaged), the run writes step 3: its stale step 4 goes."""
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        save(root, step, keep_last=3)
    save(root, 3, keep_last=3)
    assert steps(root) == [2, 3]
    assert ck.latest(root).name == "step_000003"


def test_rewriting_the_same_step_replaces_it(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    save(root, 2, spec="a: 1\n")
    save(root, 2, spec="a: 2\n")
    assert steps(root) == [2] and (root / "step_000002/spec.yaml").read_text() == "a: 2\n"
    assert not list(root.glob(".tmp-*"))


def test_latest_never_names_a_deleted_folder(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    save(root, 1)
    newest = save(root, 2)
    shutil.rmtree(newest)  # whoever deleted it, the marker file is stale now
    assert ck.latest(root).name == "step_000001"
    assert ck.latest(tmp_path / "nothing") is None


def test_fresh_start_refuses_an_earlier_runs_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "out" / "checkpoints"
    ck.check_fresh_start(root)  # nothing there: fine
    for step in (5, 12):
        save(root, step)
    with pytest.raises(ValueError) as e:
        ck.check_fresh_start(root)
    assert str(e.value) == (f"output dir {tmp_path / 'out'} holds checkpoints up to step 12 of an earlier run; "
                            "pass --resume to continue it, --start-over to move them aside, or choose another "
                            "experiment.name / output dir")
    moved = ck.move_aside(root)
    assert moved is not None and moved.name.startswith("checkpoints.earlier-") and steps(moved) == [5, 12]
    ck.check_fresh_start(root)
    assert ck.move_aside(root) is None


def test_rng_state_restores_streams() -> None:
    state = ck.rng_state()
    a = (random.random(), torch.rand(2).tolist())
    ck.set_rng_state(state)
    assert (random.random(), torch.rand(2).tolist()) == a


def test_spec_differences_name_keys_but_allow_resumable_ones() -> None:
    saved = "learner:\n  lr: 0.001\nexperiment:\n  num_steps: 10\nrollout:\n  max_new_tokens: 6\n"
    now = {"learner": {"lr": 0.002}, "experiment": {"num_steps": 20}, "rollout": {"max_new_tokens": 6}}
    assert ck.spec_differences(saved, now) == ["learner.lr"]


def test_a_moved_checkpoint_still_resumes(tmp_path: Path) -> None:
    """Nothing inside a checkpoint names its folder, and the spec's output dir may differ on resume."""
    save(tmp_path / "a" / "checkpoints", 3)
    shutil.move(tmp_path / "a", tmp_path / "b")
    path, state, skipped = ck.find_resumable(tmp_path / "b" / "checkpoints")
    assert (path.name, state.step, skipped) == ("step_000003", 3, [])
    assert ck.spec_differences("experiment:\n  output_dir: /x/a\n", {"experiment": {"output_dir": "/y/b"}}) == []

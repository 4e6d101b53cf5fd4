"""Every checkpoint carries a manifest; resume verifies it and falls back to the newest intact checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from rlplat import checkpoint as ck
from rlplat.learners.state import read_learner_state
from tests.unit.checkpoint.helpers import save


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoints", 3, run_id="run-9")
    manifest = json.loads((final / ck.MANIFEST).read_text())
    assert (manifest["format"], manifest["step"], manifest["run_id"]) == (ck.FORMAT, 3, "run-9")
    assert sorted(manifest["files"]) == ["driver.json", "learner/learner_state.pt", "spec.yaml"]
    spec = manifest["files"]["spec.yaml"]
    assert spec["bytes"] == 5 and len(spec["sha256"]) == 64
    assert ck.verify(final) == manifest


def test_truncated_newest_checkpoint_falls_back_with_a_warning(tmp_path: Path, caplog) -> None:
    root = tmp_path / "checkpoints"
    good, bad = save(root, 2), save(root, 4)
    _truncate(bad / ck.LEARNER_STATE)
    with caplog.at_level(logging.WARNING, logger="rlplat"):
        path, state, skipped = ck.find_resumable(root)
    assert (path, state.step) == (good, 2)
    assert [p for p, _ in skipped] == [bad]
    assert "learner/learner_state.pt has" in skipped[0][1] and "truncated" in skipped[0][1]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "step_000004" in warning and "step_000002" in warning and "\n" not in warning


def test_changed_file_of_the_same_size_is_caught_by_its_checksum(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoints", 1)
    (final / "spec.yaml").write_text("a: 2\n")
    with pytest.raises(ValueError, match=r"spec.yaml differs from its manifest \(sha256\)"):
        ck.verify(final)


@pytest.mark.parametrize("remove", [ck.DRIVER_STATE, ck.MANIFEST])
def test_checkpoint_missing_driver_state_or_manifest_is_damaged_not_absent(tmp_path: Path, remove: str) -> None:
    root = tmp_path / "checkpoints"
    final = save(root, 5)
    (final / remove).unlink()
    with pytest.raises(ValueError) as e:
        ck.find_resumable(root)
    message = str(e.value)
    assert message.startswith(f"no intact checkpoint in {root}: checkpoint {final}: {remove} is missing")
    assert "\n" not in message


def test_empty_root_has_nothing_to_resume(tmp_path: Path) -> None:
    assert ck.find_resumable(tmp_path / "checkpoints") is None
    ck.begin(tmp_path / "checkpoints", 3)  # an interrupted first write is not a checkpoint
    assert ck.find_resumable(tmp_path / "checkpoints") is None


def test_truncated_driver_state_is_one_line_naming_the_file(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoints", 1)
    _truncate(final / ck.DRIVER_STATE)
    with pytest.raises(ValueError, match=r"driver.json has \d+ bytes, its manifest says \d+") as e:
        ck.load_driver_state(final)
    assert "\n" not in str(e.value)


def test_truncated_manifest_is_one_line(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoints", 1)
    _truncate(final / ck.MANIFEST)
    with pytest.raises(ValueError, match=r"manifest.json cannot be read \(JSONDecodeError; truncated\?\)"):
        ck.verify(final)


def test_manifest_cannot_point_outside_the_checkpoint(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoints", 1)
    manifest = json.loads((final / ck.MANIFEST).read_text())
    manifest["files"]["../../secret"] = {"bytes": 1, "sha256": "0" * 64}
    (final / ck.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a format-1 manifest"):
        ck.verify(final)


def test_truncated_learner_state_is_one_line_naming_the_file(tmp_path: Path) -> None:
    out = tmp_path / "learner"
    out.mkdir()
    torch.save({"model": {"w": torch.zeros(1000)}}, out / "learner_state.pt")
    _truncate(out / "learner_state.pt")
    with pytest.raises(ValueError, match=r"learner_state.pt cannot be read \(truncated or damaged\?\)") as e:
        read_learner_state(out)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="learner_state.pt is missing"):
        read_learner_state(tmp_path)

"""Loading a checkpoint never runs code: planted pickles are refused with one line and never executed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlplat import checkpoint as ck
from rlplat.config import ConfigError
from rlplat.evaluate import find_source
from rlplat.learners.state import read_learner_state
from tests.unit.checkpoint.helpers import legacy_checkpoint, plant_learner_state, save


def test_planted_driver_pkl_is_never_executed(tmp_path: Path) -> None:
    root, marker = tmp_path / "checkpoints", tmp_path / "pwned"
    path = legacy_checkpoint(root, marker)
    with pytest.raises(ValueError, match=r"predates the safe checkpoint format \(driver.pkl is a pickle") as e:
        ck.load_driver_state(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no intact checkpoint .* predates the safe checkpoint format"):
        ck.find_resumable(root)
    with pytest.raises(ValueError, match="holds checkpoints up to step 4 of an earlier run"):
        ck.check_fresh_start(root)
    with pytest.raises(ConfigError, match="--checkpoint: .*predates the safe checkpoint format"):
        find_source(root)
    with pytest.raises(ConfigError, match="--checkpoint: .*predates the safe checkpoint format"):
        find_source(path)
    assert not marker.exists()


def test_planted_learner_state_is_refused_even_with_a_matching_manifest(tmp_path: Path) -> None:
    """Someone rewrote the manifest to fit: the checksums pass, the restricted unpickler still refuses."""
    root, marker = tmp_path / "checkpoints", tmp_path / "pwned"
    plant_learner_state(save(root, 3), marker)
    path, _, _ = ck.find_resumable(root)
    with pytest.raises(ValueError, match=r"learner_state.pt holds more than tensors and plain data") as e:
        read_learner_state(path / "learner")
    assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value)
    assert not marker.exists()


def test_driver_json_cannot_name_arbitrary_classes(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoints", 1)
    planted = {"__record__": "DriverState", "fields": {"step": 1, "policy_version": 1, "cursor": {},
                                                       "run_id": {"__record__": "subprocess.Popen", "fields": {}}}}
    (final / ck.DRIVER_STATE).write_text(json.dumps(planted))
    manifest = json.loads((final / ck.MANIFEST).read_text())
    manifest["files"][ck.DRIVER_STATE] = ck._digests(final, [final / ck.DRIVER_STATE])[ck.DRIVER_STATE]
    (final / ck.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"driver.json cannot be read: .*'subprocess.Popen' is not a record type"):
        ck.load_driver_state(final)


def test_learner_state_round_trips_under_weights_only(tmp_path: Path) -> None:
    """What save_learner_state writes (tensors, optimizer, scheduler, RNG) loads with weights_only=True."""
    from types import SimpleNamespace

    from rlplat.learners.state import load_learner_state, save_learner_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    learner = SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, policy_version=5,
                              prev={"weight": torch.ones(2, 3)}, device=torch.device("cpu"))
    save_learner_state(learner, tmp_path)
    draw = torch.rand(3)
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    other = SimpleNamespace(model=fresh, optimizer=fresh_opt, policy_version=0, device=torch.device("cpu"),
                            scheduler=torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda step: 1.0 / (step + 1)))
    load_learner_state(other, tmp_path)
    assert torch.equal(fresh.weight, model.weight) and other.policy_version == 5
    assert torch.equal(other.prev["weight"], torch.ones(2, 3))
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert other.scheduler.last_epoch == 1 and torch.equal(torch.rand(3), draw)

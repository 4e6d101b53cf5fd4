"""Stop at step 2, resume to step 4: same MLflow run, continuous steps, same data order, nothing twice, the resume
marked; a damaged newest checkpoint falls back to the one before it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat.config import ConfigError, load_config
from rlplat.data.datasets import EpochCursor
from rlplat.driver import loop, run_state
from rlplat.tracking import RESUMED_METRIC, RESUMED_TAG
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow


def _cfg(model: Path, out: Path, steps: int, *extra: str):
    # 8 train prompts, 4 per step: the checkpoint at step 2 sits exactly on an epoch boundary.
    overrides = smoke_overrides(model, out, **{"experiment.num_steps": steps, "checkpoint.every_steps": 2,
                                               "data.num_train_prompts": 8})
    return load_config(ROOT / "configs/smoke/grpo.yaml", [*overrides, *extra])


def test_resume_continues_run_and_data_order(ray_session, tiny_model_dir: Path, tmp_path: Path, caplog) -> None:
    """The first run ends at step 3, but its step-3 checkpoint is removed: as if killed after logging step 3, before
    saving it. Resumed from step 2: step 3 is logged once (the killed run's rows are dropped), the resume is marked,
    the data order is that of an uninterrupted run. Then, on the same files: a truncated newest checkpoint falls
    back to the one before it."""
    first = loop.train(_cfg(tiny_model_dir, tmp_path, 3), progress=False)
    shutil.rmtree(tmp_path / "checkpoints" / "step_000003")
    cfg = _cfg(tiny_model_dir, tmp_path, 4)
    second = loop.train(cfg, progress=False, resume=True)

    assert second.run_id == first.run_id
    client = MlflowClient(second.tracking_uri)
    versions = [(m.step, m.value) for m in client.get_metric_history(second.run_id, "train/policy_version")]
    assert versions == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    run = client.get_run(second.run_id)
    for key in run.data.metrics:  # every step once, eval and the last step's checks included
        steps = [m.step for m in client.get_metric_history(second.run_id, key)]
        assert key.startswith("system/") or len(steps) == len(set(steps)), f"{key}: steps {steps}"
    assert run.data.tags[RESUMED_TAG] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(second.run_id, RESUMED_METRIC)] == [(3, 2.0)]

    lines = [json.loads(line) for line in (tmp_path / "trained_groups.jsonl").read_text().splitlines()]
    assert [t.get("step", f"resumed from {t.get('resumed_from_step')}") for t in lines] == [
        1, 2, "resumed from 2", 3, 4]
    trained = [t for t in lines if "step" in t]
    d = cfg.data
    cursor = EpochCursor(d.num_train_prompts, seed=d.seed, shuffle=d.shuffle)  # the run's prompt order, from step 1
    expected = [cursor.take(cfg.rollout.num_prompts_per_step) for _ in range(4)]
    assert [t["prompt_ids"] for t in trained] == expected  # same order as an uninterrupted run, none twice

    newest = tmp_path / "checkpoints" / "step_000004" / "learner" / "learner_state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="rlplat"):
        path, state = run_state.find_checkpoint(cfg, required=True)
    assert path.name == "step_000002" and state.step == 2
    assert "step_000004" in caplog.text and "step_000002" in caplog.text


def test_resume_with_nonempty_store_and_partial_buffer(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Async store (k=1) + APRIL: the checkpoint carries produced-ahead groups and unfinished partial groups."""
    extra = ("data.store.enabled=true", "data.store.max_staleness=1", "rollout.partial.enabled=true",
             "rollout.max_new_tokens=40")
    first = loop.train(_cfg(tiny_model_dir, tmp_path, 2, *extra), progress=False)
    from rlplat import checkpoint as ck

    saved = ck.load_driver_state(tmp_path / "checkpoints" / "step_000002")
    assert len(saved.store_groups) + len(saved.partial_buffer) > 0
    second = loop.train(_cfg(tiny_model_dir, tmp_path, 4, *extra), progress=False, resume=True)

    assert second.run_id == first.run_id
    client = MlflowClient(second.tracking_uri)
    versions = [m.step for m in client.get_metric_history(second.run_id, "train/policy_version")]
    assert versions == [1, 2, 3, 4]
    # every step, restored batches included, has its batch's reward statistics
    assert [m.step for m in client.get_metric_history(second.run_id, "rollout/reward_mean")] == [1, 2, 3, 4]
    lines = [json.loads(line) for line in (tmp_path / "trained_groups.jsonl").read_text().splitlines()]
    trained = [t for t in lines if "group_ids" in t]
    assert [t["resumed_from_step"] for t in lines if "resumed_from_step" in t] == [2]  # the resume marker
    group_ids = [g for t in trained for g in t["group_ids"]]
    assert len(group_ids) == len(set(group_ids)), "a group was trained twice"
    restored_ids = {g.group_id for g in saved.store_groups}
    later = {g for t in trained if t["step"] > 2 for g in t["group_ids"]}
    dropped = client.get_run(second.run_id).data.metrics.get("async/groups_dropped_stale", 0.0)
    assert restored_ids <= later or dropped > 0  # restored groups were trained after resume (or counted as stale)


def test_resume_with_changed_spec_is_refused_naming_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path
    (out / "checkpoints" / "step_000002").mkdir(parents=True)
    from rlplat import checkpoint as ck
    from rlplat.config import dump_yaml

    saved = _cfg(tiny_model_dir, out, 2)
    ck.commit(out / "checkpoints", ck.begin(out / "checkpoints", 2),
              ck.DriverState(step=2, policy_version=2, run_id="r", cursor={"epoch": 0, "position": 8}),
              dump_yaml(saved), keep_last=2)
    with pytest.raises(ConfigError, match=r"spec differs in learner\.lr, rollout\.max_new_tokens"):
        run_state.find_checkpoint(_cfg(tiny_model_dir, out, 4, "learner.lr=0.5", "rollout.max_new_tokens=5"),
                                   required=True)
    assert run_state.find_checkpoint(_cfg(tiny_model_dir, out, 4), required=True) is not None

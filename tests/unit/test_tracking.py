"""The MLflow tracker without Ray: the experiment opens as model training, and a failed resume leaves a finished
run finished."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from rlplat.config import load_config
from rlplat.tracking import EXPERIMENT_KIND, MODEL_TRAINING, Tracker
from tests.conftest import ROOT


def _cfg(tmp_path: Path):
    return load_config(ROOT / "configs/demo.yaml", [f"experiment.output_dir={tmp_path}", "model.path=unused",
                                                    "tracking.system_metrics_interval_s=0"])


def test_experiment_is_tagged_as_model_training(tmp_path: Path) -> None:
    tracker = Tracker(_cfg(tmp_path))
    tracker.finish()
    client = MlflowClient(tracker.uri)
    exp = client.get_experiment(client.get_run(tracker.run_id).info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND] == MODEL_TRAINING


def test_a_failed_resume_does_not_fail_a_finished_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = Tracker(cfg)
    first.finish("FINISHED")
    resumed = Tracker(cfg, run_id=first.run_id)
    assert MlflowClient(first.uri).get_run(first.run_id).info.status == "RUNNING"
    resumed.finish("FAILED")
    run = MlflowClient(first.uri).get_run(first.run_id)
    assert run.info.status == "FINISHED" and "rlplat.failed_resume" in run.data.tags


def test_a_failed_resume_of_a_failed_run_stays_failed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = Tracker(cfg)
    first.finish("FAILED")
    resumed = Tracker(cfg, run_id=first.run_id)
    resumed.finish("FAILED")
    assert MlflowClient(first.uri).get_run(first.run_id).info.status == "FAILED"

"""The MLflow tracker without Ray (a real SQLite store): the experiment opens as model training, a resume drops the
steps it logs again and marks itself, and a failed resume leaves a finished run finished."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat.config import load_config
from rlplat.tracking import EXPERIMENT_KIND, MODEL_TRAINING, RESUMED_METRIC, RESUMED_TAG, Tracker, delete_metrics_after
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


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_rewind_drops_the_steps_after_the_checkpoint_and_marks_the_resume(tmp_path: Path) -> None:
    """Killed after step 4 with the checkpoint at 2: steps 3-4 go, the resumed run logs them once; system metrics
    (their own step counter) stay; the latest values follow the rows that are left."""
    cfg = _cfg(tmp_path)
    first = Tracker(cfg)
    for step in range(1, 5):
        first.log_metrics(step, {"loss/policy": float(step), "rollout/reward_mean": 0.1 * step})
    first.log_metrics(4, {"eval/exact_match": 0.5})  # only after the checkpoint: the key disappears
    first.client.log_metric(first.run_id, "system/cpu_utilization_percentage", 7.0, step=9)
    first.finish("FAILED")
    client = MlflowClient(first.uri)

    resumed = Tracker(cfg, run_id=first.run_id)
    resumed.rewind(2)
    metrics = client.get_run(first.run_id).data.metrics
    assert metrics["loss/policy"] == 2.0 and "eval/exact_match" not in metrics
    assert _history(client, first.run_id, "system/cpu_utilization_percentage") == [(9, 7.0)]
    for step in (3, 4):
        resumed.log_metrics(step, {"loss/policy": 10.0 * step, "rollout/reward_mean": 0.1 * step})
    resumed.finish()
    assert _history(client, first.run_id, "loss/policy") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert client.get_run(first.run_id).data.metrics["loss/policy"] == 40.0
    assert _history(client, first.run_id, RESUMED_METRIC) == [(3, 2.0)]
    assert client.get_run(first.run_id).data.tags[RESUMED_TAG] == "2"

    again = Tracker(cfg, run_id=first.run_id)  # a second resume, from a checkpoint at step 3
    again.rewind(3)
    again.finish()
    run = client.get_run(first.run_id)
    assert run.data.tags[RESUMED_TAG] == "2,3"
    assert _history(client, first.run_id, "loss/policy") == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert _history(client, first.run_id, RESUMED_METRIC) == [(3, 2.0), (4, 3.0)]
    assert run.data.metrics["loss/policy"] == 30.0


def test_rewind_leaves_other_runs_alone(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    other, mine = Tracker(cfg), Tracker(cfg)
    for step in (1, 2, 3):
        other.log_metrics(step, {"loss/policy": float(step)})
        mine.log_metrics(step, {"loss/policy": float(step)})
    other.flush()
    mine.flush()
    assert delete_metrics_after(mine.uri, mine.run_id, 1) == 2
    client = MlflowClient(mine.uri)
    assert _history(client, other.run_id, "loss/policy") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert _history(client, mine.run_id, "loss/policy") == [(1, 1.0)]


def test_other_stores_keep_their_rows() -> None:
    """Only the SQLite store can drop rows (through MLflow's ORM); for any other store nothing is touched."""
    assert delete_metrics_after("http://127.0.0.1:1", "r", 3) is None
    assert delete_metrics_after("file:///nowhere/mlruns", "r", 3) is None


def test_rewind_also_drops_what_was_logged_at_the_checkpoint_step_after_it_was_written(tmp_path: Path) -> None:
    """Killed during the final evaluation, after the last step's checkpoint: its eval rows at that step go too."""
    cfg = _cfg(tmp_path)
    first = Tracker(cfg)
    first.log_metrics(2, {"loss/policy": 2.0})
    time.sleep(0.01)
    written_at_ms = int(time.time() * 1000)
    time.sleep(0.01)
    first.log_metrics(2, {"eval/exact_match": 0.5})
    first.finish("FAILED")
    resumed = Tracker(cfg, run_id=first.run_id)
    resumed.rewind(2, written_at_ms=written_at_ms)
    resumed.log_metrics(2, {"eval/exact_match": 0.5})
    resumed.finish()
    client = MlflowClient(first.uri)
    assert _history(client, first.run_id, "eval/exact_match") == [(2, 0.5)]
    assert _history(client, first.run_id, "loss/policy") == [(2, 2.0)]


def test_metrics_are_written_in_order_by_the_writer_and_all_there_after_flush(tmp_path: Path) -> None:
    """log_metrics hands rows to the background writer; after flush() every row of every step is in the store,
    with the timestamp of the moment it was logged."""
    tracker = Tracker(_cfg(tmp_path))
    logged_at = []
    for step in range(1, 41):
        logged_at.append(int(time.time() * 1000))
        tracker.log_metrics(step, {"loss/policy": float(step), "rollout/reward_mean": step / 100})
    tracker.flush()
    client = MlflowClient(tracker.uri)
    assert _history(client, tracker.run_id, "loss/policy") == [(s, float(s)) for s in range(1, 41)]
    stamps = [m.timestamp for m in sorted(client.get_metric_history(tracker.run_id, "loss/policy"),
                                          key=lambda m: m.step)]
    assert all(a <= t <= a + 1000 for a, t in zip(logged_at, stamps, strict=True))
    tracker.finish()


def test_a_failed_metric_write_is_raised_by_the_next_flush(tmp_path: Path, monkeypatch) -> None:
    tracker = Tracker(_cfg(tmp_path))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tracker.client, "log_batch", broken)
    tracker.log_metrics(1, {"loss/policy": 1.0})
    with pytest.raises(RuntimeError, match="writing metrics to .* failed: disk full"):
        tracker.flush()
    monkeypatch.undo()
    tracker.finish()

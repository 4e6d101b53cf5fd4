"""MLflow tracking for one run. Only the driver logs (MlflowClient with an explicit run id); actors return dicts.

Metric rows are written by one background thread, in order, so the loop goes on to the next rollout instead of
waiting for the store; each row's timestamp is the moment it was logged. `Tracker.flush()` waits until every row
logged so far is written: the driver calls it before a checkpoint is saved (a resume keeps exactly the rows logged
before its checkpoint), and `finish()` does. Everything else (tags, tables, artifacts) is written at once.

Default store: a local SQLite file `<output_dir>/mlflow.db` (single writer: the driver). Open the UI with
`mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db --host 127.0.0.1`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from rlplat.config import RunConfig, dump_yaml, flatten, to_dict

_MAX_PARAM_CHARS = 500


# MLflow 3's UI opens an experiment by its kind: model training shows the runs and their metric charts first, not
# "GenAI > Evaluations".
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# A resumed run: the tag lists the checkpoint step of every resume ("10,20"); the metric, logged at the first
# resumed step, holds the checkpoint step it continued from.
RESUMED_TAG, RESUMED_METRIC = "rlplat.resumed_from_steps", "resume/from_step"
log = logging.getLogger("rlplat")


class MetricWriter:
    """Writes metric batches to run `run_id` from one background thread, in the order they were put. A write that
    fails is raised, once, by the next `put` or `flush`."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._queue: queue.Queue[list | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rlplat-metric-writer", daemon=True)
        self._thread.start()

    def put(self, metrics: list) -> None:
        self._raise_error()
        self._queue.put(metrics)

    def flush(self) -> None:
        """Wait until everything put so far is written."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_error()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                if self._error is None:  # after a failure nothing more is written: the run is failing anyway
                    for i in range(0, len(batch), 500):
                        self.client.log_batch(self.run_id, metrics=batch[i : i + 500])
            except Exception as e:  # kept for the driver's thread
                self._error = e
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"MLflow: writing metrics to {self.run_id} failed: {error}") from error


class Tracker:
    """One MLflow run. `run_id` may be given to re-attach (resume)."""

    def __init__(self, cfg: RunConfig, *, run_id: str | None = None, tags: dict[str, str] | None = None) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        self.uri = cfg.tracking_uri
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment_name)
        if exp is None:
            artifacts = (cfg.output_dir / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite") else None
            exp_id = self.client.create_experiment(cfg.tracking.experiment_name, artifact_location=artifacts,
                                                   tags={EXPERIMENT_KIND: MODEL_TRAINING})
        else:
            exp_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:
                self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND, MODEL_TRAINING)
        self.status_before_resume: str | None = None
        if run_id is None:
            all_tags = {"mlflow.runName": cfg.experiment.name, **(tags or {})}
            self.run_id = self.client.create_run(exp_id, tags=all_tags).info.run_id
            self._log_spec(cfg)
        else:
            self.run_id = run_id
            self.status_before_resume = self.client.get_run(run_id).info.status
            self.client.update_run(run_id, status="RUNNING")
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._writer = MetricWriter(self.client, self.run_id)
        self._system = None
        if cfg.tracking.system_metrics_interval_s > 0:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # CPU, memory, disk, network and (when present) GPU utilisation, sampled in a background thread.
            self._system = SystemMetricsMonitor(self.run_id, sampling_interval=cfg.tracking.system_metrics_interval_s,
                                                resume_logging=run_id is not None, tracking_uri=self.uri)
            self._system.start()

    def _log_spec(self, cfg: RunConfig) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flatten(to_dict(cfg)).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.log_text(dump_yaml(cfg), "spec/resolved.yaml")

    def rewind(self, checkpoint_step: int, written_at_ms: int | None = None) -> None:
        """Continue after `checkpoint_step` (written at `written_at_ms`): what the killed run logged after it (later
        steps; the final evaluation of the checkpoint's own step) is removed, since the resumed run logs it again,
        and the resume is marked (RESUMED_TAG, RESUMED_METRIC)."""
        removed = delete_metrics_after(self.uri, self.run_id, checkpoint_step, after_ms=written_at_ms)
        if removed is None:
            log.warning("resume: the tracking store %s keeps the metrics of steps after %d; the resumed steps are "
                        "logged a second time (only the SQLite store can drop them)", self.uri, checkpoint_step)
        earlier = self.client.get_run(self.run_id).data.tags.get(RESUMED_TAG)
        self.set_tag(RESUMED_TAG, f"{earlier},{checkpoint_step}" if earlier else str(checkpoint_step))
        self.log_metrics(checkpoint_step + 1, {RESUMED_METRIC: float(checkpoint_step)})

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append((step, float(v)))
        self._writer.put([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def flush(self) -> None:
        """Wait until every metric logged so far is in the store."""
        self._writer.flush()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def log_reward_curve(self, key: str = "rollout/reward_mean") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        points = self.history.get(key, [])
        if not points:
            return
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in points], [v for _, v in points], label=key)
        for extra in ("eval/exact_match",):
            if extra in self.history:
                ax.plot(*zip(*self.history[extra], strict=True), marker="o", label=extra)
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        self.client.log_figure(self.run_id, fig, "plots/reward_curve.png")
        plt.close(fig)

    def log_artifact_dir(self, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def register_model(self, local_dir: Path, name: str, metrics: dict[str, float]) -> str:
        """Log the final policy (or LoRA adapter) directory and register it as a new version of model `name`."""
        from mlflow.exceptions import MlflowException

        self.client.log_artifacts(self.run_id, str(local_dir), "model")
        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # already registered: add a version
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/model"
        version = self.client.create_model_version(name, source, run_id=self.run_id,
                                                   tags={k: f"{v:.6g}" for k, v in metrics.items()})
        return str(version.version)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status`. A resume that fails leaves a run that had finished FINISHED (tagged with the
        failed attempt), so a finished result is never marked failed after the fact."""
        if self._system is not None:
            self._system.finish()
        try:
            self._writer.close()
        except RuntimeError as e:  # the run still ends, with the status it has
            log.warning("%s", e)
        if status == "FAILED" and self.status_before_resume == "FINISHED":
            self.set_tag("rlplat.failed_resume", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            status = "FINISHED"
        self.client.set_terminated(self.run_id, status=status)


def delete_metrics_after(tracking_uri: str, run_id: str, step: int, *, after_ms: int | None = None,
                         keep_prefixes: tuple[str, ...] = ("system/",)) -> int | None:
    """Delete run `run_id`'s metric rows with a step above `step`, or logged after `after_ms` (ms since the epoch,
    when given); returns how many, or None (nothing deleted) when the store is not SQLite.

    Why: a run killed at step 12 whose last checkpoint is step 10 logged steps 11-12; the resumed run logs them
    again, and MLflow keeps both rows (a metric row is keyed by timestamp too). A run killed after its last
    checkpoint, during the final evaluation, logged some of it at the checkpoint's own step: `after_ms` (when the
    checkpoint was written) catches those. MLflow has no public API to delete
    metrics, so this goes through MLflow's own SQLAlchemy store and ORM models (`metrics` and `latest_metrics`),
    in one transaction: the rows go, and each affected key's latest value is recomputed by MLflow's rule (the
    greatest (step, timestamp, value)), or removed when no row of that key is left. Keys under `keep_prefixes`
    (system metrics, which count their own steps) are left alone. The driver is the store's only writer.
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import and_, not_, or_

    kept = or_(*(SqlMetric.key.startswith(p) for p in keep_prefixes)) if keep_prefixes else None
    after = SqlMetric.step > step if after_ms is None else or_(SqlMetric.step > step, SqlMetric.timestamp > after_ms)
    later = and_(SqlMetric.run_uuid == run_id, after, *([not_(kept)] if kept is not None else []))
    artifacts = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"  # as Tracker creates it
    store = SqlAlchemyStore(tracking_uri, default_artifact_root=str(artifacts))
    with store.ManagedSessionMaker(read_only=False) as session:
        keys = [k for (k,) in session.query(SqlMetric.key).filter(later).distinct()]
        removed = session.query(SqlMetric).filter(later).delete(synchronize_session=False)
        for key in keys:
            newest = (session.query(SqlMetric).filter(SqlMetric.run_uuid == run_id, SqlMetric.key == key)
                      .order_by(SqlMetric.step.desc(), SqlMetric.timestamp.desc(), SqlMetric.value.desc()).first())
            latest = session.query(SqlLatestMetric).filter(SqlLatestMetric.run_uuid == run_id,
                                                           SqlLatestMetric.key == key)
            if newest is None:
                latest.delete(synchronize_session=False)
            else:
                latest.update({"value": newest.value, "step": newest.step, "timestamp": newest.timestamp,
                               "is_nan": newest.is_nan}, synchronize_session=False)
    return removed


def read_histories(tracking_uri: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the newest run in the store as (step, value) pairs in logging order (a resumed run is one
    run); {} when the store holds no run. For comparing whole runs (`rlplat bench faults --chaos`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not runs:
        return {}
    run_id = runs[0].info.run_id
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                                    key=lambda m: (m.step, m.timestamp))]
            for key in runs[0].data.metrics}

"""Asynchronous training through the ExperienceStore (real TransferQueue, real vLLM, real Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat import controller
from rlplat.config import load_config
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow


def test_async_k1_stays_within_bound_and_logs_queue_metrics(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = smoke_overrides(tiny_model_dir, tmp_path, **{
        "experiment.num_steps": 4, "data.store.enabled": "true", "data.store.max_staleness": 1})
    result = controller.train(load_config(ROOT / "configs/smoke/grpo.yaml", overrides), progress=False)
    client = MlflowClient(result.tracking_uri)
    lags = [m.value for m in client.get_metric_history(result.run_id, "async/batch_staleness_max")]
    assert len(lags) == 4 and max(lags) <= 1 and lags[0] == 0
    metrics = client.get_run(result.run_id).data.metrics
    for key in ("async/queue_depth_groups", "async/producer_wait_s", "async/consumer_wait_s",
                "async/groups_dropped_stale", "async/staleness_count/0"):
        assert key in metrics, key
    assert metrics["async/groups_consumed"] == 4 * 4
    assert metrics["sync/checksum_match"] == 1.0

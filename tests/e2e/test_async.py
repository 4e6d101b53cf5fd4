"""Asynchronous training through the ExperienceStore (real TransferQueue, real vLLM, real Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat.config import load_config
from rlplat.driver import loop
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow


def test_async_k1_stays_within_bound_and_logs_queue_metrics(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = smoke_overrides(tiny_model_dir, tmp_path, **{
        "experiment.num_steps": 4, "data.store.enabled": "true", "data.store.max_staleness": 1})
    result = loop.train(load_config(ROOT / "configs/smoke/grpo.yaml", overrides), progress=False)
    client = MlflowClient(result.tracking_uri)
    lags = [m.value for m in client.get_metric_history(result.run_id, "async/batch_staleness_max")]
    assert len(lags) == 4 and max(lags) <= 1 and lags[0] == 0
    metrics = client.get_run(result.run_id).data.metrics
    for key in ("async/queue_depth_groups", "async/producer_wait_s", "async/consumer_wait_s",
                "async/groups_dropped_stale", "async/staleness_count/0"):
        assert key in metrics, key
    assert metrics["async/groups_consumed"] == 4 * 4
    assert metrics["sync/checksum_match"] == 1.0


def test_async_k0_trains_exactly_as_synchronous_training(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    """k = 0 through the store is on-policy training: with sampling seeded per request, the same seed gives the
    same rollouts, rewards and losses at every step as the synchronous loop."""
    histories = {}
    for mode, extra in {"sync": {"data.store.enabled": "false"},
                        "k0": {"data.store.enabled": "true", "data.store.max_staleness": 0}}.items():
        overrides = smoke_overrides(tiny_model_dir, tmp_path / mode, **{
            "experiment.num_steps": 3, "rollout.reproducible_sampling": "true", **extra})
        history = loop.train(load_config(ROOT / "configs/smoke/grpo.yaml", overrides), progress=False).history
        histories[mode] = {key: [v for _, v in sorted(history[key])]
                           for key in ("rollout/reward_mean", "rollout/response_length_mean", "loss/policy")}
    assert len(histories["sync"]["rollout/reward_mean"]) == 3
    assert histories["k0"]["rollout/reward_mean"] == histories["sync"]["rollout/reward_mean"]
    assert histories["k0"]["rollout/response_length_mean"] == histories["sync"]["rollout/response_length_mean"]
    assert histories["k0"]["loss/policy"] == pytest.approx(histories["sync"]["loss/policy"], rel=1e-5, abs=1e-7)

"""The walking skeleton end to end: real Ray, real vLLM (CPU), tiny model, GRPO, MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from rlplat import controller
from rlplat.config import load_config
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow

EXPECTED_METRICS = [
    "rollout/reward_mean", "rollout/reward_std", "rollout/response_length_mean", "loss/policy", "train/approx_kl",
    "train/clip_frac", "train/grad_norm", "perf/rollout_tokens_per_s", "time/rollout_s", "time/reward_s",
    "time/train_s", "time/weight_sync_s", "eval/exact_match", "sync/checksum_match", "sync/max_logp_diff",
]


@pytest.fixture(scope="module")
def grpo_run(ray_session, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("grpo")
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", smoke_overrides(tiny_model_dir, out))
    return cfg, controller.train(cfg, progress=False)


def test_metrics_logged_to_mlflow(grpo_run) -> None:
    cfg, result = grpo_run
    run = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    missing = [k for k in EXPECTED_METRICS if k not in run.data.metrics]
    assert not missing, f"metrics not logged: {missing}"
    history = MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "rollout/reward_mean")
    assert [m.step for m in history] == list(range(1, cfg.experiment.num_steps + 1))
    assert run.data.params["rollout.num_samples_per_prompt"] == "4"


def test_artifacts_logged(grpo_run) -> None:
    _, result = grpo_run
    client = MlflowClient(result.tracking_uri)
    top = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"spec", "samples", "plots"} <= top
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/reward_curve.png"]
    assert (result.output_dir / "spec.yaml").is_file()


def test_policy_weights_changed(grpo_run, tiny_model_dir: Path) -> None:
    _, result = grpo_run
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(result.output_dir / "final_model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, f"only {changed} changed"


def test_engine_weights_equal_learner_after_sync(grpo_run) -> None:
    _, result = grpo_run
    run = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.data.metrics["sync/checksum_match"] == 1.0
    assert run.data.metrics["sync/max_logp_diff"] < 1e-4


def test_final_policy_registered_with_metrics_and_system_metrics_logged(grpo_run) -> None:
    cfg, result = grpo_run
    client = MlflowClient(result.tracking_uri)
    versions = client.search_model_versions(f"name='{cfg.experiment.name}'")
    assert [v.run_id for v in versions] == [result.run_id]
    assert "eval/exact_match" in versions[0].tags
    assert {a.path for a in client.list_artifacts(result.run_id, "model")} >= {"model/config.json",
                                                                             "model/model.safetensors"}
    metrics = client.get_run(result.run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)

"""The walking skeleton end to end: real Ray, real vLLM (CPU), tiny model, GRPO, MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from rlplat.config import load_config
from rlplat.driver import evaluation, loop
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
    overrides = smoke_overrides(tiny_model_dir, out, **{"checkpoint.every_steps": 3})
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", overrides)
    return cfg, loop.train(cfg, progress=False)


@pytest.fixture(scope="module")
def eval_run(grpo_run):
    """`rlplat eval` of the run's latest checkpoint (step 3, the last step: the final policy)."""
    cfg, result = grpo_run
    return evaluation.evaluate_checkpoint(cfg, str(result.output_dir / "checkpoints"), num_samples=2)


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


def test_eval_of_a_checkpoint_logs_an_evaluation_run_under_the_training_run(grpo_run, eval_run) -> None:
    cfg, train = grpo_run
    client = MlflowClient(eval_run.tracking_uri)
    run = client.get_run(eval_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == train.run_id and run.data.tags["rlplat.run_type"] == "eval"
    assert run.data.tags["rlplat.eval_source"] == "checkpoint"
    assert run.data.tags["rlplat.eval_checkpoint"].endswith("step_000003")
    # The checkpoint holds the final policy and decoding is greedy: the training run's final eval metrics again.
    trained = client.get_run(train.run_id).data.metrics
    for key in ("eval/exact_match", "eval/digit_accuracy"):
        assert run.data.metrics[key] == pytest.approx(trained[key]), key
    assert [m.step for m in client.get_metric_history(eval_run.run_id, "eval/exact_match")] == [3]
    metrics = run.data.metrics
    assert 0.0 <= metrics["eval/mean_at_k"] <= metrics["eval/best_of_k"] <= 1.0
    assert 0.0 <= metrics["eval/pass_at_k"] <= 1.0 and metrics["eval/k"] == 2
    assert "samples/eval.json" in {a.path for a in client.list_artifacts(eval_run.run_id, "samples")}


def test_eval_serves_the_checkpointed_weights(grpo_run, eval_run) -> None:
    _, train = grpo_run
    served = load_file(eval_run.output_dir / "model" / "model.safetensors")
    final = load_file(train.output_dir / "final_model" / "model.safetensors")
    assert served.keys() == final.keys() and all(torch.equal(served[k], final[k]) for k in final)

"""Every learner algorithm end to end through `loop.train`: real Ray, real vLLM (CPU), tiny model, 2 steps.

One run per algorithm (each starts a vLLM engine, ~30-40 s): GRPO, PPO (critic + GAE), ReMix-GRPO, ReMix-PPO and
GRPO + LoRA. Each run must log finite losses, change the policy (only the adapters with LoRA), leave the engine
holding the learner's (merged) weights, and log its algorithm's metrics to MLflow. PPO and GRPO + LoRA sync weights
by a process-group broadcast (`placement.weight_sync: broadcast`, gloo on CPU), the others as safetensors bytes.
GRPO scores its rewards in a RewardActor (`placement.reward_actor`), the others in the driver.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from rlplat.config import RunConfig, load_config
from rlplat.driver import loop
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow

TINY = {"experiment.num_steps": 2, "rollout.num_prompts_per_step": 4, "rollout.num_samples_per_prompt": 4,
        "data.num_eval_prompts": 8, "tracking.experiment_name": "rlplat-e2e-algos"}
COMMON_METRICS = ["loss/policy", "train/entropy", "train/grad_norm", "train/clip_frac", "train/off_policy_token_frac",
                  "train/logp_old_vs_behaviour", "rollout/reward_mean", "sync/checksum_match", "sync/max_logp_diff"]
REMIX = {"algorithm.remix.kl_convex.lambda_start": 1}
BROADCAST = {"placement.weight_sync": "broadcast"}  # lam(2) = 0.9: exercises the schedule within 2 steps

CASES = {
    "grpo": ("grpo.yaml", {"placement.reward_actor": "true"}, []),
    "ppo": ("ppo.yaml", BROADCAST, ["loss/value", "critic/value_mean", "critic/grad_norm"]),
    "remix_grpo": ("remix_grpo.yaml", REMIX, ["loss/kl_convex", "remix/kl_convex_lambda", "replay/num_groups"]),
    "remix_ppo": ("remix_ppo.yaml", REMIX, ["loss/kl_convex", "loss/value", "replay/num_groups"]),
    "grpo_lora": ("grpo_lora.yaml", BROADCAST, []),
}


# A random tiny model never reverses digits, so the demo reward is 0 everywhere and no gradient flows. This reward
# (share of digit characters in the response) varies between a random model's samples: every group has signal.
DIGIT_SHARE = """
def digit_share(batch):
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in batch.response_texts]
"""


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.parametrize("name", list(CASES))
def test_algorithm_end_to_end(name: str, ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    spec, extra, metrics = CASES[name]
    (tmp_path / "reward.py").write_text(DIGIT_SHARE)
    reward = {"reward.terms": f"[{{name: '{tmp_path / 'reward.py'}:digit_share', weight: 1.0}}]"}
    cfg = load_config(ROOT / "configs" / spec, smoke_overrides(tiny_model_dir, tmp_path, **TINY, **extra, **reward))
    result = loop.train(cfg, progress=False)
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"

    missing = [k for k in COMMON_METRICS + metrics if k not in run.data.metrics]
    assert not missing, f"{name}: metrics not logged: {missing}"
    for key in [k for k in COMMON_METRICS + metrics if k.startswith("loss/")]:
        values = _history(client, result.run_id, key)
        assert sorted(values) == [1, 2] and all(math.isfinite(v) for v in values.values()), (key, values)

    # Engine synced: same checksum, same log-probs, and step 2's behaviour log-probs came from the trained weights.
    assert run.data.metrics["sync/checksum_match"] == 1.0
    assert run.data.metrics["sync/max_logp_diff"] < 1e-4
    assert _history(client, result.run_id, "train/logp_old_vs_behaviour")[2] < 1e-4
    sync = "broadcast" if extra is BROADCAST else "bytes"
    assert f"weight sync {sync}" in run.data.tags["rlplat.placement"]
    assert ("reward actor" in run.data.tags["rlplat.placement"]) == (name == "grpo")

    _check_weights_changed(name, tiny_model_dir, result.output_dir / "final_model")
    _check_algorithm_specifics(name, cfg, client, result.run_id)


def _check_weights_changed(name: str, model_dir: Path, final_dir: Path) -> None:
    if name == "grpo_lora":  # only the adapter is saved, and it moved away from B = 0
        assert not (final_dir / "model.safetensors").exists()
        adapter = load_file(final_dir / "adapter_model.safetensors")
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
        assert all("lora_" in k for k in adapter)
        return
    before = load_file(model_dir / "model.safetensors")
    after = load_file(final_dir / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, f"only {changed} changed"
    if name in ("ppo", "remix_ppo"):
        assert (final_dir / "critic" / "model.safetensors").is_file()


def _check_algorithm_specifics(name: str, cfg: RunConfig, client: MlflowClient, run_id: str) -> None:
    off_policy = _history(client, run_id, "train/off_policy_token_frac")
    if name.startswith("remix"):
        # Step 1 has no history; step 2 replays groups of version 0, about a share p = 0.4 of the batch.
        assert _history(client, run_id, "replay/num_groups") == {1: 0.0, 2: 3.0}
        assert off_policy[1] == 0.0 and 0.2 < off_policy[2] < 0.6
        m = float(cfg.algorithm.remix.update_to_data)  # the spec's UTD ratio (4 for ReMix-GRPO, 2 for ReMix-PPO)
        assert _history(client, run_id, "train/num_updates") == {1: m, 2: m}
        assert _history(client, run_id, "remix/kl_convex_lambda") == {1: 1.0, 2: pytest.approx(0.9)}
    else:
        assert off_policy == {1: 0.0, 2: 0.0}
    if name in ("ppo", "remix_ppo"):
        assert client.get_run(run_id).data.metrics["critic/grad_norm"] > 0

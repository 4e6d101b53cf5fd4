"""The tiny model plays EnvPool CartPole through `controller.train`: real EnvPool, real vLLM (CPU), real Ray, 2 steps.

One train() call (a vLLM engine costs ~40 s to start here) on configs/envpool_cartpole.yaml at tiny sizes. The
batches the learner receives are captured (controller.make_batch is wrapped) to check the episodes' token layout.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat import controller
from rlplat.config import RunConfig, load_config
from rlplat.types import FinishReason, Group, TrainBatch
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow

TINY = {"experiment.num_steps": 2, "rollout.num_prompts_per_step": 2, "rollout.num_samples_per_prompt": 2,
        "env.max_turns": 4, "data.num_eval_prompts": 8, "tracking.experiment_name": "rlplat-e2e-envs"}
ENV_METRICS = ["env/episode_return_mean", "env/episode_length_turns_mean", "env/invalid_action_rate",
               "env/env_done_rate", "env/model_token_share", "time/env_s", "eval/episode_return_mean",
               "rollout/reward_mean", "loss/policy", "sync/checksum_match"]
COMPACT_OBS = re.compile(r"[+-]\d[+-]\d")


@pytest.fixture(scope="module")
def env_run(ray_session, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("envs")
    cfg = load_config(ROOT / "configs/envpool_cartpole.yaml", smoke_overrides(tiny_model_dir, out, **TINY))
    batches: list[TrainBatch] = []
    make_batch = controller.make_batch

    def spy(cfg_: RunConfig, groups: list[Group]) -> TrainBatch:
        batch = make_batch(cfg_, groups)
        batches.append(batch)
        return batch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(controller, "make_batch", spy)
        result = controller.train(cfg, progress=False)
    return cfg, result, batches


def test_episodes_ran_and_env_metrics_logged(env_run) -> None:
    cfg, result, batches = env_run
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    missing = [k for k in ENV_METRICS if k not in run.data.metrics]
    assert not missing, f"metrics not logged: {missing}"
    for key in ("env/episode_return_mean", "env/episode_length_turns_mean", "time/env_s"):
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [1, 2] and all(math.isfinite(m.value) for m in history)
    assert 1 <= run.data.metrics["env/episode_length_turns_mean"] <= 4
    assert 0 <= run.data.metrics["env/invalid_action_rate"] <= 1
    assert run.data.metrics["env/num_episodes"] == 4
    assert run.data.metrics["sync/checksum_match"] == 1.0
    assert len(batches) == 2 and all(len(b.samples) == 4 for b in batches)


def test_episode_token_layout_and_rewards(env_run, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    cfg, _, batches = env_run
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for batch in batches:
        for s in batch.samples:
            s.validate()
            turns = 0
            i = 0
            n = s.num_response_tokens
            while i < n:  # alternate: one model token (mask 1), then a 4-character observation (mask 0)
                assert s.loss_mask[i] == 1 and s.logp_behaviour[i] <= 0.0
                turns, i = turns + 1, i + 1
                if i < n:
                    obs = s.response_token_ids[i:i + 4]
                    assert s.loss_mask[i:i + 4] == [0] * 4 and s.logp_behaviour[i:i + 4] == [0.0] * 4
                    assert COMPACT_OBS.fullmatch(tok.decode(obs)), tok.decode(obs)
                    i += 4
            assert i == n and 1 <= turns <= cfg.env.max_turns
            assert s.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
            assert COMPACT_OBS.fullmatch(tok.decode(s.prompt_token_ids))
            assert s.reward is not None and turns * (1 + cfg.env.invalid_action_penalty) <= s.reward <= turns
        for g in {s.group_id for s in batch.samples}:  # a group = episodes from one seed: one initial state
            assert len({tuple(s.prompt_token_ids) for s in batch.samples if s.group_id == g}) == 1

"""The tiny model plays EnvPool CartPole: real EnvPool, real vLLM (CPU), real Ray.

- One train() call (a vLLM engine costs ~40 s to start here): ReMix-GRPO (the algorithm section of
  configs/remix_grpo.yaml) on configs/envpool_cartpole.yaml at tiny sizes, 3 steps. The batches the learner
  receives are captured (the loop's make_batch is wrapped) to check the episodes' token layout and the replayed
  groups.
- APRIL on CartPole through `experience.EpisodeApril` with one RolloutActor and an `EpisodeAprilManager`, new
  weights loaded between steps: a cut episode continues next step with its tokens, masks and log-probs, two policy
  versions per continued sample, and a balanced token ledger.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from rlplat.config import flatten, load_config
from rlplat.driver import loop
from rlplat.types import FinishReason, Group, Sample, TrainBatch
from tests.conftest import ROOT, assert_logps_close, smoke_overrides, started_rollout_actor

pytestmark = pytest.mark.slow

NUM_STEPS = 3
TINY = {"experiment.num_steps": NUM_STEPS, "rollout.num_prompts_per_step": 2, "rollout.num_samples_per_prompt": 2,
        "env.max_turns": 4, "data.num_eval_prompts": 8, "tracking.experiment_name": "rlplat-e2e-envs"}
ENV_METRICS = ["env/episode_return_mean", "env/episode_length_turns_mean", "env/invalid_action_rate",
               "env/env_done_rate", "env/model_token_share", "time/env_s", "eval/episode_return_mean",
               "rollout/reward_mean", "loss/policy", "sync/checksum_match", "replay/num_groups"]
COMPACT_OBS = re.compile(r"[+-]\d[+-]\d")


def _algorithm_overrides(spec: str) -> dict[str, object]:
    """An algorithm as shipped: every algorithm key of configs/<spec>."""
    algorithm = yaml.safe_load((ROOT / "configs" / spec).read_text())["algorithm"]
    return {f"algorithm.{k}": v for k, v in flatten(algorithm).items()}



@pytest.fixture(scope="module")
def env_run(ray_session, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("envs")
    overrides = smoke_overrides(tiny_model_dir, out, **TINY, **_algorithm_overrides("remix_grpo.yaml"))
    cfg = load_config(ROOT / "configs/envpool_cartpole.yaml", overrides)
    assert cfg.algorithm.remix.enabled
    batches: list[TrainBatch] = []
    make_batch = loop.make_batch

    def spy(advantage: str, groups: list[Group]) -> TrainBatch:
        batch = make_batch(advantage, groups)
        batches.append(batch)
        return batch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "make_batch", spy)
        result = loop.train(cfg, progress=False)
    return cfg, result, batches


def test_episodes_ran_and_env_metrics_logged(env_run) -> None:
    cfg, result, batches = env_run
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    missing = [k for k in ENV_METRICS if k not in run.data.metrics]
    assert not missing, f"metrics not logged: {missing}"
    for key in ("env/episode_return_mean", "env/episode_length_turns_mean", "time/env_s", "loss/policy"):
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == list(range(1, NUM_STEPS + 1))
        assert all(math.isfinite(m.value) for m in history), (key, history)
    assert 1 <= run.data.metrics["env/episode_length_turns_mean"] <= 4
    assert 0 <= run.data.metrics["env/invalid_action_rate"] <= 1
    assert run.data.metrics["env/num_episodes"] == 4
    assert run.data.metrics["sync/checksum_match"] == 1.0
    assert len(batches) == NUM_STEPS and len(batches[0].samples) == 4  # nothing to replay at step 1


def test_remix_replays_past_episode_groups(env_run) -> None:
    """ReMix-GRPO on env episodes: from step 2 each batch mixes the fresh groups with a replayed group of an
    earlier policy version (p_off_policy 0.4: round(2 * 0.4 / 0.6) = 1), and the losses stay finite."""
    cfg, result, batches = env_run
    client = MlflowClient(result.tracking_uri)
    replayed = {m.step: m.value for m in client.get_metric_history(result.run_id, "replay/num_groups")}
    assert replayed[1] == 0 and all(replayed[step] == 1 for step in range(2, NUM_STEPS + 1)), replayed
    seen: dict[int, int] = {}  # group id -> the step that generated it
    for step, batch in enumerate(batches, start=1):
        fresh = {s.group_id for s in batch.samples if s.group_id // 1_000_000 == step}
        old = {s.group_id for s in batch.samples} - fresh
        assert len(fresh) == 2 and len(old) == (0 if step == 1 else 1), (step, fresh, old)
        for g in old:  # a replayed group is one trained before, with its stale versions and rewards kept
            assert seen[g] < step
            assert all(max(s.policy_versions) < step - 1 for s in batch.samples if s.group_id == g)
        seen |= dict.fromkeys(fresh, step)
        assert all(math.isfinite(a) for a in batch.advantages or [])
    for key in ("loss/policy", "loss/kl_convex"):
        history = client.get_metric_history(result.run_id, key)
        assert history and all(math.isfinite(m.value) for m in history), key


def _model_turns(s: Sample, tok) -> int:
    """Check the layout: one model token (mask 1), then a 4-character observation (mask 0), alternating; returns
    the number of model turns. The response may end after either (a cut episode ends after an observation)."""
    s.validate()
    turns = i = 0
    n = s.num_response_tokens
    while i < n:
        assert s.loss_mask[i] == 1 and s.logp_behaviour[i] <= 0.0
        turns, i = turns + 1, i + 1
        if i < n:
            obs = s.response_token_ids[i:i + 4]
            assert s.loss_mask[i:i + 4] == [0] * 4 and s.logp_behaviour[i:i + 4] == [0.0] * 4
            assert COMPACT_OBS.fullmatch(tok.decode(obs)), tok.decode(obs)
            i += 4
    assert i == n and COMPACT_OBS.fullmatch(tok.decode(s.prompt_token_ids))
    return turns


def test_episode_token_layout_and_rewards(env_run, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    cfg, _, batches = env_run
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for batch in batches:
        for s in batch.samples:
            turns = _model_turns(s, tok)
            assert s.loss_mask[-1] == 1 and 1 <= turns <= cfg.env.max_turns
            assert s.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
            assert s.reward is not None and turns * (1 + cfg.env.invalid_action_penalty) <= s.reward <= turns
        for g in {s.group_id for s in batch.samples}:  # a group = episodes from one seed: one initial state
            assert len({tuple(s.prompt_token_ids) for s in batch.samples if s.group_id == g}) == 1


# ------------------------------------------------------------------------------------------------ APRIL
@pytest.fixture(scope="module")
def rollout_actor(ray_session, tiny_model_dir: Path):
    from rlplat.models import max_context_length

    with started_rollout_actor(ray_session, tiny_model_dir, max_context_length(str(tiny_model_dir))) as handle:
        yield handle


def _new_weights(model_dir: Path, seed: int) -> bytes:
    import torch
    from safetensors.torch import load_file

    from rlplat.weights import state_dict_to_bytes

    gen = torch.Generator().manual_seed(seed)
    sd = load_file(str(model_dir / "model.safetensors"))
    sd.pop("lm_head.weight", None)  # tied embeddings
    return state_dict_to_bytes({k: v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in sd.items()})


def _check_continued(s: Sample, before: Sample, version: int, engine_logps: list[float]) -> None:
    """`s` continues `before` (cut at the end of the previous step) under policy `version`."""
    n0 = before.num_response_tokens
    assert s.prompt_token_ids == before.prompt_token_ids and n0 < s.num_response_tokens
    for name in ("response_token_ids", "loss_mask", "logp_behaviour", "policy_versions"):
        assert getattr(s, name)[:n0] == getattr(before, name), name
    assert before.loss_mask[-4:] == [0] * 4  # it was cut after an observation; the model speaks next
    assert max(before.policy_versions) < version and set(s.policy_versions[n0:]) == {version}
    model = [i for i in range(n0, s.num_response_tokens) if s.loss_mask[i]]  # continuation: the new weights'
    assert_logps_close([s.logp_behaviour[i] for i in model], [engine_logps[i] for i in model])


def test_april_continues_cut_episodes_in_later_steps(ray_session, rollout_actor, tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    """N = 1 group of 2 episodes per step, N' = 3 issued: a step stops when one group is complete, the others'
    episodes are cut between turns and continue next step (env rebuilt by replay) after new weights are loaded."""
    from transformers import AutoTokenizer

    from rlplat.driver.experience import EpisodeApril, RolloutOptions, Tokens
    from rlplat.driver.workers import Workers
    from rlplat.envs.episode_april import make_episode_april
    from rlplat.types import SamplingOptions

    cfg = load_config(ROOT / "configs/envpool_cartpole.yaml", smoke_overrides(tiny_model_dir, tmp_path, **{
        "rollout.num_prompts_per_step": 1, "rollout.num_samples_per_prompt": 2, "rollout.partial.enabled": "true",
        "rollout.partial.over_provision": 3.0}))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    workers = Workers(rollout=[rollout_actor], learner=None)
    mgr = make_episode_april(cfg.env, cfg.rollout.partial, num_groups_per_step=1, group_size=2)
    sampling = SamplingOptions(max_new_tokens=cfg.rollout.max_new_tokens, temperature=1.0)
    opts = dataclasses.replace(RolloutOptions.from_spec(cfg), sampling=sampling)
    rollout = EpisodeApril(opts, workers, mgr, Tokens(str(tiny_model_dir)))
    cut: dict[tuple[int, int], Sample] = {}
    num_continued = trained = 0
    try:
        for step in range(1, 6):
            version = step - 1
            if step > 1:
                ray_session.get(rollout_actor.load_weights.remote(_new_weights(tiny_model_dir, step), version))
            groups, metrics = rollout.collect(step, version)
            assert len(groups) == 1 and groups[0].is_complete and len(groups[0].samples) == 2
            trained += groups[0].num_response_tokens
            assert metrics["april/tokens_trained"] == trained
            assert metrics["april/tokens_generated"] == trained + metrics["april/tokens_buffered"]
            assert metrics["april/tokens_buffered"] == sum(g.num_response_tokens for g in mgr.buffer)
            assert metrics["april/episodes_buffered"] == len([ep for g in mgr.buffer for ep in g.episodes
                                                              if not ep.sample.is_finished])
            for s in groups[0].samples:
                turns = _model_turns(s, tok)
                assert s.is_finished and s.reward is not None and turns <= cfg.env.max_turns
                if (s.group_id, s.sample_index) in cut:
                    scored = ray_session.get(rollout_actor.score.remote(s.prompt_token_ids + s.response_token_ids))
                    _check_continued(s, cut[s.group_id, s.sample_index], version,
                                     scored[len(s.prompt_token_ids) - 1:])
                    num_continued += 1
            assert metrics["april/num_samples_multi_version"] == sum(len(set(s.policy_versions)) > 1
                                                                     for s in groups[0].samples)
            cut = {(ep.sample.group_id, ep.sample.sample_index): copy.deepcopy(ep.sample)
                   for g in mgr.buffer for ep in g.episodes if not ep.sample.is_finished}
            for s in cut.values():
                _model_turns(s, tok)
            if num_continued and step >= 3:
                break
    finally:
        mgr.close()
    assert num_continued >= 1, "no episode was cut and continued"


def test_april_env_run_checkpoints_cut_episodes_and_resumes(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The user path: `train` with env episodes + APRIL + PPO (critic and GAE over the episode's model tokens), the
    pool in an EnvActor (`env.in_actor`), a checkpoint at every step, then `--resume` for one more step. The
    checkpoint carries the buffered episode groups; the resumed run continues the same MLflow run."""
    from rlplat import checkpoint as ck
    from rlplat.envs.episode_april import EpisodeGroup

    extra = {**TINY, "experiment.num_steps": 2, "rollout.partial.enabled": "true", "checkpoint.every_steps": 1,
             "rollout.num_prompts_per_step": 1, "rollout.partial.over_provision": 3.0, "env.max_turns": 24,
             "env.in_actor": "true", **_algorithm_overrides("ppo.yaml")}
    first = loop.train(load_config(ROOT / "configs/envpool_cartpole.yaml",
                                         smoke_overrides(tiny_model_dir, tmp_path, **extra)), progress=False)
    saved = ck.load_driver_state(tmp_path / "checkpoints" / "step_000002")
    assert saved.partial_buffer and all(isinstance(g, EpisodeGroup) for g in saved.partial_buffer)
    client = MlflowClient(first.tracking_uri)
    metrics = client.get_run(first.run_id).data.metrics
    buffered = sum(g.group.num_response_tokens for g in saved.partial_buffer)
    assert metrics["april/tokens_buffered"] == buffered  # what the checkpoint holds is what the ledger says
    ledger = metrics["april/tokens_trained"] + buffered + metrics["april/tokens_dropped"]
    assert metrics["april/tokens_generated"] == ledger

    extra["experiment.num_steps"] = 3
    second = loop.train(load_config(ROOT / "configs/envpool_cartpole.yaml",
                                          smoke_overrides(tiny_model_dir, tmp_path, **extra)), progress=False,
                              resume=True)
    assert second.run_id == first.run_id
    steps = [m.step for m in client.get_metric_history(second.run_id, "env/episode_return_mean")]
    assert steps == [1, 2, 3]
    for key in ("loss/policy", "loss/value"):
        values = client.get_metric_history(second.run_id, key)
        assert [m.step for m in values] == [1, 2, 3] and all(math.isfinite(m.value) for m in values), key

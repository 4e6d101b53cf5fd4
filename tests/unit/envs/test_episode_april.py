"""APRIL for env episodes: real EnvPool CartPole pools and a scripted worker (CPU, a few seconds, no Ray, no vLLM).

The scripted policy depends only on the episode's context (and its group id), so an episode cut at a step
boundary and continued next step must come out token for token like the same episode played in one go.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable

import pytest

from rlplat.config import EnvConfig, PartialRolloutConfig
from rlplat.envs.agent_loop import EpisodeBatch, EpisodeBudget, EpisodeFormat, play_episodes
from rlplat.envs.episode_april import EpisodeAprilManager, make_episode_april, replay
from rlplat.envs.registry import make_episode_env
from rlplat.envs.text_env import EnvPoolTextEnv
from rlplat.types import FinishReason, Sample, SamplingOptions

EOS = 1
G = 2  # episodes per seed
FMT = EpisodeFormat(prompt_template="{observation}", observation_template="|{observation}>")
SAMPLING = SamplingOptions(max_new_tokens=999, temperature=1.0)
CARTPOLE = EnvConfig(task_id="CartPole-v1", renderer="compact")


class CharCodec:
    """One token per character (its code point); EOS is id 1 and decodes to nothing."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids if i != EOS)


def _lean(context: str) -> str:
    """Push towards where the pole falls (balances for 40+ steps); always "r" falls after 8-10 steps."""
    obs = context.rsplit("|", 1)[-1].rstrip(">")
    return "r" if int(obs[:2]) + int(obs[2:4]) > 0 else "l"


def _by_parity(sample: Sample, context: str) -> str:
    """Odd groups balance (run to the turn budget), even groups always push right (end after 8-10 turns)."""
    return _lean(context) if sample.group_id % 2 else "r"


class ScriptedWorker:
    """Replies policy(sample, context) + EOS with log-prob -0.1 * (1 + version); can fail on a given call."""

    def __init__(self, policy: Callable[[Sample, str], str] = _by_parity, *, fail_on_call: int | None = None) -> None:
        self.policy, self.fail_on_call, self.num_calls = policy, fail_on_call, 0

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        self.num_calls += 1
        await asyncio.sleep(0)
        if self.num_calls == self.fail_on_call:
            raise RuntimeError("worker died")
        for s in samples:
            ids = (CharCodec().encode(self.policy(s, CharCodec().decode(s.prompt_token_ids + s.response_token_ids)))
                   + [EOS])[: sampling.max_new_tokens]
            s.extend(ids, [-0.1 * (1 + policy_version)] * len(ids), policy_version, FinishReason.STOP)
        return samples


def _budget(max_turns: int = 16) -> EpisodeBudget:
    return EpisodeBudget(max_turns=max_turns, max_new_tokens_per_turn=4, max_response_tokens=10_000)


def _manager(over_provision: float = 2.0, max_age: int = 0) -> EpisodeAprilManager:
    partial = PartialRolloutConfig(enabled=True, over_provision=over_provision, max_age_in_versions=max_age)
    return make_episode_april(CARTPOLE, partial, num_groups_per_step=1, group_size=G)


def _step(mgr: EpisodeAprilManager, step: int, version: int, worker: ScriptedWorker | None = None,
          num_groups: int = 1, max_turns: int = 16) -> EpisodeBatch:
    """Step `step`: fresh seeds 10 * step + k (even k: even group ids), group ids 100 * step + k."""
    return asyncio.run(mgr.collect([worker or ScriptedWorker()], CharCodec(), num_groups=num_groups,
                                   first_seed=10 * step, first_group_id=100 * step, budget=_budget(max_turns),
                                   fmt=FMT, sampling=SAMPLING, policy_version=version))


def _reference(seed: int, group_id: int, max_turns: int = 16) -> EpisodeBatch:
    """The same group played in one go (version 0)."""
    env = make_episode_env(CARTPOLE, G)
    try:
        return asyncio.run(play_episodes(env, [ScriptedWorker()], CharCodec(), seeds=[seed], num_samples_per_seed=G,
                                         first_group_id=group_id, budget=_budget(max_turns), fmt=FMT,
                                         sampling=SAMPLING, policy_version=0))
    finally:
        env.close()


def _balanced(batch: EpisodeBatch) -> None:
    m = batch.metrics
    accounted = m["april/tokens_trained"] + m["april/tokens_buffered"] + m["april/tokens_dropped"]
    assert m["april/tokens_generated"] == accounted


# ------------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("renderer", ["default", "compact"])
def test_cartpole_replays_identically_from_its_seed_in_another_pool(renderer: str) -> None:
    """The claim the replay rests on: same seed + same actions = same trajectory, whatever pool, slot, mode or
    neighbours (the default renderer prints the full float state)."""
    cfg = EnvConfig(task_id="CartPole-v1", renderer=renderer)
    actions = (["right", "left", "left", "xx", "right"] * 10) if renderer == "default" else (["r", "l", "l", "?"] * 10)
    trajectories = []
    for num_envs, batch_size, slot, seeds in ((3, None, 1, [5, 7, 9]), (4, 1, 3, [1, 1, 2, 7])):
        env = make_episode_env(cfg, num_envs, batch_size=batch_size)
        first = env.reset(seeds)
        trajectory = [first[slot]]
        for action in actions:
            if batch_size is None:  # sync mode: every live env steps together
                (r, *_) = [r for r in env.step(range(num_envs), [action] * num_envs) if r.env_id == slot]
            else:
                (r,) = env.step([slot], [action])
            trajectory.append((r.observation, r.reward, r.done, r.invalid_action))
            if r.done:
                break
        env.close()
        trajectories.append(trajectory)
    assert trajectories[0] == trajectories[1] and trajectories[0][-1][2]  # played to the end, identically


def test_replay_rejects_an_episode_the_env_does_not_reproduce() -> None:
    mgr = _manager()
    _step(mgr, 1, 0)
    kept = mgr.state()[0].episodes[0]
    assert kept.actions and not kept.sample.is_finished
    env = make_episode_env(CARTPOLE, 1, batch_size=1)
    env.reset([kept.seed])
    kept.env_id = 0
    kept.env_return += 1.0  # not what the env will pay
    with pytest.raises(RuntimeError, match="not deterministic"):
        replay(env, [kept])
    env.close()
    mgr.close()


# ------------------------------------------------------------------------------------------------ continuation
def test_cut_episodes_continue_next_step_like_an_uninterrupted_play() -> None:
    mgr = _manager()
    # Step 1 (version 0): group 100 (always right) ends after ~10 turns; group 101 (balancing) is cut there.
    b1 = _step(mgr, 1, 0)
    assert [g.group_id for g in b1.groups] == [100] and all(s.is_finished for s in b1.groups[0].samples)
    (kept,) = mgr.buffer
    assert kept.group_id == 101 and not kept.is_complete
    cut_turns = kept.episodes[0].num_turns
    assert 1 <= cut_turns < 16 and b1.metrics["april/num_turns"] == cut_turns
    for ep in kept.episodes:  # cut after an env turn: its last observation is in the response, mask 0
        assert ep.sample.finish_reason is FinishReason.PENDING and ep.sample.loss_mask[-6:] == [0] * 6
        assert len(ep.actions) == ep.num_turns == cut_turns
    assert b1.metrics["april/episodes_buffered"] == G and b1.metrics["april/groups_buffered"] == 1
    assert b1.metrics["april/num_groups_issued"] == 2 and b1.metrics["env/num_episodes"] == G
    assert b1.metrics["rollout/off_policy_token_fraction"] == 0.0
    _balanced(b1)
    prefix = [list(ep.sample.response_token_ids) for ep in kept.episodes]

    # Step 2 (version 1): 101 continues (replayed env) and completes before the fresh group 200.
    b2 = _step(mgr, 2, 1)
    assert [g.group_id for g in b2.groups] == [101]
    assert b2.metrics["april/env_replay_steps"] == G * cut_turns and b2.metrics["april/num_groups_from_buffer"] == 1
    ref = _reference(seed=kept.seed, group_id=101)
    for got, want, ids0 in zip(b2.episodes, ref.episodes, prefix, strict=True):
        s, r = got.sample, want.sample
        n0, n = len(ids0), s.num_response_tokens
        assert s.response_token_ids[:n0] == ids0
        assert (s.prompt_token_ids, s.response_token_ids, s.loss_mask) == (r.prompt_token_ids, r.response_token_ids,
                                                                           r.loss_mask)
        assert (got.num_turns, got.actions, got.env_return, s.finish_reason, s.reward) == (
            want.num_turns, want.actions, want.env_return, r.finish_reason, r.reward)
        assert got.num_turns == 16 and s.finish_reason is FinishReason.LENGTH
        assert s.policy_versions == [0] * n0 + [1] * (n - n0)  # prefix old policy, continuation new
        model_logps = [lp for lp, m in zip(s.logp_behaviour, s.loss_mask, strict=True) if m]
        assert model_logps == [-0.1] * 2 * cut_turns + [-0.1 * 2] * (2 * 16 - 2 * cut_turns)  # 2 tokens a turn
        assert all(lp == 0.0 for lp, m in zip(s.logp_behaviour, s.loss_mask, strict=True) if not m)
    assert b2.metrics["april/num_samples_multi_version"] == G
    assert 0 < b2.metrics["rollout/off_policy_token_fraction"] < 1
    _balanced(b2)

    # Step 3 (version 2): the fresh group of step 2 was cut too and continues; the ledger still balances.
    (g200,) = mgr.buffer
    assert g200.group_id == 200 and not g200.is_complete
    b3 = _step(mgr, 3, 2)
    assert [g.group_id for g in b3.groups] == [200] and b3.groups[0].is_complete
    _balanced(b3)
    assert b3.metrics["april/tokens_generated"] == (b3.metrics["april/tokens_trained"]
                                                    + b3.metrics["april/tokens_buffered"])
    mgr.close()


def test_complete_extras_are_served_first_without_playing() -> None:
    mgr = _manager(over_provision=2.0)
    always_right = ScriptedWorker(lambda s, c: "r")
    b1 = _step(mgr, 1, 0, always_right, max_turns=4)  # both groups hit the 4-turn budget in the same turn
    assert [g.group_id for g in b1.groups] == [100]
    assert b1.metrics["april/num_groups_extra_complete"] == 1 and mgr.buffer[0].is_complete
    b2 = _step(mgr, 2, 1, always_right, max_turns=4)
    assert [g.group_id for g in b2.groups] == [101] and b2.metrics["april/num_turns"] == 0
    assert b2.metrics["april/num_groups_fresh"] == 0 and len(mgr.buffer) == 0
    assert all(s.reward == 4.0 for s in b2.groups[0].samples)
    _balanced(b2)
    mgr.close()


def test_state_restores_into_a_new_manager_and_continues_identically() -> None:
    a, b = _manager(), _manager()
    _step(a, 1, 0)
    saved = pickle.loads(pickle.dumps(a.state()))  # what a checkpoint writes and reads
    b.load_state(saved)
    assert b.ledger.buffered == b.ledger.generated == sum(g.num_response_tokens for g in saved)
    assert saved[0].episodes[0] is not a.buffer[0].episodes[0]  # a snapshot, not the live objects
    batch_a, batch_b = _step(a, 2, 1), _step(b, 2, 1)
    for x, y in zip(batch_a.episodes, batch_b.episodes, strict=True):
        assert x.sample == y.sample and x.actions == y.actions
    a.close()
    b.close()


def test_a_failing_worker_leaves_every_group_in_the_buffer_and_a_retry_finishes() -> None:
    mgr = _manager()
    with pytest.raises(RuntimeError, match="worker died"):
        _step(mgr, 1, 0, ScriptedWorker(fail_on_call=5))  # 4 turns played, the 5th model turn fails
    assert [g.group_id for g in mgr.buffer] == [100, 101]
    assert all(ep.num_turns == 4 and not ep.sample.is_finished for g in mgr.buffer for ep in g.episodes)
    assert mgr.ledger.generated == mgr.ledger.buffered > 0
    batch = _step(mgr, 1, 0)  # retry: both groups come from the buffer, no fresh seed is needed
    assert [g.group_id for g in batch.groups] == [100] and batch.metrics["april/num_groups_fresh"] == 0
    ref = _reference(seed=10, group_id=100)
    assert [ep.sample.response_token_ids for ep in batch.episodes] == [ep.sample.response_token_ids
                                                                       for ep in ref.episodes]
    _balanced(batch)
    mgr.close()


def test_max_age_drops_stale_groups_and_accounts_their_tokens() -> None:
    mgr = _manager(max_age=1)
    _step(mgr, 1, 0)
    held = mgr.buffer[0].num_response_tokens
    batch = _step(mgr, 2, 2)  # version 2 - max age 1: tokens of version 0 are too old
    assert batch.metrics["april/num_groups_dropped"] == 1 and batch.metrics["april/tokens_dropped"] == held
    assert batch.metrics["april/num_groups_fresh"] == 2
    _balanced(batch)
    mgr.close()


def test_manager_refuses_a_pool_too_small_for_over_provisioning() -> None:
    mgr = EpisodeAprilManager(make_episode_env(CARTPOLE, G, batch_size=1), group_size=G, over_provision=2.0)
    with pytest.raises(ValueError, match="need 4"):
        _step(mgr, 1, 0)
    mgr.close()


# ------------------------------------------------------------------------------------------------ text env release
def test_episode_ended_by_its_token_budget_does_not_stall_sync_mode() -> None:
    """One episode of a group spends its token budget turns before its sibling: its env is released (free to
    run filler steps), so EnvPool's sync mode keeps stepping the sibling."""
    env = make_episode_env(CARTPOLE, G)
    chatty = ScriptedWorker(lambda s, c: _lean(c) + ("" if s.sample_index == 0 else " ok"))
    budget = EpisodeBudget(max_turns=40, max_new_tokens_per_turn=8, max_response_tokens=60)
    batch = asyncio.run(play_episodes(env, [chatty], CharCodec(), seeds=[0], num_samples_per_seed=G,
                                      first_group_id=1, budget=budget, fmt=FMT, sampling=SAMPLING, policy_version=0))
    env.close()
    quiet, verbose = batch.episodes
    assert quiet.num_turns > verbose.num_turns and {quiet.sample.finish_reason, verbose.sample.finish_reason} == {
        FinishReason.LENGTH}


def test_release_refuses_envs_without_a_waiting_episode() -> None:
    env: EnvPoolTextEnv = make_episode_env(CARTPOLE, 2)
    env.reset([0, 1])
    env.release([1])
    with pytest.raises(ValueError, match="no episode waiting"):
        env.release([1])
    with pytest.raises(ValueError, match="not waiting for an action"):
        env.step([1], ["r"])
    (result,) = env.step([0], ["r"])  # env 1 runs a filler step beside it
    assert result.env_id == 0 and env.num_filler_steps == 1
    env.close()

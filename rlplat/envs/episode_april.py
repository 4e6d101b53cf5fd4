"""APRIL for env episodes (ALGORITHMS.md section 1 applied to `rlplat.envs.agent_loop`). Pure asyncio, no Ray.

Units are groups: the `group_size` episodes of one env seed. Per step the trainer needs N complete groups, and
`EpisodeAprilManager.collect`:

1. drops buffered groups older than `max_age_in_versions` (0 = never; `rlplat.rollout.april` has the rule);
2. issues N' = ceil(over_provision * N) groups: the buffer first (FIFO; complete leftovers count at once,
   unfinished ones continue), then fresh seeds `first_seed + k` (group ids `first_group_id + k`);
3. plays every live episode turn by turn (one model turn each, then one env step each, as `play_episodes`) and
   stops after the first turn at whose end N groups have all their episodes finished;
4. returns the first N complete groups (in completion order, ties in issue order). Complete groups beyond N go
   to the FRONT of the buffer; unfinished groups go back whole (finished episodes wait for their siblings):
   those taken from the buffer to the front, fresh ones to the back.

Where an episode is cut: between an env turn and its next model turn (its last observation is in its response,
loss mask 0). A turn is short (`max_new_tokens_per_turn`), so the manager waits for the turn instead of aborting
requests; the next step continues with a model turn under the new weights, so the sample's per-token
`policy_versions` show both versions. Nothing generated is discarded: the `TokenLedger` keeps
generated == trained + buffered + dropped (response tokens, model and env).

Env state of a kept episode: rebuilt by replay, not kept in the pool. EnvPool env state cannot be pickled, and an
EnvPool env cannot be reseeded (`EnvPoolTextEnv` builds a new pool per set of seeds), so a pool cannot hold the
kept episodes while fresh seeds start beside them. Instead each step resets the pool with the kept episodes'
seeds (plus the fresh ones) and plays every kept episode's recorded action texts (`Episode.actions`) again;
EnvPool envs are deterministic given their seed and actions (tests/unit/envs/test_episode_april.py checks this
for CartPole). After the replay the first observation must give the same prompt tokens, and the replayed step
rewards and the last observation must equal what the episode recorded, otherwise `collect` raises RuntimeError
(an env that is not deterministic cannot be continued). So the kept state is plain data: `state()` is a
checkpoint's copy of the buffer. Cost: a replay plays each kept episode's turns again (microseconds per CartPole
step). Replay steps some envs while others wait, which EnvPool's sync mode cannot do, so the pool runs in async
mode with batch_size 1 (`make_episode_april`).

If a worker fails mid-step (e.g. a Ray actor dies), every issued group goes back to the buffer as it stood at
its last complete turn (a failed model turn appends nothing), so the caller can retry the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlplat.config import EnvConfig, PartialRolloutConfig
from rlplat.envs.agent_loop import (
    Clock,
    Codec,
    Episode,
    EpisodeBatch,
    EpisodeBudget,
    EpisodeEnv,
    EpisodeFormat,
    MemoCodec,
    TurnWorker,
    episode_metrics,
    start_groups,
)
from rlplat.envs.registry import make_episode_env
from rlplat.envs.text_env import TextEnv
from rlplat.turns import TurnAprilManager, num_groups_to_issue, play_round
from rlplat.types import Group, SamplingOptions, TokenLedger


@dataclass(slots=True, kw_only=True)
class EpisodeGroup:
    """The episodes of one seed (one GRPO group), finished or not: what the buffer and a checkpoint hold."""

    group_id: int
    seed: int
    episodes: list[Episode]

    @property
    def group(self) -> Group:
        """The training view: the episodes' samples (the objects themselves)."""
        return Group(group_id=self.group_id, prompt_id=self.seed, samples=[ep.sample for ep in self.episodes])

    @property
    def is_complete(self) -> bool:
        return all(ep.sample.is_finished for ep in self.episodes)

    @property
    def num_response_tokens(self) -> int:
        return sum(ep.sample.num_response_tokens for ep in self.episodes)

    @property
    def oldest_policy_version(self) -> int | None:
        return self.group.oldest_policy_version

    def validate(self) -> None:
        self.group.validate()
        for ep in self.episodes:
            if ep.seed != self.seed or len(ep.actions) != ep.num_turns - ep.turn_done:
                raise ValueError(f"episode {ep.sample.group_id}/{ep.sample.sample_index}: seed {ep.seed} (group "
                                 f"{self.seed}), {len(ep.actions)} recorded actions for {ep.num_turns} turns")


class EpisodeAprilManager(TurnAprilManager[EpisodeGroup]):
    """Keeps N' groups of episodes in play, stops at N complete ones, and buffers the rest (module docstring).

    env: at least N' * group_size envs, any subset of which can step while the others wait (an
    `EnvPoolTextEnv` with batch_size=1). The manager resets it every step that plays; close() closes it.
    """

    def __init__(self, env: TextEnv, *, group_size: int, over_provision: float = 2.0,
                 max_age_in_versions: int = 0) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        super().__init__(over_provision=over_provision, max_age_in_versions=max_age_in_versions)
        self.env = env
        self.group_size = group_size

    @property
    def num_episodes_buffered(self) -> int:
        """Unfinished episodes held (each continues next step)."""
        return sum(not ep.sample.is_finished for g in self.buffer for ep in g.episodes)

    # ----------------------------------------------------------------------------------------------- checkpoint
    def load_state(self, groups: list[EpisodeGroup], ledger: TokenLedger | None = None) -> None:
        for g in groups:
            g.validate()
        super().load_state(groups, ledger)

    def close(self) -> None:
        self.env.close()

    # ----------------------------------------------------------------------------------------------- one step
    async def collect(self, workers: Sequence[TurnWorker], codec: Codec, *, num_groups: int, first_seed: int,
                      first_group_id: int, budget: EpisodeBudget, fmt: EpisodeFormat, sampling: SamplingOptions,
                      policy_version: int) -> EpisodeBatch:
        """This step's `num_groups` complete groups, their episodes, and env + APRIL metrics.

        Fresh group k (k < N') plays seed first_seed + k with id first_group_id + k: the caller keeps both unique
        across steps. Samples of finished episodes carry the scaled return in `sample.reward`.
        """
        if not workers:
            raise ValueError("collect needs at least one worker")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        n_issue = self.num_groups_to_issue(num_groups)
        if self.env.num_envs < n_issue * self.group_size:
            raise ValueError(f"env has {self.env.num_envs} envs; {n_issue} groups x {self.group_size} episodes need "
                             f"{n_issue * self.group_size}")
        clock, codec = Clock(), MemoCodec(codec)
        step = self.pending.begin(n_issue, policy_version)
        num_fresh = n_issue - len(step.taken) if len(step.complete) < num_groups else 0
        turns = replay_steps = 0
        try:
            if len(step.complete) < num_groups:
                step.running, replay_steps = self._start(step.running, codec, fmt, budget, num_fresh, first_seed,
                                                         first_group_id, clock)
                turns = await self._play(step.running, step.complete, num_groups, workers, codec, budget, fmt,
                                         sampling, policy_version, clock)
        except BaseException:
            self.pending.abandon(step)  # as they stand: the caller may retry the step
            raise
        batch, extra = self.pending.finish(step, num_groups)
        groups = [g.group for g in batch]
        episodes = [ep for g in batch for ep in g.episodes]
        for ep in episodes:
            ep.sample.validate()
        stats = {"april/episodes_buffered": float(self.num_episodes_buffered), "april/num_turns": float(turns),
                 "april/env_replay_steps": float(replay_steps)}
        metrics = episode_metrics(episodes) | {"time/env_s": clock.s} | stats | \
            self.pending.metrics(step, num_fresh, extra, policy_version, groups)
        return EpisodeBatch(groups=groups, episodes=episodes, metrics=metrics)

    def _start(self, running: list[EpisodeGroup], codec: Codec, fmt: EpisodeFormat, budget: EpisodeBudget,
               num_fresh: int, first_seed: int, first_group_id: int,
               clock: Clock) -> tuple[list[EpisodeGroup], int]:
        """Reset the pool: envs 0..K-1 for the K unfinished kept episodes (replayed to where they were cut), then
        the fresh groups' episodes; spare envs start from the first seed and are released at once. Returns
        (running groups in issue order, replay steps)."""
        kept = [ep for g in running for ep in g.episodes if not ep.sample.is_finished]
        fresh_seeds = [first_seed + k for k in range(num_fresh)]
        seeds = [ep.seed for ep in kept] + [s for s in fresh_seeds for _ in range(self.group_size)]
        num_used = len(seeds)
        seeds += [first_seed] * (self.env.num_envs - num_used)
        with clock:
            first = self.env.reset(seeds)
            self.env.release(range(num_used, self.env.num_envs))
            for env_id, ep in enumerate(kept):
                ep.env_id = env_id
                if codec.encode(fmt.prompt(first[env_id], self.env.spec.action_help)) != ep.sample.prompt_token_ids:
                    raise RuntimeError(f"episode {ep.sample.group_id}/{ep.sample.sample_index}: seed {ep.seed} "
                                       "gives a different first observation than when the episode started")
            steps = replay(self.env, kept)
        new = start_groups(first[len(kept):], self.env.spec.action_help, codec, fmt, budget, seeds=fresh_seeds,
                           num_samples_per_seed=self.group_size, first_group_id=first_group_id,
                           first_env_id=len(kept), clock=clock)
        fresh = [EpisodeGroup(group_id=first_group_id + k, seed=seed, episodes=eps)
                 for k, (seed, eps) in enumerate(zip(fresh_seeds, new, strict=True))]
        return running + fresh, steps

    async def _play(self, running: list[EpisodeGroup], complete: list[EpisodeGroup], num_groups: int,
                    workers: Sequence[TurnWorker], codec: Codec, budget: EpisodeBudget, fmt: EpisodeFormat,
                    sampling: SamplingOptions, version: int, clock: Clock) -> int:
        """Turns until `num_groups` groups are complete; moves complete groups from `running` to `complete` (in
        the order they complete) and returns the number of turns played."""
        live = [ep for g in running for ep in g.episodes if not ep.sample.is_finished]
        env, turns = EpisodeEnv(self.env, codec, fmt, clock), 0
        while live and len(complete) < num_groups:
            live = await play_round(live, workers, env, budget, sampling, version)
            turns += 1
            done = [g for g in running if g.is_complete]
            complete += done
            running[:] = [g for g in running if not g.is_complete]
        return turns


def replay(env: TextEnv, episodes: Sequence[Episode]) -> int:
    """Play each episode's recorded actions again in its env (`ep.env_id`, just reset to `ep.seed`), all episodes
    one turn at a time; returns the steps played. Raises RuntimeError if an env does not reproduce the episode
    (a step ends it early, or the step rewards or the last observation differ from those recorded)."""
    returns = [0.0] * len(episodes)
    last = [ep.observation for ep in episodes]
    steps = 0
    for r in range(max((len(ep.actions) for ep in episodes), default=0)):
        idx = [i for i, ep in enumerate(episodes) if len(ep.actions) > r]
        results = env.step([episodes[i].env_id for i in idx], [episodes[i].actions[r] for i in idx])
        steps += len(idx)
        for i, result in zip(idx, results, strict=True):
            ep = episodes[i]
            if result.done:
                raise RuntimeError(f"episode {ep.sample.group_id}/{ep.sample.sample_index} (seed {ep.seed}) ended at "
                                   f"replayed turn {r + 1} of {len(ep.actions)}: the env is not deterministic")
            returns[i] += result.reward
            if r == len(ep.actions) - 1:
                last[i] = result.observation
    for ep, ret, obs in zip(episodes, returns, last, strict=True):
        if ret != ep.env_return or obs != ep.observation:
            raise RuntimeError(f"episode {ep.sample.group_id}/{ep.sample.sample_index} (seed {ep.seed}) replayed to "
                               f"return {ret} and observation {obs!r}, not {ep.env_return} and {ep.observation!r}: "
                               "the env is not deterministic given its seed and actions")
    return steps



def make_episode_april(env_cfg: EnvConfig, partial: PartialRolloutConfig, *, num_groups_per_step: int,
                       group_size: int, make_env=make_episode_env) -> EpisodeAprilManager:
    """The manager for a spec: its own pool of N' x group_size envs in async mode with batch_size 1, built by
    `make_env(env_cfg, num_envs, batch_size=1)` (the driver's pool by default; the controller may pass an
    EnvActor's)."""
    num_envs = num_groups_to_issue(num_groups_per_step, partial.over_provision) * group_size
    return EpisodeAprilManager(make_env(env_cfg, num_envs, batch_size=1), group_size=group_size,
                               over_provision=partial.over_provision,
                               max_age_in_versions=partial.max_age_in_versions)

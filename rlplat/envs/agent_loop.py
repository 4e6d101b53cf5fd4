"""The agent loop: a language model plays multi-turn episodes in a `TextEnv`, one episode per `Sample`.

An episode's response tokens interleave model turns and environment turns:

    prompt = prompt_template(first observation)
    response = [model turn 1][env turn 1][model turn 2][env turn 2] ... [model turn k]
    model turn: generated tokens (loss mask 1, behaviour log-prob, policy version), until EOS or the per-turn budget
    env turn:   observation_template(observation after the action), tokenised (loss mask 0, log-prob 0.0)

The action text is the decoded model turn (special tokens skipped); the env's renderer parses it, and an
unparseable reply plays the renderer's default action with the env's invalid-action penalty (never a crash). An
episode ends when the env says done (finish_reason STOP), after `max_turns` model turns, or when the next env
turn plus one model token would not fit the token budget (finish_reason LENGTH for both; the env of such an
episode is released, so EnvPool's sync mode keeps stepping the others). The observation after the last action is
never appended: no model token would follow it, so it could not be trained on.

Groups: every seed is played `num_samples_per_seed` times, all episodes of one seed forming one GRPO group (envs
given equal seeds start from identical states). The whole step's episodes share one `TextEnv` with
num_envs = seeds x samples; each turn every live episode generates (one batched `generate` per worker) and then
every live episode steps at once (one `env.step`): a round of `rlplat.turns.play_round`, the multi-turn driver
shared with tool-calling trajectories, with `EpisodeEnv` as the env side (the budgets are `rlplat.turns.TurnLimits`,
here named `EpisodeBudget`). With APRIL (`rlplat.envs.episode_april`) a step stops once N
groups are complete and the other episodes continue next step; every episode records its action texts for that.

Reward: the episode return R = return_scale * sum over turns of the env reward, where an invalid action's reward
includes the env's `invalid_action_penalty` (that penalty is the only shaping). It is stored in `sample.reward`,
where the `env_return` reward term reads it; scoring then replaces `sample.reward` with the combined reward.

Where the env pool lives: by default in the caller's process (the driver). EnvPool is C++ with its own thread
pool, a CartPole step costs microseconds, and the loop alternates generate -> step every turn, so an actor adds
a Ray round trip per turn. A pool too heavy for the driver's node (many Atari envs) goes into an EnvActor
(`env.in_actor: true`, rlplat/actors/env.py) behind the same TextEnv interface.

Tokenizers without whitespace (the tiny char model drops it when encoding): set `replace_whitespace` so that
rendered observations and templates keep their structure (e.g. grid rows separated by "|"), and use a compact
renderer (`rlplat.envs.renderers.COMPACT_RENDERERS`, `env.renderer: compact`) when observations must fit a small
context.

No Ray here: workers are anything with `async generate(samples, sampling, policy_version)` (`rlplat.turns.TurnWorker`:
a `RolloutEngine`, a `RemoteRolloutWorker`, or a test fake).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlplat.config import EnvConfig
from rlplat.envs.text_env import StepResult, TextEnv
from rlplat.turns import Codec, ModelTurn, Reply, TurnLimits, TurnWorker, play_round
from rlplat.types import FinishReason, Group, Sample, SamplingOptions

__all__ = ["Codec", "TurnWorker"]  # the multi-turn protocols (rlplat.turns), as env callers import them

EpisodeBudget = TurnLimits  # model turns, tokens per turn, response tokens, context: the shared multi-turn limits


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodeFormat:
    """How observations become text around the model's turns. Templates take {observation} and {action_help}."""

    prompt_template: str = "{action_help}\n{observation}\n"  # the first observation, as the prompt
    observation_template: str = "\n{observation}\n"  # every later observation, after the model's turn
    replace_whitespace: str | None = None  # replace each whitespace run of the final text by this (None: keep)
    return_scale: float = 1.0  # sample reward = return_scale * episode return

    def __post_init__(self) -> None:
        for name in ("prompt_template", "observation_template"):
            if "{observation}" not in getattr(self, name):
                raise ValueError(f"{name} must contain {{observation}}")

    def prompt(self, observation: str, action_help: str) -> str:
        return self._clean(self.prompt_template.format(observation=observation, action_help=action_help))

    def env_turn(self, observation: str, action_help: str) -> str:
        return self._clean(self.observation_template.format(observation=observation, action_help=action_help))

    def _clean(self, text: str) -> str:
        return text if self.replace_whitespace is None else _WHITESPACE.sub(self.replace_whitespace, text)


_WHITESPACE = re.compile(r"\s+")


@dataclass(slots=True)
class Episode:
    """Driver-side record of one episode: its sample, its turn state (`rlplat.turns.Turns`) and what the env has
    said so far."""

    sample: Sample
    env_id: int
    seed: int
    env_return: float = 0.0  # sum of env rewards, penalties included, unscaled
    num_turns: int = 0  # model turns completed
    num_invalid_actions: int = 0
    env_done: bool = False  # the env ended the episode (terminated or truncated by its step limit)
    turn_start: int = 0  # index in the response where the last model turn played in the env starts
    actions: list[str] = field(default_factory=list)  # action text of every turn played (replayed by APRIL)
    observation: str = ""  # the latest rendered observation (APRIL checks its replay against it)
    partial_turn: list[int] = field(default_factory=list)  # the current model turn's ids (rlplat.turns)
    turn_done: bool = False  # the current model turn is complete and not yet played in the env


@dataclass(slots=True)
class EpisodeBatch:
    """One step's episodes, grouped by seed, and their metrics ("env/...", "time/env_s"; with APRIL "april/...")."""

    groups: list[Group]
    episodes: list[Episode]
    metrics: dict[str, float] = field(default_factory=dict)


class EpisodeEnv:
    """A `TextEnv` as the `TurnEnv` of episodes: each round steps every episode whose turn is done at once
    (one `env.step`), with its model turn decoded as the action."""

    def __init__(self, env: TextEnv, codec: Codec, fmt: EpisodeFormat, clock: Clock) -> None:
        self.env, self.codec, self.fmt, self.clock = env, codec, fmt, clock

    async def respond(self, episodes: list[Episode], turns: list[ModelTurn]) -> list[Reply]:
        """Step the episodes; the next observation for those that go on. An episode that ends sets its sample's
        reward (the scaled return); one a budget ends releases its env."""
        with self.clock:
            actions = [self.codec.decode(t.token_ids) for t in turns]
            results = self.env.step([ep.env_id for ep in episodes], actions)
        replies, released = [], []
        for ep, turn, action, result in zip(episodes, turns, actions, results, strict=True):
            _record(ep, turn, action, result)
            reply = self._reply(ep, turn, result)
            if reply.finish is not None:
                ep.sample.reward = self.fmt.return_scale * ep.env_return
                if not ep.env_done:
                    released.append(ep.env_id)
            replies.append(reply)
        if released:
            self.env.release(released)
        return replies

    def _reply(self, ep: Episode, turn: ModelTurn, result: StepResult) -> Reply:
        if ep.env_done:
            return Reply.end(FinishReason.STOP)
        if turn.is_last:
            return Reply.end(FinishReason.LENGTH, "turns")
        with self.clock:
            obs_ids = self.codec.encode(self.fmt.env_turn(result.observation, self.env.spec.action_help))
        if len(obs_ids) > turn.room:  # no room for the observation and one model token
            return Reply.end(FinishReason.LENGTH, "tokens")
        return Reply(obs_ids)


async def play_episodes(
    env: TextEnv,
    workers: Sequence[TurnWorker],
    codec: Codec,
    *,
    seeds: Sequence[int],
    num_samples_per_seed: int,
    first_group_id: int,
    budget: EpisodeBudget,
    fmt: EpisodeFormat,
    sampling: SamplingOptions,
    policy_version: int,
) -> EpisodeBatch:
    """Play `num_samples_per_seed` episodes from each seed to the end (env done, turn or token budget).

    env.num_envs must equal len(seeds) * num_samples_per_seed. `sampling.max_new_tokens` is ignored (the budget
    says how many tokens each turn may take). Group k holds the episodes of seeds[k]; its id is first_group_id + k,
    its prompt_id the seed. Returns the groups with `sample.reward` set to the scaled episode return.
    """
    if not workers:
        raise ValueError("play_episodes needs at least one worker")
    if env.num_envs != len(seeds) * num_samples_per_seed:
        raise ValueError(f"env has {env.num_envs} envs; {len(seeds)} seeds x {num_samples_per_seed} samples need "
                         f"{len(seeds) * num_samples_per_seed}")
    clock = Clock()
    codec = MemoCodec(codec)
    with clock:
        env_seeds = [int(s) for s in seeds for _ in range(num_samples_per_seed)]
        first = env.reset(env_seeds)
    groups = start_groups(first, env.spec.action_help, codec, fmt, budget, seeds=seeds,
                          num_samples_per_seed=num_samples_per_seed, first_group_id=first_group_id, clock=clock)
    episodes = [ep for g in groups for ep in g]
    live, turns = episodes, EpisodeEnv(env, codec, fmt, clock)
    while live:
        live = await play_round(live, workers, turns, budget, sampling, policy_version)
    for ep in episodes:
        ep.sample.validate()
    return EpisodeBatch(groups=[Group(group_id=first_group_id + k, prompt_id=int(seed), samples=[ep.sample for ep in g])
                                for k, (seed, g) in enumerate(zip(seeds, groups, strict=True))],
                        episodes=episodes, metrics=episode_metrics(episodes) | {"time/env_s": clock.s})


def start_groups(first_observations: Sequence[str], action_help: str, codec: Codec, fmt: EpisodeFormat,
                 budget: EpisodeBudget, *, seeds: Sequence[int], num_samples_per_seed: int, first_group_id: int,
                 clock: Clock, first_env_id: int = 0) -> list[list[Episode]]:
    """New episodes, one list per seed: episode i of seed k plays in env first_env_id + k * n + i, whose first
    observation is first_observations[k * n + i] (n = num_samples_per_seed). Group k gets id first_group_id + k."""
    groups = []
    for k, seed in enumerate(seeds):
        group = []
        for i in range(num_samples_per_seed):
            j = k * num_samples_per_seed + i
            with clock:
                prompt = codec.encode(fmt.prompt(first_observations[j], action_help))
            sample = Sample(group_id=first_group_id + k, sample_index=i, prompt_id=int(seed), prompt_token_ids=prompt)
            ep = Episode(sample=sample, env_id=first_env_id + j, seed=int(seed), observation=first_observations[j])
            if budget.tokens_left(sample) < 1:
                raise ValueError(f"the prompt of episode {ep.env_id} ({len(prompt)} tokens) leaves no room for a "
                                 f"model turn within the context of {budget.max_context_tokens} tokens")
            group.append(ep)
        groups.append(group)
    return groups


def _record(ep: Episode, turn: ModelTurn, action: str, result: StepResult) -> None:
    ep.env_return += result.reward
    ep.num_invalid_actions += result.invalid_action
    ep.env_done = result.done
    ep.turn_start = ep.sample.num_response_tokens - len(turn.token_ids)
    ep.actions.append(action)
    ep.observation = result.observation


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Means over episodes: return (unscaled), length in turns, invalid actions per turn, and the share of
    episodes the env ended (the rest hit a turn or token budget); model tokens per response token."""
    n = max(len(episodes), 1)
    turns = sum(ep.num_turns for ep in episodes)
    response = sum(ep.sample.num_response_tokens for ep in episodes)
    return {
        "env/episode_return_mean": sum(ep.env_return for ep in episodes) / n,
        "env/episode_length_turns_mean": turns / n,
        "env/invalid_action_rate": sum(ep.num_invalid_actions for ep in episodes) / max(turns, 1),
        "env/env_done_rate": sum(ep.env_done for ep in episodes) / n,
        "env/model_token_share": sum(sum(ep.sample.loss_mask) for ep in episodes) / max(response, 1),
        "env/num_episodes": float(len(episodes)),
    }


class MemoCodec:
    """Remembers encodings and decodings for one call of play_episodes: a tokenizer call costs ~80 us, and
    observations and short actions repeat a lot (a compact CartPole observation has 361 possible texts)."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._encoded: dict[str, list[int]] = {}
        self._decoded: dict[tuple[int, ...], str] = {}

    def encode(self, text: str) -> list[int]:
        ids = self._encoded.get(text)
        if ids is None:
            ids = self._encoded[text] = self._codec.encode(text)
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        key = tuple(ids)
        text = self._decoded.get(key)
        if text is None:
            text = self._decoded[key] = self._codec.decode(ids)
        return text


class Clock:
    """Accumulates the seconds spent inside `with clock:` blocks (env, render, parse, tokenise observations)."""

    def __init__(self) -> None:
        self.s = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.s += time.perf_counter() - self._t0


# ------------------------------------------------------------------------------------------------ from the spec
def episode_format(cfg: EnvConfig) -> EpisodeFormat:
    return EpisodeFormat(prompt_template=cfg.prompt_template, observation_template=cfg.observation_template,
                         replace_whitespace=cfg.replace_whitespace, return_scale=cfg.return_scale)


def episode_budget(cfg: EnvConfig, max_response_tokens: int, max_context_tokens: int | None) -> EpisodeBudget:
    return EpisodeBudget(max_turns=cfg.max_turns, max_new_tokens_per_turn=cfg.max_new_tokens_per_turn,
                         max_response_tokens=max_response_tokens, max_context_tokens=max_context_tokens)

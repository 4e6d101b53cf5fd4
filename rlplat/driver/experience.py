"""Experience: a step's groups of samples, scored, with their metrics. No Ray here: remote calls go through
`Workers` (driver/workers.py), so everything below runs on fakes too.

Five ways to get a step's N complete groups, chosen once at set-up (`make_rollout`) behind one interface, `Rollout`:
    PromptBatches   N fresh prompts x G samples, generated as one batch;
    PromptApril     APRIL (`rollout.partial`): partial buffer first, then fresh prompts, stop at N complete;
    AgentTrajectories  N prompts x G tool-calling trajectories (`agent.tools`), tools run in the sandbox; with
                    `rollout.partial`, APRIL: unfinished trajectories continue next step;
    Episodes        N env seeds x G episodes, played turn by turn (`env.task_id`);
    EpisodeApril    episodes with APRIL: cut episodes continue next step.
`Experience.produce` runs one of them, scores the groups and measures them; the loop (or the async producer) calls it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rlplat.actors.env import make_env
from rlplat.algos.advantages import ADVANTAGE_FNS
from rlplat.algos.filters import nonzero_variance_groups
from rlplat.config import ConfigError, RunConfig
from rlplat.data.datasets import EpochCursor
from rlplat.data.producer import Producer
from rlplat.driver.prompts import PromptSet
from rlplat.driver.workers import Workers
from rlplat.envs.agent_loop import EpisodeBudget, EpisodeFormat, episode_budget, episode_format, play_episodes
from rlplat.envs.episode_april import EpisodeAprilManager, make_episode_april
from rlplat.envs.text_env import TextEnv
from rlplat.models import max_context_length
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import RewardError, score_with_spec
from rlplat.rollout.april_manager import AprilManager
from rlplat.types import Group, Sample, SamplingOptions, TrainBatch

if TYPE_CHECKING:
    from rlplat.agents.loop import TrajectoryGroup


def first_group_id(step: int, draw: int = 0, attempt: int = 0) -> int:
    """Group ids unique across the run: step s, its draw d (dynamic sampling) and retry attempt a (engine died).
    At most 10,000 groups per attempt, 9 attempts, 9 draws."""
    return step * 1_000_000 + draw * 100_000 + attempt * 10_000


class Tokens:
    """The tokenizer, used by the driver only to encode prompts/answers and decode samples for rewards and logs."""

    def __init__(self, model_path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path)
        if self.tok.eos_token_id is None:
            raise ConfigError(f"model.path: tokenizer in {model_path!r} has no EOS token")
        self.eos_token_id: int = self.tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """One tokenizer call for many texts (a third of the time of one call each, `rlplat bench data`)."""
        return self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutOptions:
    """What the rollout roles need from the spec, translated once at set-up."""

    num_groups: int  # rollout.num_prompts_per_step
    group_size: int  # rollout.num_samples_per_prompt
    sampling: SamplingOptions
    env_seed: int = 0
    budget: EpisodeBudget | None = None  # env episodes only
    fmt: EpisodeFormat | None = None

    @classmethod
    def from_spec(cls, cfg: RunConfig) -> RolloutOptions:
        r = cfg.rollout
        sampling = SamplingOptions(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                   ignore_eos=r.ignore_eos,
                                   seed=cfg.experiment.seed if r.reproducible_sampling else None)
        opts = cls(num_groups=r.num_prompts_per_step, group_size=r.num_samples_per_prompt, sampling=sampling)
        if not cfg.env.task_id:
            return opts
        budget = episode_budget(cfg.env, r.max_new_tokens, max_context_length(cfg.model.path))
        return dataclasses.replace(opts, env_seed=cfg.env.seed, budget=budget, fmt=episode_format(cfg.env))


# ------------------------------------------------------------------------------------------------------ rollouts
class Rollout(Protocol):
    def collect(self, step: int, version: int, draw: int = 0) -> tuple[list[Group], dict[str, float]]:
        """Step `step`'s N complete groups, generated with policy `version`, and rollout metrics. `draw` > 0: more
        groups for the same step (dynamic sampling), with fresh prompts and group ids."""
        ...

    def state(self) -> list[Any]:
        """The partial buffer a checkpoint carries (empty without APRIL)."""
        ...

    def load_state(self, state: list[Any]) -> None: ...

    def close(self) -> None: ...


class PromptBatches:
    """N fresh prompts x G samples, one batch; `Workers.generate` re-issues them if an engine dies."""

    def __init__(self, opts: RolloutOptions, workers: Workers, cursor: EpochCursor, prompts: PromptSet) -> None:
        self.opts, self.workers, self.cursor, self.prompts = opts, workers, cursor, prompts

    def collect(self, step: int, version: int, draw: int = 0) -> tuple[list[Group], dict[str, float]]:
        groups = self.prompts.groups(self.cursor.take(self.opts.num_groups), self.opts.group_size,
                                     first_group_id=first_group_id(step, draw))
        return self.workers.generate(groups, self.opts.sampling, version), {}

    def state(self) -> list[Any]:
        return []

    def load_state(self, state: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


class PromptApril(PromptBatches):
    """APRIL over the engines (rlplat/rollout/april_manager.py): stop at N complete groups, keep the rest."""

    def __init__(self, opts: RolloutOptions, workers: Workers, cursor: EpochCursor, prompts: PromptSet, *,
                 over_provision: float, max_age_in_versions: int) -> None:
        super().__init__(opts, workers, cursor, prompts)
        self.april = AprilManager(workers.engines(), over_provision=over_provision,
                                  max_age_in_versions=max_age_in_versions)

    def collect(self, step: int, version: int, draw: int = 0) -> tuple[list[Group], dict[str, float]]:
        def attempt(k: int) -> tuple[list[Group], dict[str, float]]:
            first_id = first_group_id(step, draw, k)  # fresh() runs at most once per attempt

            def fresh(n: int) -> list[Group]:
                return self.prompts.groups(self.cursor.take(n), self.opts.group_size, first_group_id=first_id)

            result = asyncio.run(self.april.collect(self.opts.num_groups, fresh, self.opts.sampling, version))
            return result.groups, result.metrics

        return self.workers.retrying(version, attempt, "its groups wait in the partial buffer")

    def state(self) -> list[Any]:
        return self.april.state()

    def load_state(self, state: list[Any]) -> None:
        self.april.load_state(state)


class Episodes:
    """N env seeds (env.seed + (step - 1) * N + k) x G episodes, played to the end through the engines and `env`.
    If an engine dies, the step's episodes are played again from their seeds (the env pool is reset)."""

    def __init__(self, opts: RolloutOptions, workers: Workers, env: TextEnv, tokens: Tokens) -> None:
        self.opts, self.workers, self.env, self.tokens = opts, workers, env, tokens

    def collect(self, step: int, version: int, draw: int = 0) -> tuple[list[Group], dict[str, float]]:
        assert draw == 0, "dynamic sampling with env episodes is refused at load time"
        o, n = self.opts, self.opts.num_groups
        assert o.budget is not None and o.fmt is not None

        def attempt(k: int) -> tuple[list[Group], dict[str, float]]:
            batch = asyncio.run(play_episodes(
                self.env, self.workers.engines(), self.tokens,
                seeds=[o.env_seed + (step - 1) * n + i for i in range(n)],
                num_samples_per_seed=o.group_size, first_group_id=first_group_id(step, 0, k),
                budget=o.budget, fmt=o.fmt, sampling=o.sampling, policy_version=version))
            return batch.groups, batch.metrics

        return self.workers.retrying(version, attempt, "replaying the step's episodes from their seeds")

    def state(self) -> list[Any]:
        return []

    def load_state(self, state: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


class EpisodeApril(Episodes):
    """Episodes with APRIL: cut episodes continue first (their envs replayed from seed and actions), then fresh
    seeds env.seed + (step - 1) * N' + k; stops once N groups are complete."""

    def __init__(self, opts: RolloutOptions, workers: Workers, april: EpisodeAprilManager, tokens: Tokens) -> None:
        super().__init__(opts, workers, april.env, tokens)
        self.april = april

    def collect(self, step: int, version: int, draw: int = 0) -> tuple[list[Group], dict[str, float]]:
        assert draw == 0, "dynamic sampling with env episodes is refused at load time"
        o, n = self.opts, self.opts.num_groups
        assert o.budget is not None and o.fmt is not None

        def attempt(k: int) -> tuple[list[Group], dict[str, float]]:
            batch = asyncio.run(self.april.collect(
                self.workers.engines(), self.tokens, num_groups=n,
                first_seed=o.env_seed + (step - 1) * self.april.num_groups_to_issue(n),
                first_group_id=first_group_id(step, 0, k),
                budget=o.budget, fmt=o.fmt, sampling=o.sampling, policy_version=version))
            return batch.groups, batch.metrics

        return self.workers.retrying(version, attempt, "its episodes wait in the buffer")

    def state(self) -> list[Any]:
        return self.april.state()

    def load_state(self, state: list[Any]) -> None:
        self.april.load_state(state)

    def close(self) -> None:
        self.april.close()


class AgentTrajectories(PromptBatches):
    """Tool-calling trajectories (agent.tools): N prompts x G trajectories, each played turn by turn through the
    engines and the tools (rlplat/agents/loop.py); tool output enters as template tokens with loss mask 0. With
    APRIL (rollout.partial) a step stops at N complete groups and unfinished trajectories continue next step
    (rlplat/agents/april.py); without it, trajectories cut by a dead engine are played again from their prompts."""

    def __init__(self, cfg: RunConfig, workers: Workers, cursor: EpochCursor, prompts: PromptSet,
                 tokens: Tokens) -> None:
        from rlplat.agents.april import AgentAprilManager
        from rlplat.agents.spec import build_agent

        super().__init__(RolloutOptions.from_spec(cfg), workers, cursor, prompts)
        self.system_prompt = cfg.data.system_prompt
        self.agent, self.sandbox = build_agent(cfg, tokens.tok)
        partial = cfg.rollout.partial
        self.april = AgentAprilManager(self.agent, over_provision=partial.over_provision,
                                       max_age_in_versions=partial.max_age_in_versions) if partial.enabled else None

    def collect(self, step: int, version: int, draw: int = 0) -> tuple[list[Group], dict[str, float]]:
        if self.april is None:
            return self._collect_whole(step, version, draw)

        def attempt(k: int) -> tuple[list[Group], dict[str, float]]:
            def fresh(n: int) -> list[TrajectoryGroup]:  # called at most once per attempt
                return self._start_groups(self.cursor.take(n), first_group_id(step, draw, k))

            assert self.april is not None
            batch = asyncio.run(self.april.collect(self.workers.engines(), fresh, num_groups=self.opts.num_groups,
                                                   sampling=self.opts.sampling, policy_version=version))
            return batch.groups, batch.metrics

        return self.workers.retrying(version, attempt, "its trajectories wait in the partial buffer")

    def _collect_whole(self, step: int, version: int, draw: int) -> tuple[list[Group], dict[str, float]]:
        """N fresh groups played to their end; after a dead engine, unfinished trajectories continue (a failed
        request appends nothing; a turn whose tools were cut runs its tools again)."""
        groups = self._start_groups(self.cursor.take(self.opts.num_groups), first_group_id(step, draw))
        trajectories = [t for g in groups for t in g.trajectories]

        def attempt(_: int) -> tuple[list[Group], dict[str, float]]:
            metrics = asyncio.run(self.agent.play(trajectories, self.workers.engines(), self.opts.sampling, version))
            return [g.group for g in groups], metrics

        return self.workers.retrying(version, attempt, "its trajectories continue where they stopped")

    def _start_groups(self, ids: list[int], first_id: int) -> list[TrajectoryGroup]:
        messages = [self.prompts.messages(i, self.system_prompt) for i in ids]
        return self.agent.start_groups(messages, num_samples_per_prompt=self.opts.group_size, first_group_id=first_id,
                                       prompt_ids=ids, answers=[self.prompts.answer(i) for i in ids])

    def state(self) -> list[Any]:
        return self.april.state() if self.april is not None else []

    def load_state(self, state: list[Any]) -> None:
        if self.april is not None:
            self.april.load_state(state)

    def close(self) -> None:
        self.sandbox.close()


def make_rollout(cfg: RunConfig, workers: Workers, tokens: Tokens, cursor: EpochCursor, prompts: PromptSet,
                 env: TextEnv | None) -> Rollout:
    """The spec's rollout: prompts, tool-calling trajectories (agent.tools) or env episodes (env.task_id), with
    or without APRIL (rollout.partial)."""
    opts, partial = RolloutOptions.from_spec(cfg), cfg.rollout.partial
    if cfg.agent.tools:  # with or without APRIL (rollout.partial)
        return AgentTrajectories(cfg, workers, cursor, prompts, tokens)
    if env is None:
        if not partial.enabled:
            return PromptBatches(opts, workers, cursor, prompts)
        return PromptApril(opts, workers, cursor, prompts, over_provision=partial.over_provision,
                           max_age_in_versions=partial.max_age_in_versions)
    if not partial.enabled:
        return Episodes(opts, workers, env, tokens)
    april = make_episode_april(cfg.env, partial, num_groups_per_step=opts.num_groups, group_size=opts.group_size,
                               make_env=make_env)
    return EpisodeApril(opts, workers, april, tokens)


# ------------------------------------------------------------------------------------------------------ scoring
def reward_inputs(samples: list[Sample], tokens: Tokens, prompts: PromptSet | None = None, *,
                  env_returns: list[float] | None = None) -> RewardInputs:
    """The batch record reward functions read: token ids, decoded text, and each sample's dataset row (by its
    prompt_id in `prompts`). Each distinct answer is tokenised once (a group shares one)."""
    answers = sorted({s.answer for s in samples})
    answer_ids = dict(zip(answers, tokens.encode_many(answers), strict=True))
    return RewardInputs(
        response_token_ids=[s.response_token_ids for s in samples],
        response_texts=[tokens.decode(s.response_token_ids) for s in samples],
        answers=[s.answer for s in samples],
        answer_token_ids=[answer_ids[s.answer] for s in samples],
        eos_token_id=tokens.eos_token_id,
        env_returns=env_returns,
        columns=[prompts.columns(s.prompt_id) for s in samples] if prompts is not None else (),
    )


def score(cfg: RunConfig, groups: list[Group], tokens: Tokens, prompts: PromptSet | None,
          workers: Workers | None = None) -> dict[str, float]:
    """Set `sample.reward` on every sample; returns reward metrics. Scored here, or in the reward actor
    (placement.reward_actor) with the same functions and the same RewardError on a failure."""
    samples = [s for g in groups for s in g.samples]
    env_returns = [s.reward or 0.0 for s in samples] if cfg.env.task_id else None  # set by the episode loop
    inputs = reward_inputs(samples, tokens, None if cfg.env.task_id else prompts, env_returns=env_returns)
    if workers is not None and workers.reward is not None:
        rewards, metrics = workers.score(inputs)
    else:
        rewards, metrics = score_with_spec(cfg.reward, inputs)
    for s, r in zip(samples, rewards, strict=True):
        s.reward = r
    return metrics


class Experience:
    """One batch of scored groups per call: the rollout, then the rewards, then the rollout metrics."""

    def __init__(self, cfg: RunConfig, workers: Workers, tokens: Tokens, prompts: PromptSet, rollout: Rollout,
                 save_unscored: Any) -> None:
        self.cfg, self.workers, self.tokens, self.prompts, self.rollout = cfg, workers, tokens, prompts, rollout
        self.save_unscored = save_unscored  # (step, groups) -> path: a failed reward loses no generated work

    def produce(self, batch_index: int, version: int) -> tuple[list[Group], dict[str, float]]:
        """Batch `batch_index` (step batch_index + 1). With algorithm.dynamic_sampling, groups whose rewards all
        agree are dropped and more are drawn, at most max_draw_rounds draws; a batch still short of N groups is
        topped up with dropped ones (zero advantage: they cost compute, not signal) and the shortfall logged."""
        step, n, ds = batch_index + 1, self.cfg.rollout.num_prompts_per_step, self.cfg.algorithm.dynamic_sampling
        kept: list[Group] = []
        dropped: list[Group] = []
        metrics: dict[str, float] = {}
        t_generate = t_reward = 0.0
        for draw in range(ds.max_draw_rounds if ds.enabled else 1):
            t0 = time.perf_counter()
            groups, drawn = self.rollout.collect(step, version, draw)
            t1 = time.perf_counter()
            metrics |= drawn | self._score(step, groups)
            t_generate, t_reward = t_generate + t1 - t0, t_reward + time.perf_counter() - t1
            if not ds.enabled:
                kept = groups
                break
            signal = groups_with_signal(groups)
            kept += [g for g, s in zip(groups, signal, strict=True) if s]
            dropped += [g for g, s in zip(groups, signal, strict=True) if not s]
            if len(kept) >= n:
                break
        if ds.enabled:
            metrics |= {"dynamic/groups_drawn": float(len(kept) + len(dropped)),
                        "dynamic/groups_kept": float(len(kept)), "dynamic/groups_dropped": float(len(dropped)),
                        "dynamic/draw_rounds": float(draw + 1),
                        "dynamic/shortfall": float(max(0, n - len(kept)))}
            kept = (kept + dropped)[:n]
        return kept, metrics | rollout_metrics(kept, t_generate) | {"time/generate_s": t_generate,
                                                                     "time/reward_s": t_reward}

    def _score(self, step: int, groups: list[Group]) -> dict[str, float]:
        try:
            return score(self.cfg, groups, self.tokens, self.prompts, self.workers)
        except RewardError as e:  # keep the step's samples: a fixed reward can score them later
            raise RewardError(f"{e}; the step's samples are saved in {self.save_unscored(step, groups)}") from e


def groups_with_signal(groups: list[Group]) -> list[bool]:
    """For each group: do its rewards differ (a GRPO signal)? The rule is algos.filters.nonzero_variance_groups."""
    rewards = torch.tensor([s.reward or 0.0 for g in groups for s in g.samples], dtype=torch.float32)
    group_ids = torch.tensor([i for i, g in enumerate(groups) for _ in g.samples], dtype=torch.long)
    keep = nonzero_variance_groups(rewards, group_ids)
    starts = [0]
    for g in groups[:-1]:
        starts.append(starts[-1] + len(g.samples))
    return [bool(keep[i]) for i in starts]


# ------------------------------------------------------------------------------------------------------ batches
def make_batch(advantage: str, groups: list[Group]) -> TrainBatch:
    """Samples of whole groups with their outcome advantages (algos.ADVANTAGE_FNS). An estimator that is not an
    outcome estimator (gae) is token-level and needs the critic's values: the learner computes it from each
    sample's reward, so the batch carries none."""
    samples = [s for g in groups for s in g.samples]
    if advantage not in ADVANTAGE_FNS:
        return TrainBatch(samples=samples, advantages=None)
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    group_ids = torch.tensor([s.group_id for s in samples], dtype=torch.long)
    return TrainBatch(samples=samples, advantages=ADVANTAGE_FNS[advantage](rewards, group_ids, None).tolist())


def start_producer(cfg: RunConfig, experience: Experience, *, first_batch: int = 0,
                   restored: list[Group] | None = None) -> Producer | None:
    """With `data.store.enabled`: an ExperienceStore on TransferQueue and a producer thread feeding it.
    `restored`: a checkpoint's unconsumed groups (whole batches produced ahead), put back before it starts."""
    from rlplat.data.store import ExperienceStore

    sc = cfg.data.store
    if not sc.enabled:
        return None
    store = ExperienceStore(capacity_in_groups=cfg.store_capacity_in_groups,
                            max_staleness=sc.max_staleness, on_stale=sc.on_stale,
                            num_storage_units=sc.num_storage_units)
    producer = Producer(experience.produce, store, num_groups_per_batch=cfg.rollout.num_prompts_per_step,
                        max_staleness=sc.max_staleness, wait_for_learner=sc.on_stale == "wait",
                        interrupt=experience.workers.abort, first_batch=first_batch)
    if restored:
        store.restore(restored)
        producer.batches_produced += len(restored) // cfg.rollout.num_prompts_per_step
    producer.start()
    return producer


# ------------------------------------------------------------------------------------------------------ metrics
def batch_metrics(groups: list[Group]) -> dict[str, float]:
    """Reward and length statistics of the groups a step trains on (in async mode: as read from the store)."""
    samples = [s for g in groups for s in g.samples]
    rewards = torch.tensor([s.reward for s in samples])
    lengths = torch.tensor([float(s.num_response_tokens) for s in samples])
    return {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "rollout/response_length_mean": float(lengths.mean()),
        "rollout/response_length_max": float(lengths.max()),
    }


def rollout_metrics(groups: list[Group], seconds: float) -> dict[str, float]:
    tokens = sum(g.num_response_tokens for g in groups)
    return batch_metrics(groups) | {"perf/rollout_tokens_per_s": tokens / max(seconds, 1e-9)}


def async_metrics(producer: Producer, groups: list[Group], learner_version: int) -> dict[str, float]:
    """Queue depth, waits, dropped groups and this batch's staleness (learner version - oldest token version)."""
    stats = producer.store.stats()
    lags = [learner_version - 1 - (g.oldest_policy_version or 0) for g in groups]
    out = {k.replace("store/", "async/"): v for k, v in stats.items()}
    return out | {"async/batch_staleness_max": float(max(lags)), "async/batch_staleness_mean": sum(lags) / len(lags)}


def sample_rows(step: int, groups: list[Group], tokens: Tokens, n: int) -> list[dict[str, Any]]:
    """The first n samples as table rows for MLflow."""
    return [{"step": step, "prompt": tokens.decode(s.prompt_token_ids), "answer": s.answer,
             "response": tokens.decode(s.response_token_ids), "reward": s.reward, "finish": s.finish_reason.value}
            for s in [s for g in groups for s in g.samples][:n]]


TRAINED_GROUPS = "trained_groups.jsonl"  # in output_dir; a resume rewinds it (run_state.rewind_trained)


def record_trained(output_dir: Path, step: int, groups: list[Group]) -> None:
    """Append which prompts were trained at `step` (an audit trail: nothing trained twice or skipped)."""
    import json

    with open(output_dir / TRAINED_GROUPS, "a") as f:
        f.write(json.dumps({"step": step, "prompt_ids": [g.prompt_id for g in groups],
                            "group_ids": [g.group_id for g in groups]}) + "\n")

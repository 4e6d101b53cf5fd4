"""The training loop. Every remote call is visible here; each phase is one small helper.

    generate (vLLM actors) -> score (rewards) -> advantages -> train (learner actor) -> sync weights -> log

Synchronous and on-policy: rollout step k uses policy version k.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch

from rlplat.actors.env import make_env
from rlplat.actors.learner import LearnerActor
from rlplat.actors.reward import RewardActor
from rlplat.actors.placement_group import actor_options, cluster_gpu_count, release, reserve
from rlplat.actors.rollout import RolloutActor
from rlplat.actors.rollout_manager import RemoteRolloutWorker, RolloutManager
from rlplat.algos.advantages import ADVANTAGE_FNS
from rlplat import checkpoint as ck
from rlplat.config import ConfigError, RewardConfig, RunConfig, dump_yaml
from rlplat.data.producer import Producer
from rlplat.envs.agent_loop import episode_budget, episode_format, make_episode_env, play_episodes
from rlplat.envs.episode_april import EpisodeAprilManager, make_episode_april
from rlplat.envs.tasks import Problem, PromptCursor, make_split
from rlplat.envs.text_env import TextEnv
from rlplat.learners.replay import ReplayBuffer
from rlplat.models import check_model_dir, max_context_length
from rlplat.placement import PlacementPlan, check_gpus, plan_placement
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import RewardError, load_reward, score_with_spec
from rlplat.rollout.engine import EngineOptions, SamplingOptions
from rlplat.tracking import Tracker
from rlplat.types import Group, Sample, TrainBatch

log = logging.getLogger("rlplat")


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    output_dir: Path
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


@dataclass
class Workers:
    rollout: list  # RolloutActor handles
    learner: object  # LearnerActor handle
    call_timeout_s: float = 600.0
    num_restarts: int = 0  # rollout actors restarted and re-synced during the run
    weight_sync: str = "bytes"  # placement.weight_sync, resolved: bytes | broadcast | ipc
    weight_group_open: bool = False  # broadcast: learner and engines have joined one process group
    placement_group: object = None  # Ray placement group of a GPU plan (None on CPU)
    device: str = "cpu"  # the plan's device: the broadcast weight sync uses NCCL on gpu, gloo on cpu
    reward: object = None  # RewardActor handle (placement.reward_actor); None: rewards are scored in the driver


Partial = RolloutManager | EpisodeAprilManager | None  # APRIL's manager for prompts or for env episodes


def make_partial(cfg: RunConfig, workers: Workers) -> Partial:
    """APRIL (`rollout.partial`): the prompt manager, or the episode manager with its own env pool; its `state()`
    is the partial buffer a checkpoint carries."""
    if not cfg.rollout.partial.enabled:
        return None
    if cfg.env.task_id:
        return make_episode_april(cfg.env, cfg.rollout.partial, num_groups_per_step=cfg.rollout.num_prompts_per_step,
                                  group_size=cfg.rollout.num_samples_per_prompt, make_env=make_env)
    return RolloutManager(workers.rollout, cfg.rollout.partial)


class Tokens:
    """The tokenizer, used by the driver only to encode prompts/answers and decode samples for logging."""

    def __init__(self, model_path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path)
        if self.tok.eos_token_id is None:
            raise ConfigError(f"model.path: tokenizer in {model_path!r} has no EOS token")
        self.eos_token_id: int = self.tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------------------------------------- checks
def preflight(cfg: RunConfig) -> tuple[Tokens, list[Problem], list[Problem]]:
    """Everything that can fail on bad input, before any actor starts. Raises ConfigError with one line."""
    try:
        check_model_dir(cfg.model.path)
    except ValueError as e:
        raise ConfigError(f"model.path: {e}") from None
    for term in cfg.reward.terms:
        try:
            load_reward(term.name)
        except ValueError as e:
            raise ConfigError(f"reward.terms: {e}") from None
    tokens = Tokens(cfg.model.path)
    d = cfg.data
    train = make_split(d.task, num_digits=d.num_digits, num_prompts=d.num_train_prompts, seed=d.seed, split="train")
    evals = make_split(d.task, num_digits=d.num_digits, num_prompts=d.num_eval_prompts, seed=d.seed, split="eval")
    longest = max(len(tokens.encode(p.prompt)) for p in train + evals)
    if cfg.env.task_id:  # env episodes replace the prompt task: their prompts are rendered observations
        longest = check_env(cfg, tokens)
    context = max_context_length(cfg.model.path)
    if longest + cfg.rollout.max_new_tokens > context:
        raise ConfigError(
            f"prompts of up to {longest} tokens + rollout.max_new_tokens {cfg.rollout.max_new_tokens} exceed the "
            f"model context of {context} tokens ({cfg.model.path})"
        )
    return tokens, train, evals


# --------------------------------------------------------------------------------------------------------- setup
def init_ray(cfg: RunConfig) -> None:
    """Attach to a running cluster (`ray job submit`, RAY_ADDRESS, `ray start`), else start a local instance."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}}
    address = cfg.cluster.address
    if address not in ("auto", "local"):
        ray.init(address=address, runtime_env=env)
        return
    if address == "auto":
        try:
            ray.init(address="auto", runtime_env=env)
            return
        except ConnectionError:
            pass
    ray.init(address="local", num_cpus=cfg.cluster.num_cpus, include_dashboard=False, dashboard_host=cfg.cluster.dashboard_host,
             runtime_env=env)


def plan_for_cluster(cfg: RunConfig) -> PlacementPlan:
    """The placement plan on the attached Ray cluster; ConfigError with the numbers if it lacks the GPUs."""
    available = cluster_gpu_count()
    plan = plan_placement(cfg, available)
    check_gpus(plan, available, "the Ray cluster")
    return plan


def start_workers(cfg: RunConfig, context_len: int, plan: PlacementPlan, pg=None, *,
                  engine_model_path: str = "") -> Workers:
    """Start the rollout engines and the learner, in the plan's slots of placement group `pg` (None on CPU).
    engine_model_path: weights the engines start from until the first sync (default: model.path, as the learner)."""
    rollout = start_rollout(cfg, context_len, plan, pg, engine_model_path)
    learner = LearnerActor.options(**actor_options(plan.learner, pg)).remote(
        str(Path(cfg.model.path).resolve()), cfg.learner, cfg.algorithm, dtype=cfg.model.dtype,
        seed=cfg.experiment.seed, lora=cfg.model.lora)
    reward = None
    if plan.reward is not None:
        reward = RewardActor.options(**actor_options(plan.reward, pg)).remote(absolute_reward_paths(cfg.reward))
    return Workers(rollout=rollout, learner=learner, call_timeout_s=cfg.cluster.call_timeout_s,
                   weight_sync=plan.weight_sync, placement_group=pg, device=plan.device, reward=reward)


def absolute_reward_paths(cfg: RewardConfig) -> RewardConfig:
    """User reward files (`file.py:fn`) as absolute paths: an actor's working directory is not the driver's."""
    def absolute(name: str) -> str:
        path, sep, fn = name.rpartition(":")
        return f"{Path(path).resolve()}:{fn}" if sep and path.endswith(".py") else name

    return dataclasses.replace(cfg, terms=tuple(dataclasses.replace(t, name=absolute(t.name)) for t in cfg.terms))


def engine_options(cfg: RunConfig, context_len: int, model_path: str = "") -> EngineOptions:
    """The spec's vLLM engine options, serving `model_path` (default: model.path)."""
    return EngineOptions(
        model_path=str(Path(model_path or cfg.model.path).resolve()),
        max_model_len=context_len,
        seed=cfg.experiment.seed,
        dtype=cfg.model.dtype,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        enforce_eager=cfg.rollout.enforce_eager,
        max_num_seqs=cfg.rollout.max_num_seqs,
        stream_interval=cfg.rollout.stream_interval,
    )


def start_rollout(cfg: RunConfig, context_len: int, plan: PlacementPlan, pg=None, model_path: str = "") -> list:
    """One RolloutActor per engine slot of the plan, serving `model_path` (default: model.path); waits until up."""
    options = engine_options(cfg, context_len, model_path)
    tag = f"{cfg.experiment.name}-{os.getpid()}-{int(time.time())}"  # names let operators (and tests) find them
    rollout = [RolloutActor.options(name=f"rlplat-rollout-{tag}-{i}", **actor_options(slot, pg)).remote(options)
               for i, slot in enumerate(plan.rollout)]
    ray.get([w.start.remote() for w in rollout])
    return rollout


# --------------------------------------------------------------------------------------------------------- phases
def make_groups(problems: list[Problem], tokens: Tokens, num_samples: int, first_group_id: int) -> list[Group]:
    groups = []
    for k, p in enumerate(problems):
        prompt_ids = tokens.encode(p.prompt)
        gid = first_group_id + k
        samples = [Sample(group_id=gid, sample_index=i, prompt_id=p.prompt_id, prompt_token_ids=list(prompt_ids),
                          answer=p.answer) for i in range(num_samples)]
        groups.append(Group(group_id=gid, prompt_id=p.prompt_id, samples=samples))
    return groups


def rollout_sampling(cfg: RunConfig) -> SamplingOptions:
    """The spec's sampling for training rollouts (and sampled evaluation)."""
    r = cfg.rollout
    return SamplingOptions(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                           ignore_eos=r.ignore_eos, seed=cfg.experiment.seed if r.reproducible_sampling else None)


def generate(workers: Workers, groups: list[Group], sampling: SamplingOptions, version: int) -> list[Group]:
    """Spread whole groups over the rollout actors round-robin and wait for all of them.

    If a rollout actor dies mid-generation, Ray restarts it; the restarted engine gets the current weights and
    the step's groups are issued again (the driver still holds them as they were), so no group is lost.
    """
    for attempt in range(MAX_ROLLOUT_RETRIES + 1):
        shards = [groups[i :: len(workers.rollout)] for i in range(len(workers.rollout))]
        refs = [w.generate.remote([s for g in shard for s in g.samples], sampling, version)
                for w, shard in zip(workers.rollout, shards, strict=True) if shard]
        try:
            results = get(refs, "rollout", workers.call_timeout_s)
            break
        except ray.exceptions.RayActorError as e:
            if attempt == MAX_ROLLOUT_RETRIES:
                raise
            log.warning("a rollout worker died mid-generation (%s); re-issuing %d groups", type(e).__name__,
                        len(groups))
            recover_rollout_workers(workers, version)
    by_group: dict[int, list[Sample]] = {}
    for samples in results:
        for s in samples:
            by_group.setdefault(s.group_id, []).append(s)
    return [Group(group_id=g.group_id, prompt_id=g.prompt_id,
                  samples=sorted(by_group[g.group_id], key=lambda s: s.sample_index)) for g in groups]


MAX_ROLLOUT_RETRIES = 3


def get(refs, phase: str, timeout_s: float):
    """ray.get with a deadline; a call that exceeds it is reported with its phase instead of hanging."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{phase}: remote call did not finish within {timeout_s:.0f} s "
                           f"(cluster.call_timeout_s); the actor may be hung") from None


def loaded_version_after_restart(worker, timeout_s: float) -> int | None:
    """The weights version a rollout actor holds, waiting while Ray still restarts it (its calls then fail with
    ActorUnavailableError until the new process is up), at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return get(worker.loaded_version.remote(), "rollout restart", timeout_s)
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def recover_rollout_workers(workers: Workers, version: int) -> int:
    """Wait for restarted rollout actors and load the current weights into any engine that lost them."""
    payload, resynced = None, 0
    for w in workers.rollout:
        if loaded_version_after_restart(w, workers.call_timeout_s) != version:
            payload = payload or workers.learner.weights_bytes.remote()
            get(w.load_weights.remote(payload, version), "weight sync after restart", workers.call_timeout_s)
            resynced += 1
    workers.num_restarts += resynced
    if resynced:
        workers.weight_group_open = False  # the restarted engine left the broadcast group: form a new one
    return resynced


def rollout_step(cfg: RunConfig, workers: Workers, april: Partial, cursor: PromptCursor, tokens: Tokens,
                 sampling: SamplingOptions, step: int, version: int,
                 env: TextEnv | None = None) -> tuple[list[Group], dict[str, float]]:
    """This step's N complete groups: one synchronous full batch, or APRIL (`rollout.partial.enabled`): partial
    buffer first, then fresh prompts, abort once N are complete; returns the groups and APRIL's metrics.
    With `env` (env.task_id set): N groups of env episodes instead, and env metrics; with APRIL, `april` is the
    episode manager (`make_episode_april`), which continues cut episodes next step."""
    if env is not None:
        if isinstance(april, EpisodeAprilManager):
            return play_episodes_april_step(cfg, workers, april, tokens, sampling, step, version)
        if april is not None or cfg.rollout.partial.enabled:
            raise TypeError("rollout.partial with env episodes needs an EpisodeAprilManager (make_episode_april)")
        return play_episodes_step(cfg, workers, env, tokens, sampling, step, version)
    if april is None:  # generate() re-issues the step's groups itself if an actor dies
        groups = make_groups(cursor.take(cfg.rollout.num_prompts_per_step), tokens,
                             cfg.rollout.num_samples_per_prompt, first_group_id=step * 1_000_000)
        return generate(workers, groups, sampling, version), {}

    def collect(attempt: int) -> tuple[list[Group], dict[str, float]]:
        first_id = step * 1_000_000 + attempt * 100_000  # fresh() runs at most once per attempt: ids stay unique

        def fresh(k: int) -> list[Group]:
            return make_groups(cursor.take(k), tokens, cfg.rollout.num_samples_per_prompt, first_group_id=first_id)

        result = april.collect(cfg.rollout.num_prompts_per_step, fresh, sampling, version)
        return result.groups, result.metrics

    return with_rollout_retries(workers, version, collect, "its groups wait in the partial buffer")


def reward_inputs(samples: list[Sample], tokens: Tokens, *, env_returns: list[float] | None = None) -> RewardInputs:
    """The batch record reward functions read; each distinct answer is tokenised once (a group shares one)."""
    answer_ids = {a: tokens.encode(a) for a in {s.answer for s in samples}}
    return RewardInputs(
        response_token_ids=[s.response_token_ids for s in samples],
        response_texts=[tokens.decode(s.response_token_ids) for s in samples],
        answers=[s.answer for s in samples],
        answer_token_ids=[answer_ids[s.answer] for s in samples],
        eos_token_id=tokens.eos_token_id,
        env_returns=env_returns,
    )


def score(cfg: RunConfig, groups: list[Group], tokens: Tokens, reward_actor=None) -> dict[str, float]:
    """Set `sample.reward` on every sample; returns reward metrics. Scored in the driver, or by `reward_actor`
    (placement.reward_actor) with the same functions and the same RewardError on a failure."""
    samples = [s for g in groups for s in g.samples]
    env_returns = [s.reward or 0.0 for s in samples] if cfg.env.task_id else None  # set by play_episodes
    inputs = reward_inputs(samples, tokens, env_returns=env_returns)
    if reward_actor is not None:
        scored = get(reward_actor.score.remote(inputs), "reward", cfg.cluster.call_timeout_s)
        if isinstance(scored, str):
            raise RewardError(scored)
        rewards, metrics = scored
    else:
        rewards, metrics = score_with_spec(cfg.reward, inputs)
    for s, r in zip(samples, rewards, strict=True):
        s.reward = r
    return metrics


def make_batch(cfg: RunConfig, groups: list[Group]) -> TrainBatch:
    """Samples of whole groups with their outcome advantages. With a critic (advantage: gae) advantages are
    token-level and need values, so the learner computes them from each sample's reward."""
    samples = [s for g in groups for s in g.samples]
    if cfg.algorithm.advantage == "gae":
        return TrainBatch(samples=samples, advantages=None)
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    group_ids = torch.tensor([s.group_id for s in samples], dtype=torch.long)
    adv = ADVANTAGE_FNS[cfg.algorithm.advantage](rewards, group_ids, None)
    return TrainBatch(samples=samples, advantages=adv.tolist())


def train_on(cfg: RunConfig, workers: Workers, batch: TrainBatch, step: int) -> dict[str, float]:
    """One learner step. A learner failure stops the run, pointing at the checkpoint to resume from."""
    try:
        return get(workers.learner.train_step.remote(batch), "train", workers.call_timeout_s)
    except ray.exceptions.RayActorError as e:
        latest = ck.latest(ck.checkpoint_root(cfg.output_dir))
        where = f"resume from {latest} with `rlplat train SPEC --resume`" if latest else "no checkpoint was written yet"
        raise RuntimeError(f"the learner failed at step {step} ({type(e).__name__}); {where}") from e


def sync_weights(workers: Workers, version: int) -> None:
    """Learner weights -> every engine, in place (tokens generated from then on carry `version`), by
    `placement.weight_sync`: bytes through Ray's object store, a process-group broadcast, or CUDA IPC.
    Generation may keep running meanwhile."""
    try:
        if workers.weight_sync == "broadcast":
            open_weight_group(workers)
            meta = workers.learner.weight_meta.remote()
            get([workers.learner.broadcast_weights.remote(),
                 *(w.receive_weights.remote("receive_broadcast", meta, version) for w in workers.rollout)],
                "weight sync", workers.call_timeout_s)
        elif workers.weight_sync == "ipc":
            payload = workers.learner.ipc_payload.remote()
            try:
                get([w.receive_weights.remote("receive_ipc", payload, version) for w in workers.rollout],
                    "weight sync", workers.call_timeout_s)
            finally:  # also when an engine died mid-sync: the learner lets go of the shared tensors
                get(workers.learner.release_ipc.remote(), "weight sync", workers.call_timeout_s)
        else:
            payload = workers.learner.weights_bytes.remote()
            get([w.load_weights.remote(payload, version) for w in workers.rollout], "weight sync",
                workers.call_timeout_s)
    except ray.exceptions.RayActorError:
        recover_rollout_workers(workers, version)  # a rollout actor died: it comes back with these weights


def open_weight_group(workers: Workers) -> None:
    """Once (and again after a rollout actor restart): the learner is rank 0, engine i is rank i + 1."""
    if workers.weight_group_open:
        return
    host, port = get(workers.learner.free_address.remote(), "weight group", workers.call_timeout_s)
    world = len(workers.rollout) + 1
    backend = "nccl" if workers.device == "gpu" else "gloo"
    get([workers.learner.open_weight_group.remote(backend, host, port, world),
         *(w.rpc.remote("open_weight_group", backend, host, port, i + 1, world)
           for i, w in enumerate(workers.rollout))],
        "weight group", workers.call_timeout_s)
    workers.weight_group_open = True


def start_producer(cfg: RunConfig, workers: Workers, produce, *, first_batch: int = 0,
                   restored: list[Group] | None = None) -> Producer | None:
    """With `data.store.enabled`: an ExperienceStore on TransferQueue and a producer thread feeding it.
    `restored`: a checkpoint's unconsumed groups (whole batches produced ahead), put back before it starts."""
    from rlplat.data.store import ExperienceStore

    sc = cfg.data.store
    if not sc.enabled:
        return None
    capacity = sc.capacity_in_groups or (sc.max_staleness + 1) * cfg.rollout.num_prompts_per_step
    store = ExperienceStore(capacity_in_groups=max(capacity, cfg.rollout.num_prompts_per_step),
                            max_staleness=sc.max_staleness, on_stale=sc.on_stale,
                            num_storage_units=sc.num_storage_units)

    def interrupt() -> None:
        ray.get([w.abort.remote() for w in workers.rollout])

    producer = Producer(produce, store, num_groups_per_batch=cfg.rollout.num_prompts_per_step,
                        max_staleness=sc.max_staleness, wait_for_learner=sc.on_stale == "wait", interrupt=interrupt,
                        first_batch=first_batch)
    if restored:
        store.restore(restored)
        producer.batches_produced += len(restored) // cfg.rollout.num_prompts_per_step
    producer.start()
    return producer


def async_metrics(producer: Producer, groups: list[Group], learner_version: int) -> dict[str, float]:
    """Queue depth, waits, dropped groups and this batch's staleness (learner version - oldest token version)."""
    stats = producer.store.stats()
    lags = [learner_version - 1 - (g.oldest_policy_version or 0) for g in groups]
    out = {k.replace("store/", "async/"): v for k, v in stats.items()}
    return out | {"async/batch_staleness_max": float(max(lags)), "async/batch_staleness_mean": sum(lags) / len(lags)}


def verify_sync(workers: Workers, token_ids: list[int]) -> dict[str, float]:
    """Check every engine holds the learner's weights: checksum of the tensors vLLM keeps readable, and the
    largest log-prob difference on one sequence (covers the linears that vLLM's CPU backend repacks)."""
    names = ray.get(workers.rollout[0].rpc.remote("readable_parameter_names"))
    expected = ray.get(workers.learner.engine_layout_checksum.remote(names))
    learner_logps = ray.get(workers.learner.sequence_logps.remote(token_ids))
    match, diff = 1.0, 0.0
    for w in workers.rollout:
        match = min(match, float(ray.get(w.rpc.remote("checksum_weights", names)) == expected))
        engine_logps = ray.get(w.score.remote(token_ids))
        diff = max(diff, max(abs(a - b) for a, b in zip(engine_logps, learner_logps, strict=True)))
    return {"sync/checksum_match": match, "sync/max_logp_diff": diff}


def evaluate(workers: Workers, problems: list[Problem], tokens: Tokens, max_new_tokens: int) -> dict[str, float]:
    """Greedy decoding on the eval split: exact-match rate and per-position digit accuracy."""
    from rlplat.rewards.basic import digit_accuracy, exact_match

    groups = make_groups(problems, tokens, 1, first_group_id=-len(problems) - 1)
    groups = generate(workers, groups, SamplingOptions(max_new_tokens=max_new_tokens, temperature=0.0), -1)
    inputs = reward_inputs([g.samples[0] for g in groups], tokens)
    return {"eval/exact_match": float(exact_match(inputs).mean()), "eval/digit_accuracy": float(digit_accuracy(inputs).mean())}


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


def sample_rows(step: int, groups: list[Group], tokens: Tokens, n: int) -> list[dict]:
    rows = []
    for s in [s for g in groups for s in g.samples][:n]:
        rows.append({"step": step, "prompt": tokens.decode(s.prompt_token_ids), "answer": s.answer,
                     "response": tokens.decode(s.response_token_ids), "reward": s.reward,
                     "finish": s.finish_reason.value})
    return rows


# --------------------------------------------------------------------------------------------------------- env episodes
def check_env(cfg: RunConfig, tokens: Tokens) -> int:
    """Spec checks for env episodes; returns the longest prompt (in tokens) of a few sample episodes."""
    if not any(t.name == "env_return" for t in cfg.reward.terms):
        raise ConfigError("reward.terms: env.task_id is set but no term is env_return, so episode returns "
                          "would be ignored")
    try:
        env = make_episode_env(cfg.env, num_envs=8)
    except ValueError as e:
        raise ConfigError(f"env.task_id: {e}") from None
    try:
        fmt = episode_format(cfg.env)
        return max(len(tokens.encode(fmt.prompt(obs, env.spec.action_help))) for obs in env.reset(range(8)))
    finally:
        env.close()


def play_episodes_step(cfg: RunConfig, workers: Workers, env: TextEnv, tokens: Tokens,
                       sampling: SamplingOptions, step: int, version: int) -> tuple[list[Group], dict[str, float]]:
    """Step `step`'s groups: num_prompts_per_step fresh env seeds x num_samples_per_prompt episodes each, played
    turn by turn through the rollout actors (one visible generate.remote per actor and turn) and the driver's pool.
    If a rollout actor dies mid-step, its restarted engine gets the current weights and the step's episodes are
    played again from their seeds (no episode of the step had finished training; the env pool is reset)."""
    n = cfg.rollout.num_prompts_per_step

    def play(attempt: int) -> tuple[list[Group], dict[str, float]]:
        batch = asyncio.run(play_episodes(
            env, [RemoteRolloutWorker(w) for w in workers.rollout], tokens,
            seeds=[cfg.env.seed + (step - 1) * n + k for k in range(n)],
            num_samples_per_seed=cfg.rollout.num_samples_per_prompt,
            first_group_id=step * 1_000_000 + attempt * 100_000,
            budget=episode_budget(cfg.env, sampling.max_new_tokens, max_context_length(cfg.model.path)),
            fmt=episode_format(cfg.env), sampling=sampling, policy_version=version))
        return batch.groups, batch.metrics

    return with_rollout_retries(workers, version, play, "replaying the step's episodes from their seeds")


def play_episodes_april_step(cfg: RunConfig, workers: Workers, april: EpisodeAprilManager, tokens: Tokens,
                             sampling: SamplingOptions, step: int,
                             version: int) -> tuple[list[Group], dict[str, float]]:
    """Step `step`'s groups with APRIL: episodes cut last step continue first (their envs replayed from seed and
    actions), then fresh seeds cfg.env.seed + (step - 1) * N' + k; stops once N groups are complete. If a rollout
    actor dies, every group stays in the manager's buffer and the step is retried on the recovered actors."""
    n = cfg.rollout.num_prompts_per_step

    def play(attempt: int) -> tuple[list[Group], dict[str, float]]:
        batch = asyncio.run(april.collect(
            [RemoteRolloutWorker(w) for w in workers.rollout], tokens, num_groups=n,
            first_seed=cfg.env.seed + (step - 1) * april.num_groups_to_issue(n),
            first_group_id=step * 1_000_000 + attempt * 100_000,
            budget=episode_budget(cfg.env, sampling.max_new_tokens, max_context_length(cfg.model.path)),
            fmt=episode_format(cfg.env), sampling=sampling, policy_version=version))
        return batch.groups, batch.metrics

    return with_rollout_retries(workers, version, play, "its episodes wait in the buffer")


def with_rollout_retries(workers: Workers, version: int, attempt_fn, on_retry: str):
    """attempt_fn(attempt), again after a rollout actor died (Ray restarts it; it gets the current weights),
    at most MAX_ROLLOUT_RETRIES times. `on_retry` says in the warning what happens to the step's work."""
    for attempt in range(MAX_ROLLOUT_RETRIES + 1):
        try:
            return attempt_fn(attempt)
        except ray.exceptions.RayActorError as e:
            if attempt == MAX_ROLLOUT_RETRIES:
                raise
            log.warning("a rollout worker died mid-step (%s); %s", type(e).__name__, on_retry)
            recover_rollout_workers(workers, version)
    raise AssertionError("unreachable")


def evaluate_policy(cfg: RunConfig, workers: Workers, env: TextEnv | None, problems: list[Problem],
                    tokens: Tokens) -> dict[str, float]:
    """Greedy evaluation: the prompt task's eval split, or with an env one episode from each of env.num_envs
    held-out seeds (2**30 + env.seed + i; training seeds count up from env.seed)."""
    if env is None:
        return evaluate(workers, problems, tokens, cfg.rollout.max_new_tokens)
    batch = asyncio.run(play_episodes(
        env, [RemoteRolloutWorker(w) for w in workers.rollout], tokens,
        seeds=[2**30 + cfg.env.seed + i for i in range(env.num_envs)], num_samples_per_seed=1,
        first_group_id=-env.num_envs - 1,
        budget=episode_budget(cfg.env, cfg.rollout.max_new_tokens, max_context_length(cfg.model.path)),
        fmt=episode_format(cfg.env), sampling=SamplingOptions(max_new_tokens=1, temperature=0.0), policy_version=-1))
    return {k.replace("env/", "eval/"): v for k, v in batch.metrics.items() if k.startswith("env/")}


# --------------------------------------------------------------------------------------------------------- loop
def train(cfg: RunConfig, *, progress: bool = True, resume: bool = False) -> RunResult:
    """Run the experiment `cfg`; returns where its MLflow run lives. Bad input fails before any actor starts.

    resume (or checkpoint.resume: auto): continue from the latest checkpoint in the output directory, in the same
    MLflow run with continuous step numbers.
    """
    from tqdm import tqdm

    tokens, train_problems, eval_problems = preflight(cfg)
    resumed = find_checkpoint(cfg, required=resume) if resume or cfg.checkpoint.resume == "auto" else None
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    (cfg.output_dir / "spec.yaml").write_text(dump_yaml(cfg))
    init_ray(cfg)
    plan = plan_for_cluster(cfg)  # too few GPUs: ConfigError with the numbers, before anything starts
    log.info("%s", plan.describe())
    pg = reserve(plan, cfg.placement.placement_timeout_s)  # GPUs taken but never freed: ConfigError after a timeout
    tracker = Tracker(cfg, run_id=resumed[1].run_id if resumed else None, tags=run_tags())
    tracker.set_tag("rlplat.placement", plan.describe())
    workers = start_workers(cfg, max_context_length(cfg.model.path), plan, pg)
    # APRIL (rollout.partial); `april.state()` is its partial buffer, which a checkpoint must carry
    april = make_partial(cfg, workers)
    env = make_env(cfg.env, cfg.num_samples_per_step) if cfg.env.task_id else None  # driver, or env.in_actor
    cursor = PromptCursor(train_problems, seed=cfg.data.seed)
    sampling = rollout_sampling(cfg)
    version, status, producer = 0, "FAILED", None
    replay = ReplayBuffer(cfg.algorithm.remix, seed=cfg.experiment.seed)  # ReMix: past groups; inert otherwise
    start_step = 1
    try:
        if resumed:
            version = restore_checkpoint(resumed, workers, cursor, april)
            if resumed[1].replay:
                replay.load_state(resumed[1].replay)
            start_step = resumed[1].step + 1
        else:
            tracker.log_metrics(0, evaluate_policy(cfg, workers, env, eval_problems, tokens))

        def produce(batch_index: int, policy_version: int) -> tuple[list[Group], dict[str, float]]:
            t_start = time.perf_counter()
            groups, produced = rollout_step(cfg, workers, april, cursor, tokens, sampling, batch_index + 1,
                                            policy_version, env=env)
            t_scored = time.perf_counter()
            try:
                produced |= score(cfg, groups, tokens, workers.reward)
            except RewardError as e:  # keep the step's samples: a fixed reward can score them later
                raise RewardError(f"{e}; the step's samples are saved in {save_unscored(cfg, batch_index + 1, groups)}") from e
            return groups, produced | rollout_metrics(groups, t_scored - t_start) | {
                "time/generate_s": t_scored - t_start, "time/reward_s": time.perf_counter() - t_scored}

        producer = start_producer(cfg, workers, produce, first_batch=start_step - 1,
                                  restored=resumed[1].store_groups if resumed else [])
        groups: list[Group] = []
        for step in tqdm(range(start_step, cfg.experiment.num_steps + 1), desc="train", disable=not progress):
            t0 = time.perf_counter()
            groups, metrics = producer.next_batch() if producer else produce(step - 1, version)
            metrics |= batch_metrics(groups)  # exactly the trained groups (async: maybe several batches, or restored)
            t1 = time.perf_counter()
            replayed = replay.sample(step, version, len(groups))
            batch = make_batch(cfg, groups + replayed)
            t2 = time.perf_counter()
            metrics |= train_on(cfg, workers, batch, step)
            t3 = time.perf_counter()
            sync_weights(workers, version + 1)
            replay.add(version, groups)
            version += 1
            if producer:
                producer.set_learner_version(version)
                metrics |= async_metrics(producer, groups, version)
            t4 = time.perf_counter()
            metrics |= {"replay/num_groups": float(len(replayed)), "faults/rollout_restarts": float(workers.num_restarts)}
            # time/rollout_s: how long the learner waited for this batch (all of rollout + reward when synchronous)
            metrics |= {"time/rollout_s": t1 - t0, "time/make_batch_s": t2 - t1, "time/train_s": t3 - t2,
                        "time/weight_sync_s": t4 - t3, "time/step_s": t4 - t0,
                        "perf/train_tokens_per_s": batch.num_tokens / max(t3 - t2, 1e-9)}
            tracker.log_metrics(step, metrics)
            record_trained(cfg, step, groups)
            every, last = cfg.checkpoint.every_steps, cfg.experiment.num_steps
            if every and (step % every == 0 or step == last):
                save_checkpoint(cfg, step, version, tracker.run_id, workers, cursor, april, producer, replay)
            if step % cfg.tracking.log_samples_every_steps == 0 or step == cfg.experiment.num_steps:
                tracker.log_table(sample_rows(step, groups, tokens, cfg.tracking.num_logged_samples),
                                  f"samples/step_{step:06d}.json")
        if producer:
            producer.stop()
        finish_run(cfg, workers, tracker, env, eval_problems, tokens, groups)
        status = "FINISHED"
    finally:
        if producer:
            producer.stop()
            producer.store.close()
        tracker.finish(status)
        shutdown_workers(workers)
        if env is not None:
            env.close()
        if isinstance(april, EpisodeAprilManager):
            april.close()
    return RunResult(tracker.run_id, tracker.uri, cfg.output_dir, tracker.history)


def finish_run(cfg: RunConfig, workers: Workers, tracker: Tracker, env: TextEnv | None,
               eval_problems: list[Problem], tokens: Tokens, last_groups: list[Group]) -> None:
    """After the last step: final evaluation, a check that the engines hold the learner's weights, the final
    policy saved to output_dir/final_model and registered in MLflow with the final metrics, the reward curve."""
    last = cfg.experiment.num_steps
    tracker.log_metrics(last, evaluate_policy(cfg, workers, env, eval_problems, tokens))
    if last_groups:
        probe = last_groups[0].samples[0]
        tracker.log_metrics(last, verify_sync(workers, probe.prompt_token_ids + probe.response_token_ids))
    final_dir = cfg.output_dir / "final_model"
    get(workers.learner.save.remote(str(final_dir.resolve())), "save final model", workers.call_timeout_s)
    tracker.set_tag("rlplat.final_model_dir", str(final_dir.resolve()))
    final_metrics = {k: v[-1][1] for k, v in tracker.history.items() if k.startswith(("eval/", "rollout/reward"))}
    tracker.register_model(final_dir, cfg.tracking.registered_model_name or cfg.experiment.name, final_metrics)
    tracker.log_reward_curve()


# --------------------------------------------------------------------------------------------------- evaluation
def evaluate_checkpoint(cfg: RunConfig, checkpoint: str, *, num_samples: int = 4) -> RunResult:
    """`rlplat eval`: serve a saved policy on the spec's rollout engines and log an MLflow evaluation run.

    Greedy metrics as at the end of training (eval split, or env episodes), plus for prompt tasks `num_samples`
    sampled responses per eval prompt scored by the spec's reward (mean and best-of-k). The run is tagged with the
    checkpoint and, when the checkpoint names it, nested under the training run (mlflow.parentRunId)."""
    from rlplat.evaluate import find_source, materialise

    tokens, _, eval_problems = preflight(cfg)
    source = find_source(checkpoint)
    out_dir = cfg.output_dir / "eval" / f"{source.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    model_dir = materialise(source, cfg, out_dir / "model")
    init_ray(cfg)
    engines_only = dataclasses.replace(cfg, placement=dataclasses.replace(
        cfg.placement, colocate=True, reward_actor=False, weight_sync="bytes"))
    plan = plan_for_cluster(engines_only)  # no learner: with colocate its slot costs no GPU
    pg = reserve(plan, cfg.placement.placement_timeout_s)
    tags = {"mlflow.runName": f"eval-{cfg.experiment.name}", "rlplat.run_type": "eval",
            "rlplat.eval_checkpoint": str(source.path.resolve()), "rlplat.eval_source": source.kind} | run_tags()
    if source.trained_run_id:
        tags |= {"mlflow.parentRunId": source.trained_run_id, "rlplat.trained_run_id": source.trained_run_id}
    tracker = Tracker(cfg, tags=tags)
    workers, env, status = Workers(rollout=[], learner=None, placement_group=pg), None, "FAILED"
    try:
        workers.rollout = start_rollout(cfg, max_context_length(cfg.model.path), plan, pg, str(model_dir))
        env = make_env(cfg.env, cfg.num_samples_per_step) if cfg.env.task_id else None
        metrics = evaluate_policy(cfg, workers, env, eval_problems, tokens)
        if env is None:
            groups = make_groups(eval_problems, tokens, num_samples, first_group_id=0)
            groups = generate(workers, groups, rollout_sampling(cfg), -1)
            scored = score(cfg, groups, tokens, workers.reward)  # per reward term
            metrics |= {f"eval/sampled_{k}": v for k, v in scored.items()}
            metrics |= sampled_eval_metrics(groups)
            tracker.log_table(sample_rows(source.step, groups, tokens, cfg.tracking.num_logged_samples),
                              "samples/eval.json")
        tracker.log_metrics(source.step, metrics)
        status = "FINISHED"
    finally:
        tracker.finish(status)
        shutdown_workers(workers)
        if env is not None:
            env.close()
    return RunResult(tracker.run_id, tracker.uri, out_dir, tracker.history)


def sampled_eval_metrics(groups: list[Group]) -> dict[str, float]:
    """Mean reward of the sampled responses and best-of-k: the mean over prompts of the best sample's reward."""
    rewards = [[s.reward or 0.0 for s in g.samples] for g in groups]
    return {"eval/sampled_reward_mean": sum(map(sum, rewards)) / sum(map(len, rewards)),
            "eval/sampled_best_of_k": sum(map(max, rewards)) / len(rewards)}


# --------------------------------------------------------------------------------------------------- checkpoints
def find_checkpoint(cfg: RunConfig, *, required: bool) -> tuple[Path, ck.DriverState] | None:
    """The latest checkpoint to resume from; ConfigError when none exists (if required) or the spec changed."""
    from rlplat.config import to_dict

    path = ck.latest(ck.checkpoint_root(cfg.output_dir))
    if path is None:
        if required:
            raise ConfigError(f"--resume: no checkpoint in {ck.checkpoint_root(cfg.output_dir)}")
        return None
    diffs = ck.spec_differences((path / "spec.yaml").read_text(), to_dict(cfg))
    if diffs:
        raise ConfigError(f"cannot resume from {path}: the spec differs in {', '.join(diffs)}")
    return path, ck.load_driver_state(path)


def save_checkpoint(cfg: RunConfig, step: int, version: int, run_id: str, workers: Workers, cursor: PromptCursor,
                    april: Partial, producer: Producer | None, replay: ReplayBuffer) -> Path:
    """Everything needed to continue exactly: learner state, data cursor, APRIL buffer, store contents, RNG."""
    root = ck.checkpoint_root(cfg.output_dir)
    if producer:
        producer.pause()  # no batch half-generated while we snapshot the cursor and the store
    try:
        tmp = ck.begin(root, step)
        ray.get(workers.learner.save_state.remote(str((tmp / "learner").resolve())))
        state = ck.DriverState(step=step, policy_version=version, run_id=run_id, cursor=cursor.state(),
                               partial_buffer=april.state() if april else [],
                               store_groups=producer.store.snapshot() if producer else [], rng=ck.rng_state(),
                               replay=replay.state())
        return ck.commit(root, tmp, state, dump_yaml(cfg), keep_last=cfg.checkpoint.keep_last)
    finally:
        if producer:
            producer.resume()


def restore_checkpoint(resumed: tuple[Path, ck.DriverState], workers: Workers, cursor: PromptCursor,
                       april: Partial) -> int:
    """Load a checkpoint into fresh workers; returns the policy version (the engines get those weights)."""
    path, state = resumed
    ray.get(workers.learner.load_state.remote(str((path / "learner").resolve())))
    cursor.load_state(state.cursor)
    if april:
        april.load_state(state.partial_buffer)
    ck.set_rng_state(state.rng)
    sync_weights(workers, state.policy_version)
    log.info("resumed from %s at step %d (policy version %d)", path, state.step, state.policy_version)
    return state.policy_version


def save_unscored(cfg: RunConfig, step: int, groups: list[Group]) -> Path:
    """Pickle a step's generated groups when scoring them failed, so no generated work is lost."""
    import pickle

    path = cfg.output_dir / "unscored" / f"step_{step:06d}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(groups, f)
    return path


def record_trained(cfg: RunConfig, step: int, groups: list[Group]) -> None:
    """Append which prompts were trained at `step` (an audit trail: nothing trained twice or skipped)."""
    import json

    with open(cfg.output_dir / "trained_groups.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "prompt_ids": [g.prompt_id for g in groups],
                            "group_ids": [g.group_id for g in groups]}) + "\n")


def shutdown_workers(workers: Workers) -> None:
    for w in workers.rollout:
        try:
            ray.get(w.shutdown.remote(), timeout=30)
        except Exception:  # best effort: the actor may already be gone
            pass
        ray.kill(w)
    for actor in (workers.learner, workers.reward):
        if actor is not None:
            ray.kill(actor)
    release(workers.placement_group)


def run_tags() -> dict[str, str]:
    """Tags that say where the run came from: the Ray job id (under `ray job submit`) and the git commit."""
    import subprocess

    tags = {"rlplat.ray_job_id": ray.get_runtime_context().get_job_id()} if ray.is_initialized() else {}
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        tags["rlplat.ray_submission_id"] = os.environ["RAY_JOB_SUBMISSION_ID"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags

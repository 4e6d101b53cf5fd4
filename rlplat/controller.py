"""The training loop. Every remote call is visible here; each phase is one small helper.

    generate (vLLM actors) -> score (rewards) -> advantages -> train (learner actor) -> sync weights -> log

Synchronous and on-policy: rollout step k uses policy version k.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch

from rlplat.actors.learner import LearnerActor
from rlplat.actors.rollout import RolloutActor
from rlplat.actors.rollout_manager import RolloutManager
from rlplat.algos.advantages import ADVANTAGE_FNS
from rlplat.config import ConfigError, RunConfig, dump_yaml
from rlplat.data.producer import Producer
from rlplat.envs.tasks import Problem, PromptCursor, make_split
from rlplat.learners.replay import ReplayBuffer
from rlplat.models import check_model_dir, max_context_length
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import combined_reward, load_reward
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


def start_workers(cfg: RunConfig, context_len: int) -> Workers:
    options = EngineOptions(
        model_path=str(Path(cfg.model.path).resolve()),
        max_model_len=context_len,
        seed=cfg.experiment.seed,
        dtype=cfg.model.dtype,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        enforce_eager=cfg.rollout.enforce_eager,
    )
    rollout = [RolloutActor.remote(options) for _ in range(cfg.rollout.num_workers)]
    learner = LearnerActor.remote(str(Path(cfg.model.path).resolve()), cfg.learner, cfg.algorithm,
                                  dtype=cfg.model.dtype, seed=cfg.experiment.seed, lora=cfg.model.lora)
    ray.get([w.start.remote() for w in rollout])
    return Workers(rollout=rollout, learner=learner)


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


def generate(workers: Workers, groups: list[Group], sampling: SamplingOptions, version: int) -> list[Group]:
    """Spread whole groups over the rollout actors round-robin and wait for all of them."""
    shards = [groups[i :: len(workers.rollout)] for i in range(len(workers.rollout))]
    refs = [w.generate.remote([s for g in shard for s in g.samples], sampling, version)
            for w, shard in zip(workers.rollout, shards, strict=True) if shard]
    by_group: dict[int, list[Sample]] = {}
    for samples in ray.get(refs):
        for s in samples:
            by_group.setdefault(s.group_id, []).append(s)
    return [Group(group_id=g.group_id, prompt_id=g.prompt_id,
                  samples=sorted(by_group[g.group_id], key=lambda s: s.sample_index)) for g in groups]


def rollout_step(cfg: RunConfig, workers: Workers, april: RolloutManager | None, cursor: PromptCursor, tokens: Tokens,
                 sampling: SamplingOptions, step: int, version: int) -> tuple[list[Group], dict[str, float]]:
    """This step's N complete groups: one synchronous full batch, or APRIL (`rollout.partial.enabled`): partial
    buffer first, then fresh prompts, abort once N are complete; returns the groups and APRIL's metrics."""
    def fresh(k: int) -> list[Group]:  # called at most once per step, so group ids stay unique
        return make_groups(cursor.take(k), tokens, cfg.rollout.num_samples_per_prompt, first_group_id=step * 1_000_000)

    if april is None:
        return generate(workers, fresh(cfg.rollout.num_prompts_per_step), sampling, version), {}
    result = april.collect(cfg.rollout.num_prompts_per_step, fresh, sampling, version)
    return result.groups, result.metrics


def score(cfg: RunConfig, groups: list[Group], tokens: Tokens) -> dict[str, float]:
    """Set `sample.reward` on every sample; returns reward metrics."""
    samples = [s for g in groups for s in g.samples]
    inputs = RewardInputs(
        response_token_ids=[s.response_token_ids for s in samples],
        response_texts=[tokens.decode(s.response_token_ids) for s in samples],
        answers=[s.answer for s in samples],
        answer_token_ids=[tokens.encode(s.answer) for s in samples],
        eos_token_id=tokens.eos_token_id,
    )
    rewards, metrics = combined_reward([(t.name, t.weight) for t in cfg.reward.terms], inputs)
    for s, r in zip(samples, rewards.tolist(), strict=True):
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


def sync_weights(workers: Workers, version: int) -> None:
    """Learner weights -> every engine, in place (tokens generated from then on carry `version`).
    The bytes travel once through Ray's object store; generation may keep running meanwhile."""
    payload = workers.learner.weights_bytes.remote()
    ray.get([w.load_weights.remote(payload, version) for w in workers.rollout])


def start_producer(cfg: RunConfig, workers: Workers, produce) -> Producer | None:
    """With `data.store.enabled`: an ExperienceStore on TransferQueue and a producer thread feeding it."""
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
                        max_staleness=sc.max_staleness, wait_for_learner=sc.on_stale == "wait", interrupt=interrupt)
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
    samples = [g.samples[0] for g in groups]
    inputs = RewardInputs(response_token_ids=[s.response_token_ids for s in samples], response_texts=[""] * len(samples),
                          answers=[s.answer for s in samples],
                          answer_token_ids=[tokens.encode(s.answer) for s in samples], eos_token_id=tokens.eos_token_id)
    return {"eval/exact_match": float(exact_match(inputs).mean()), "eval/digit_accuracy": float(digit_accuracy(inputs).mean())}


def rollout_metrics(groups: list[Group], seconds: float) -> dict[str, float]:
    samples = [s for g in groups for s in g.samples]
    rewards = torch.tensor([s.reward for s in samples])
    lengths = torch.tensor([float(s.num_response_tokens) for s in samples])
    return {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "rollout/response_length_mean": float(lengths.mean()),
        "rollout/response_length_max": float(lengths.max()),
        "perf/rollout_tokens_per_s": float(lengths.sum()) / max(seconds, 1e-9),
    }


def sample_rows(step: int, groups: list[Group], tokens: Tokens, n: int) -> list[dict]:
    rows = []
    for s in [s for g in groups for s in g.samples][:n]:
        rows.append({"step": step, "prompt": tokens.decode(s.prompt_token_ids), "answer": s.answer,
                     "response": tokens.decode(s.response_token_ids), "reward": s.reward,
                     "finish": s.finish_reason.value})
    return rows


# --------------------------------------------------------------------------------------------------------- loop
def train(cfg: RunConfig, *, progress: bool = True) -> RunResult:
    """Run the experiment `cfg`; returns where its MLflow run lives. Bad input fails before any actor starts."""
    from tqdm import tqdm

    tokens, train_problems, eval_problems = preflight(cfg)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    (cfg.output_dir / "spec.yaml").write_text(dump_yaml(cfg))
    init_ray(cfg)
    tracker = Tracker(cfg, tags=run_tags())
    workers = start_workers(cfg, max_context_length(cfg.model.path))
    # APRIL (rollout.partial); `april.state()` is its partial buffer, which a checkpoint must carry
    april = RolloutManager(workers.rollout, cfg.rollout.partial) if cfg.rollout.partial.enabled else None
    cursor = PromptCursor(train_problems, seed=cfg.data.seed)
    sampling = SamplingOptions(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                               top_p=cfg.rollout.top_p)
    version, status, producer = 0, "FAILED", None
    replay = ReplayBuffer(cfg.algorithm.remix, seed=cfg.experiment.seed)  # ReMix: past groups; inert otherwise
    try:
        tracker.log_metrics(0, evaluate(workers, eval_problems, tokens, cfg.rollout.max_new_tokens))
        def produce(batch_index: int, policy_version: int) -> tuple[list[Group], dict[str, float]]:
            t_start = time.perf_counter()
            groups, produced = rollout_step(cfg, workers, april, cursor, tokens, sampling, batch_index + 1,
                                            policy_version)
            t_scored = time.perf_counter()
            produced |= score(cfg, groups, tokens)
            return groups, produced | rollout_metrics(groups, t_scored - t_start) | {
                "time/generate_s": t_scored - t_start, "time/reward_s": time.perf_counter() - t_scored}

        producer = start_producer(cfg, workers, produce)
        for step in tqdm(range(1, cfg.experiment.num_steps + 1), desc="train", disable=not progress):
            t0 = time.perf_counter()
            groups, metrics = producer.next_batch() if producer else produce(step - 1, version)
            t1 = time.perf_counter()
            replayed = replay.sample(step, version, len(groups))
            batch = make_batch(cfg, groups + replayed)
            t2 = time.perf_counter()
            metrics |= ray.get(workers.learner.train_step.remote(batch))
            t3 = time.perf_counter()
            sync_weights(workers, version + 1)
            replay.add(version, groups)
            version += 1
            if producer:
                producer.set_learner_version(version)
                metrics |= async_metrics(producer, groups, version)
            t4 = time.perf_counter()
            metrics |= {"replay/num_groups": float(len(replayed))}
            # time/rollout_s: how long the learner waited for this batch (all of rollout + reward when synchronous)
            metrics |= {"time/rollout_s": t1 - t0, "time/make_batch_s": t2 - t1, "time/train_s": t3 - t2,
                        "time/weight_sync_s": t4 - t3, "time/step_s": t4 - t0,
                        "perf/train_tokens_per_s": batch.num_tokens / max(t3 - t2, 1e-9)}
            tracker.log_metrics(step, metrics)
            if step % cfg.tracking.log_samples_every_steps == 0 or step == cfg.experiment.num_steps:
                tracker.log_table(sample_rows(step, groups, tokens, cfg.tracking.num_logged_samples),
                                  f"samples/step_{step:06d}.json")
        if producer:
            producer.stop()
        last = cfg.experiment.num_steps
        tracker.log_metrics(last, evaluate(workers, eval_problems, tokens, cfg.rollout.max_new_tokens))
        probe = groups[0].samples[0]
        tracker.log_metrics(last, verify_sync(workers, probe.prompt_token_ids + probe.response_token_ids))
        final_dir = cfg.output_dir / "final_model"
        ray.get(workers.learner.save.remote(str(final_dir.resolve())))
        tracker.set_tag("rlplat.final_model_dir", str(final_dir.resolve()))
        tracker.log_reward_curve()
        status = "FINISHED"
    finally:
        if producer:
            producer.stop()
            producer.store.close()
        tracker.finish(status)
        shutdown_workers(workers)
    return RunResult(tracker.run_id, tracker.uri, cfg.output_dir, tracker.history)


def shutdown_workers(workers: Workers) -> None:
    for w in workers.rollout:
        try:
            ray.get(w.shutdown.remote(), timeout=30)
        except Exception:  # best effort: the actor may already be gone
            pass
        ray.kill(w)
    ray.kill(workers.learner)


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

"""A run's state outside the actors: the checks before anything starts, checkpoints, resume, and the run's files.

`preflight` raises ConfigError (one line, exit 2 from the CLI) for every bad input it can find before any actor
starts. A checkpoint holds everything needed to continue exactly (rlplat/checkpoint.py writes it atomically): the
learner's state, the prompt cursor, the APRIL buffer, the store's unconsumed groups, ReMix's replay and RNG states.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlplat import checkpoint as ck
from rlplat.config import ConfigError, RunConfig, dump_yaml, to_dict
from rlplat.data.datasets import EpochCursor, common_columns
from rlplat.data.producer import Producer
from rlplat.driver.experience import TRAINED_GROUPS, Rollout, Tokens
from rlplat.driver.prompts import PromptSet, load_prompt_sets
from rlplat.driver.workers import Workers, ray_job_tags
from rlplat.envs.agent_loop import episode_format
from rlplat.envs.registry import make_episode_env
from rlplat.learners.replay import ReplayBuffer
from rlplat.models import check_model_dir, max_context_length
from rlplat.rewards.registry import check_reward_columns, load_reward
from rlplat.tracking import Tracker
from rlplat.types import Group

log = logging.getLogger("rlplat")


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    output_dir: Path
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunInputs:
    """What preflight read and checked: the tokenizer and the tokenized prompts (eval None: no eval files)."""

    tokens: Tokens
    train_prompts: PromptSet
    eval_prompts: PromptSet | None


# ------------------------------------------------------------------------------------------------------ checks
def preflight(cfg: RunConfig) -> RunInputs:
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
    train, evals = load_prompt_sets(cfg, tokens.tok)
    sets = [train] + ([evals] if evals is not None else [])
    if not cfg.env.task_id:  # every reward term finds the dataset columns it reads
        for s in sets:
            try:
                check_reward_columns([t.name for t in cfg.reward.terms], common_columns(s.rows), where=s.rows[0].source)
            except ValueError as e:
                raise ConfigError(f"reward.terms: {e}") from None
    longest = max(len(ids) for s in sets for ids in s.prompt_token_ids)
    if cfg.env.task_id:  # env episodes replace the prompt task: their prompts are rendered observations
        longest = longest_episode_prompt(cfg, tokens)
    if cfg.agent.tools:  # the tools' schemas go into every prompt
        longest = longest_agent_prompt(cfg, tokens, sets)
    context = max_context_length(cfg.model.path)
    if longest + cfg.rollout.max_new_tokens > context:
        raise ConfigError(
            f"prompts of up to {longest} tokens + rollout.max_new_tokens {cfg.rollout.max_new_tokens} exceed the "
            f"model context of {context} tokens ({cfg.model.path})"
        )
    return RunInputs(tokens, train, evals)


def make_cursor(cfg: RunConfig, train: PromptSet, resumed: Resumed | None) -> EpochCursor:
    """The epoch cursor over the train prompts: fresh (seeded by data.seed), or where the checkpoint left it."""
    if resumed is None:
        return EpochCursor(len(train), seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    try:
        return EpochCursor.from_state(resumed[1].cursor, num_rows=len(train))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"cannot resume from {resumed[0]}: its data cursor does not fit the data ({e})") from None


def longest_episode_prompt(cfg: RunConfig, tokens: Tokens) -> int:
    """The longest first prompt (in tokens) of a few sample episodes; ConfigError for an unknown env."""
    try:
        env = make_episode_env(cfg.env, num_envs=8)
    except ValueError as e:
        raise ConfigError(f"env.task_id: {e}") from None
    try:
        fmt = episode_format(cfg.env)
        return max(len(tokens.encode(fmt.prompt(obs, env.spec.action_help))) for obs in env.reset(range(8)))
    finally:
        env.close()


def longest_agent_prompt(cfg: RunConfig, tokens: Tokens, sets: list[PromptSet]) -> int:
    """The longest prompt (in tokens) rendered with the tools' schemas, over the 8 longest prompts of each set;
    ConfigError for a bad tool entry."""
    from rlplat.agents.spec import build_agent_loop
    from rlplat.data.chat import as_messages

    try:
        agent = build_agent_loop(cfg.agent, tokens.tok, max_response_tokens=cfg.rollout.max_new_tokens)
    except ValueError as e:
        raise ConfigError(f"agent.tools: {e}") from None
    longest = 0
    for s in sets:
        for i in sorted(range(len(s)), key=lambda i: -len(s.prompt_token_ids[i]))[:8]:
            t = agent.start(as_messages(s.rows[i].prompt, cfg.data.system_prompt), group_id=0, sample_index=0,
                            prompt_id=i)
            longest = max(longest, len(t.sample.prompt_token_ids))
    return longest


def prepare_output_dir(cfg: RunConfig) -> None:
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    (cfg.output_dir / "spec.yaml").write_text(dump_yaml(cfg))


def run_tags() -> dict[str, str]:
    """Tags that say where the run came from: the Ray job id (under `ray job submit`) and the git commit."""
    tags = ray_job_tags()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


# ------------------------------------------------------------------------------------------------- checkpoints
Resumed = tuple[Path, ck.DriverState]


def find_checkpoint(cfg: RunConfig, *, required: bool) -> Resumed | None:
    """The newest intact checkpoint to resume from (a damaged newer one is skipped with a warning); ConfigError when
    there is none (if required), when every checkpoint is damaged, or when the spec changed."""
    root = ck.checkpoint_root(cfg.output_dir)
    try:
        found = ck.find_resumable(root)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if found is None:
        if required:
            raise ConfigError(f"--resume: no checkpoint in {root}")
        return None
    path, state, _ = found
    diffs = ck.spec_differences((path / ck.SPEC).read_text(), to_dict(cfg))
    if diffs:
        raise ConfigError(f"cannot resume from {path}: the spec differs in {', '.join(diffs)}")
    return path, state


def check_fresh_start(cfg: RunConfig) -> None:
    """A run that does not resume must not write over (and prune among) an earlier run's checkpoints."""
    try:
        ck.check_fresh_start(ck.checkpoint_root(cfg.output_dir))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def save_checkpoint(cfg: RunConfig, step: int, version: int, run_id: str, workers: Workers, cursor: EpochCursor,
                    rollout: Rollout, producer: Producer | None, replay: ReplayBuffer,
                    probe_token_ids: list[int]) -> Path:
    """Everything needed to continue exactly: learner state, data cursor, APRIL buffer, store contents, RNG."""
    root = ck.checkpoint_root(cfg.output_dir)
    if producer:
        producer.pause()  # no batch half-generated while we snapshot the cursor and the store
    try:
        tmp = ck.begin(root, step)
        workers.save_learner_state(tmp / "learner")
        state = ck.DriverState(step=step, policy_version=version, run_id=run_id, cursor=cursor.state(),
                               partial_buffer=rollout.state(),
                               store_groups=producer.store.snapshot() if producer else [], rng=ck.rng_state(),
                               replay=replay.state(), probe_token_ids=probe_token_ids)
        return ck.commit(root, tmp, state, dump_yaml(cfg), keep_last=cfg.checkpoint.keep_last)
    finally:
        if producer:
            producer.resume()


def restore_checkpoint(resumed: Resumed, workers: Workers, rollout: Rollout, replay: ReplayBuffer) -> int:
    """Load a checkpoint into fresh workers (the cursor: `make_cursor`); returns the policy version (the engines
    get those weights)."""
    path, state = resumed
    workers.load_learner_state(path / "learner")
    rollout.load_state(state.partial_buffer)
    if state.replay:
        replay.load_state(state.replay)
    ck.set_rng_state(state.rng)
    workers.sync(state.policy_version)
    log.info("resumed from %s at step %d (policy version %d)", path, state.step, state.policy_version)
    return state.policy_version


def rewind_to_checkpoint(cfg: RunConfig, tracker: Tracker, resumed: Resumed) -> None:
    """A resumed run goes on from the checkpoint, so whatever was logged after it (by a run killed between two
    checkpoints, or during the final evaluation) is removed: the resumed run logs it again and every step appears
    once. The resume is marked in MLflow (`Tracker.rewind`) and in trained_groups.jsonl (`rewind_trained`)."""
    path, state = resumed
    tracker.rewind(state.step, written_at_ms=ck.written_at_ms(path))
    rewind_trained(cfg.output_dir / TRAINED_GROUPS, state.step)


def rewind_trained(path: Path, step: int) -> int:
    """Keep the lines of `path` (trained_groups.jsonl) for steps <= `step`, then add one resume marker line
    {"resumed_from_step": step, "time_utc": ...}. Earlier markers stay when they resumed from no later step; a line
    cut short by the kill is dropped. Written to a temporary file and renamed (a second kill leaves the old file or
    the new one). Returns the number of lines dropped."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if _line_step(line) is not None and _line_step(line) <= step]
    marker = {"resumed_from_step": step, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write("".join(f"{line}\n" for line in kept) + json.dumps(marker) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(kept)


def _line_step(line: str) -> int | None:
    """The step a trained_groups.jsonl line belongs to (a resume marker: the step it resumed from); None if cut."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step", record.get("resumed_from_step")) if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def resume_hint(cfg: RunConfig) -> str:
    """Where a failed run can continue from."""
    latest = ck.latest(ck.checkpoint_root(cfg.output_dir))
    return f"resume from {latest} with `rlplat train SPEC --resume`" if latest else "no checkpoint was written yet"


def out_of_memory_advice(cfg: RunConfig) -> str:
    """What to change when the learner ran out of GPU memory, with the spec's current values."""
    learner, rollout = cfg.learner, cfg.rollout
    steps = [f"lower learner.micro_batch_size_in_tokens (now {learner.micro_batch_size_in_tokens})"]
    if not learner.activation_checkpointing:
        steps.append("set learner.activation_checkpointing: true")
    if cfg.placement.colocate:
        steps.append(f"give the engine less of the GPU: rollout.gpu_memory_utilization (now "
                     f"{rollout.gpu_memory_utilization})" + ("" if rollout.sleep_level else
                                                              ", or let it sleep while the learner trains: "
                                                              "rollout.sleep_level: 1"))
    if learner.sharded and not learner.fsdp_cpu_offload:
        steps.append("or keep the FSDP shards in CPU memory: learner.fsdp_cpu_offload: true")
    elif not learner.sharded:
        steps.append("or shard the learner over more GPUs: learner.num_ranks")
    return "; ".join(steps)


def save_unscored(output_dir: Path, step: int, groups: list[Group]) -> Path:
    """A step's generated groups as JSON (the checkpoint's record format) when scoring them failed, so no
    generated work is lost; `rlplat.checkpoint.from_json` reads them back."""
    path = output_dir / "unscored" / f"step_{step:06d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ck.to_json(groups)))
    return path

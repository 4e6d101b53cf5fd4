"""The training loop: roles are built once, then every step reads

    produce (rollout + rewards) -> batch (advantages, ReMix replay) -> learner update -> weight sync -> log

`data.store.max_staleness: 0` (or no store) is synchronous and on-policy: step k trains on groups generated with
policy version k - 1. With the store, a producer thread runs rollout up to k versions ahead of the learner.
Remote calls live in driver/workers.py (each with a deadline), the rollout modes in driver/experience.py,
checks and checkpoints in driver/run_state.py, evaluation in driver/evaluation.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rlplat.actors.env import make_env
from rlplat.config import RunConfig
from rlplat.data.producer import Producer
from rlplat.driver import run_state as rs
from rlplat.driver.evaluation import Evaluation, evaluate_policy, log_evaluation
from rlplat.driver.experience import (
    Experience,
    Rollout,
    Tokens,
    async_metrics,
    batch_metrics,
    make_batch,
    make_rollout,
    record_trained,
    sample_rows,
    start_producer,
)
from rlplat.driver.workers import ActorDied, Workers, engine_options, init_ray
from rlplat.envs.text_env import TextEnv
from rlplat.learners.replay import ReplayBuffer
from rlplat.models import copy_model_files
from rlplat.tracking import Tracker
from rlplat.types import Group

log = logging.getLogger("rlplat")


def train(cfg: RunConfig, *, progress: bool = True, resume: bool = False) -> rs.RunResult:
    """Run the experiment `cfg`; returns where its MLflow run lives. Bad input fails before any actor starts.

    resume (or checkpoint.resume: auto): continue from the latest checkpoint in the output directory, in the same
    MLflow run with continuous step numbers.
    """
    from tqdm import tqdm

    inputs = rs.preflight(cfg)
    resumed = rs.find_checkpoint(cfg, required=resume) if resume or cfg.checkpoint.resume == "auto" else None
    if resumed is None:
        rs.check_fresh_start(cfg)
    rs.prepare_output_dir(cfg)
    init_ray(cfg)
    tracker = Tracker(cfg, run_id=resumed[1].run_id if resumed else None, tags=rs.run_tags())
    workers, env, rollout, producer, status = None, None, None, None, "FAILED"
    try:
        workers = Workers.start(cfg, engine_options(cfg))
        tracker.set_tag("rlplat.placement", workers.placement)
        env = make_env(cfg.env, cfg.num_samples_per_step) if cfg.env.task_id else None  # driver, or env.in_actor
        cursor = rs.make_cursor(cfg, inputs.train_prompts, resumed)
        rollout = make_rollout(cfg, workers, inputs.tokens, cursor, inputs.train_prompts, env)
        experience = Experience(cfg, workers, inputs.tokens, inputs.train_prompts, rollout,
                                save_unscored=lambda step, groups: rs.save_unscored(cfg.output_dir, step, groups))
        replay = ReplayBuffer(cfg.algorithm.remix, seed=cfg.experiment.seed)  # ReMix: past groups; inert otherwise
        version, start_step = 0, 1
        if resumed:
            version = rs.restore_checkpoint(resumed, workers, rollout, replay)
            rs.rewind_to_checkpoint(cfg, tracker, resumed)  # steps after the checkpoint: logged once, not twice
            start_step = resumed[1].step + 1
        else:
            log_eval(cfg, tracker, 0, evaluate_policy(cfg, workers, env, inputs), inputs)
        producer = start_producer(cfg, experience, first_batch=start_step - 1,
                                  restored=resumed[1].store_groups if resumed else [])
        groups: list[Group] = []
        probe = resumed[1].probe_token_ids if resumed else []  # resumed after its last step: no batch to probe
        for step in tqdm(range(start_step, cfg.experiment.num_steps + 1), desc="train", disable=not progress):
            t0 = time.perf_counter()
            groups, metrics = producer.next_batch() if producer else experience.produce(step - 1, version)
            metrics |= batch_metrics(groups)  # exactly the trained groups (async: maybe several batches, or restored)
            t1 = time.perf_counter()
            replayed = replay.sample(step, version, len(groups))
            batch = make_batch(cfg.algorithm.advantage, groups + replayed)
            t2 = time.perf_counter()
            metrics |= train_step(cfg, workers, batch, step)
            t3 = time.perf_counter()
            workers.sync(version + 1)
            replay.add(version, groups)
            version += 1
            if producer:
                producer.set_learner_version(version)
                metrics |= async_metrics(producer, groups, version)
            t4 = time.perf_counter()
            metrics |= workers.sync_metrics  # FSDP with broadcast sync: the gather's bucket sizes; else empty
            metrics |= {"replay/num_groups": float(len(replayed)),
                        "faults/rollout_restarts": float(workers.num_restarts)}
            # time/rollout_s: how long the learner waited for this batch (all of rollout + reward when synchronous)
            metrics |= {"time/rollout_s": t1 - t0, "time/make_batch_s": t2 - t1, "time/train_s": t3 - t2,
                        "time/weight_sync_s": t4 - t3, "time/step_s": t4 - t0,
                        "perf/train_tokens_per_s": batch.num_tokens / max(t3 - t2, 1e-9)}
            log_step(cfg, tracker, step, metrics, groups, inputs.tokens)
            probe = weight_probe(groups) or probe
            every, last = cfg.checkpoint.every_steps, cfg.experiment.num_steps
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < last:  # the last: finish_run
                log_eval(cfg, tracker, step, evaluate_policy(cfg, workers, env, inputs), inputs)
            if every and (step % every == 0 or step == last):
                tracker.flush()  # the rows of the steps a checkpoint covers are in the store before it exists
                try:
                    rs.save_checkpoint(cfg, step, version, tracker.run_id, workers, cursor, rollout, producer, replay,
                                       probe)
                except ActorDied as e:
                    raise learner_failed(cfg, step, "its checkpoint save", e) from e
        stop(producer)
        finish_run(cfg, workers, tracker, env, inputs, probe)
        status = "FINISHED"
    finally:
        teardown(status, tracker, workers, producer, env, rollout)
    return rs.RunResult(tracker.run_id, tracker.uri, cfg.output_dir, tracker.history)


def train_step(cfg: RunConfig, workers: Workers, batch: Any, step: int) -> dict[str, float]:
    """One learner update. A learner that dies stops the run, pointing at the checkpoint to resume from."""
    try:
        return workers.train(batch)
    except ActorDied as e:
        raise learner_failed(cfg, step, "its train step", e) from e


def learner_failed(cfg: RunConfig, step: int, phase: str, e: BaseException) -> RuntimeError:
    return RuntimeError(f"the learner failed at step {step}, in {phase} ({type(e).__name__}); {rs.resume_hint(cfg)}")


def log_step(cfg: RunConfig, tracker: Tracker, step: int, metrics: dict[str, float], groups: list[Group],
             tokens: Tokens) -> None:
    """The step's metrics, its audit line, and every few steps a table of samples."""
    tracker.log_metrics(step, metrics)
    record_trained(cfg.output_dir, step, groups)
    if step % cfg.tracking.log_samples_every_steps == 0 or step == cfg.experiment.num_steps:
        tracker.log_table(sample_rows(step, groups, tokens, cfg.tracking.num_logged_samples),
                          f"samples/step_{step:06d}.json")


def log_eval(cfg: RunConfig, tracker: Tracker, step: int, evaluation: Evaluation, inputs: rs.RunInputs) -> None:
    log_evaluation(tracker, step, evaluation, inputs.tokens, cfg.tracking.num_logged_samples,
                   f"eval_step_{step:06d}")


def finish_run(cfg: RunConfig, workers: Workers, tracker: Tracker, env: TextEnv | None, inputs: rs.RunInputs,
               probe_token_ids: list[int]) -> None:
    """After the last step: final evaluation, a check that the engines hold the learner's weights, the final
    policy saved to output_dir/final_model and registered in MLflow with the final metrics, the reward curve."""
    last = cfg.experiment.num_steps
    log_eval(cfg, tracker, last, evaluate_policy(cfg, workers, env, inputs), inputs)
    if probe_token_ids:
        tracker.log_metrics(last, workers.verify(probe_token_ids))
    final_dir = cfg.output_dir / "final_model"
    workers.save_model(final_dir)
    if not (final_dir / "adapter_config.json").exists():  # full weights: a directory vLLM or `rlplat sft` can load
        copy_model_files(cfg.model.path, final_dir)
    tracker.set_tag("rlplat.final_model_dir", str(final_dir.resolve()))
    final_metrics = {k: v[-1][1] for k, v in tracker.history.items() if k.startswith(("eval/", "rollout/reward"))}
    tracker.register_model(final_dir, cfg.tracking.registered_model_name or cfg.experiment.name, final_metrics)
    tracker.log_reward_curve()


def weight_probe(groups: list[Group]) -> list[int]:
    """The token ids of the final weight check: the first sample of the last trained batch (kept in checkpoints)."""
    if not groups:
        return []
    sample = groups[0].samples[0]
    return sample.prompt_token_ids + sample.response_token_ids


def stop(producer: Producer | None) -> None:
    if producer:
        producer.stop()


def teardown(status: str, tracker: Tracker, workers: Workers | None, producer: Producer | None,
             env: TextEnv | None, rollout: Rollout | None) -> None:
    """Stop everything the run started, each part even if another fails (a hung actor must not keep the rest up)."""
    parts = [lambda: stop(producer), lambda: producer and producer.store.close(), lambda: tracker.finish(status),
             lambda: workers and workers.shutdown(), lambda: env and env.close(), lambda: rollout and rollout.close()]
    for part in parts:
        try:
            part()
        except Exception as e:  # already failing or finishing: report and go on
            log.warning("teardown: %s: %s", type(e).__name__, e)

"""Evaluation: greedy metrics during training, and `rlplat eval` on a saved policy.

The prompt task is scored on its eval split (exact match, digit accuracy); env runs play one greedy episode from each
of env.num_envs held-out seeds (2**30 + env.seed + i; training seeds count up from env.seed). `rlplat eval` adds
`num_samples` sampled responses per eval prompt, scored by the spec's reward (mean and best-of-k).
"""

from __future__ import annotations

import asyncio
import time

from rlplat.actors.env import make_env
from rlplat.config import RunConfig
from rlplat.driver.experience import RolloutOptions, Tokens, make_groups, reward_inputs, sample_rows, score
from rlplat.driver.run_state import RunResult, preflight, run_tags
from rlplat.driver.workers import Workers, engine_options
from rlplat.envs.agent_loop import play_episodes
from rlplat.envs.tasks import Problem
from rlplat.envs.text_env import TextEnv
from rlplat.evaluate import find_source, materialise
from rlplat.tracking import Tracker
from rlplat.types import Group, SamplingOptions


def evaluate_policy(cfg: RunConfig, workers: Workers, env: TextEnv | None, problems: list[Problem],
                    tokens: Tokens) -> dict[str, float]:
    """Greedy evaluation: the prompt task's eval split, or one env episode from each held-out seed."""
    if env is None:
        return evaluate_prompts(workers, problems, tokens, cfg.rollout.max_new_tokens)
    opts = RolloutOptions.from_spec(cfg)
    assert opts.budget is not None and opts.fmt is not None
    batch = asyncio.run(play_episodes(
        env, workers.engines(), tokens, seeds=[2**30 + cfg.env.seed + i for i in range(env.num_envs)],
        num_samples_per_seed=1, first_group_id=-env.num_envs - 1, budget=opts.budget, fmt=opts.fmt,
        sampling=SamplingOptions(max_new_tokens=1, temperature=0.0), policy_version=-1))
    return {k.replace("env/", "eval/"): v for k, v in batch.metrics.items() if k.startswith("env/")}


def evaluate_prompts(workers: Workers, problems: list[Problem], tokens: Tokens,
                     max_new_tokens: int) -> dict[str, float]:
    """Greedy decoding on the eval split: exact-match rate and per-position digit accuracy."""
    from rlplat.rewards.basic import digit_accuracy, exact_match

    groups = make_groups(problems, tokens, 1, first_group_id=-len(problems) - 1)
    groups = workers.generate(groups, SamplingOptions(max_new_tokens=max_new_tokens, temperature=0.0), -1)
    inputs = reward_inputs([g.samples[0] for g in groups], tokens)
    return {"eval/exact_match": float(exact_match(inputs).mean()),
            "eval/digit_accuracy": float(digit_accuracy(inputs).mean())}


def sampled_eval_metrics(groups: list[Group]) -> dict[str, float]:
    """Mean reward of the sampled responses and best-of-k: the mean over prompts of the best sample's reward."""
    rewards = [[s.reward or 0.0 for s in g.samples] for g in groups]
    return {"eval/sampled_reward_mean": sum(map(sum, rewards)) / sum(map(len, rewards)),
            "eval/sampled_best_of_k": sum(map(max, rewards)) / len(rewards)}


def evaluate_checkpoint(cfg: RunConfig, checkpoint: str, *, num_samples: int = 4) -> RunResult:
    """`rlplat eval`: serve a saved policy on the spec's rollout engines and log an MLflow evaluation run.

    Greedy metrics as at the end of training, plus for prompt tasks `num_samples` sampled responses per eval prompt
    scored by the spec's reward. The run is tagged with the checkpoint and, when the checkpoint names it, nested
    under the training run (mlflow.parentRunId)."""
    inputs = preflight(cfg)
    source = find_source(checkpoint)
    out_dir = cfg.output_dir / "eval" / f"{source.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    model_dir = materialise(source, cfg, out_dir / "model")
    workers = Workers.start(cfg, engine_options(cfg, str(model_dir)), with_learner=False)
    tags = {"mlflow.runName": f"eval-{cfg.experiment.name}", "rlplat.run_type": "eval",
            "rlplat.eval_checkpoint": str(source.path.resolve()), "rlplat.eval_source": source.kind} | run_tags()
    if source.trained_run_id:
        tags |= {"mlflow.parentRunId": source.trained_run_id, "rlplat.trained_run_id": source.trained_run_id}
    tracker, env, status = Tracker(cfg, tags=tags), None, "FAILED"
    try:
        env = make_env(cfg.env, cfg.num_samples_per_step) if cfg.env.task_id else None
        metrics = evaluate_policy(cfg, workers, env, inputs.eval_problems, inputs.tokens)
        if env is None:
            groups = make_groups(inputs.eval_problems, inputs.tokens, num_samples, first_group_id=0)
            groups = workers.generate(groups, RolloutOptions.from_spec(cfg).sampling, -1)
            metrics |= {f"eval/sampled_{k}": v for k, v in score(cfg, groups, inputs.tokens).items()}
            metrics |= sampled_eval_metrics(groups)
            tracker.log_table(sample_rows(source.step, groups, inputs.tokens, cfg.tracking.num_logged_samples),
                              "samples/eval.json")
        tracker.log_metrics(source.step, metrics)
        status = "FINISHED"
    finally:
        tracker.finish(status)
        workers.shutdown()
        if env is not None:
            env.close()
    return RunResult(tracker.run_id, tracker.uri, out_dir, tracker.history)

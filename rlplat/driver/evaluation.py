"""Evaluation: greedy metrics during training, and `rlplat eval` on a saved policy.

Prompt runs score the eval prompts (data.eval_files, or the digit task's eval split) greedily with the spec's reward,
and with eval.num_samples = k > 1 also k sampled responses per prompt (mean@k, pass@k). With agent.tools, each
response is a trajectory played with the tools, as in training, and the greedy pass logs its agent metrics
(eval/agent/tool_use_rate, ...). Env runs play one greedy
episode from each of env.num_envs held-out seeds (2**30 + env.seed + i; training seeds count up from env.seed).
`rlplat eval` runs the same code on a saved policy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import torch

from rlplat.actors.env import make_env
from rlplat.agents.loop import AgentBatch
from rlplat.agents.spec import build_agent
from rlplat.algos.pass_at_k import mean_at_k, pass_at_k_from_rewards
from rlplat.config import RunConfig
from rlplat.driver.experience import RolloutOptions, Tokens, reward_inputs, sample_rows, score
from rlplat.driver.prompts import PromptSet
from rlplat.driver.run_state import RunInputs, RunResult, preflight, run_tags
from rlplat.driver.workers import Workers, engine_options
from rlplat.envs.agent_loop import play_episodes
from rlplat.envs.text_env import TextEnv
from rlplat.evaluate import find_source, materialise
from rlplat.rewards.basic import digit_accuracy, exact_match
from rlplat.tracking import Tracker
from rlplat.types import Group, SamplingOptions


@dataclass
class Evaluation:
    metrics: dict[str, float]
    groups: list[Group] = field(default_factory=list)  # the greedy responses, for a table of samples


def evaluate_policy(cfg: RunConfig, workers: Workers, env: TextEnv | None, inputs: RunInputs, *,
                    num_samples: int | None = None) -> Evaluation:
    """Greedy evaluation (and k sampled responses per prompt, eval.num_samples): the eval prompts, or one env
    episode from each held-out seed."""
    if env is None:
        if inputs.eval_prompts is None:
            return Evaluation({})
        k = cfg.eval.num_samples if num_samples is None else num_samples
        return evaluate_prompts(cfg, workers, inputs.tokens, inputs.eval_prompts, num_samples=k)
    opts = RolloutOptions.from_spec(cfg)
    assert opts.budget is not None and opts.fmt is not None
    batch = asyncio.run(play_episodes(
        env, workers.engines(), inputs.tokens, seeds=[2**30 + cfg.env.seed + i for i in range(env.num_envs)],
        num_samples_per_seed=1, first_group_id=-env.num_envs - 1, budget=opts.budget, fmt=opts.fmt,
        sampling=SamplingOptions(max_new_tokens=1, temperature=0.0), policy_version=-1))
    return Evaluation({k.replace("env/", "eval/"): v for k, v in batch.metrics.items() if k.startswith("env/")},
                      batch.groups)


def evaluate_prompts(cfg: RunConfig, workers: Workers, tokens: Tokens, prompts: PromptSet, *,
                     num_samples: int = 1) -> Evaluation:
    """Greedy decoding of every eval prompt, scored by the spec's reward (eval/reward_mean), with exact match
    and per-position accuracy against the `answer` column when the data has one; with num_samples = k > 1 also
    k sampled responses per prompt: eval/mean_at_k, eval/pass_at_k (reward >= 1 counts as correct)."""
    ids = list(range(len(prompts)))
    greedy, metrics = respond(cfg, workers, tokens, prompts, ids, 1, -len(ids) - 1,
                              SamplingOptions(max_new_tokens=cfg.rollout.max_new_tokens, temperature=0.0))
    score(cfg, greedy, tokens, prompts)
    samples = [g.samples[0] for g in greedy]
    metrics |= {"eval/reward_mean": sum(s.reward or 0.0 for s in samples) / len(samples),
                "eval/response_length_mean": sum(s.num_response_tokens for s in samples) / len(samples)}
    if all(prompts.answer(i) for i in ids):
        inputs = reward_inputs(samples, tokens, prompts)
        metrics |= {"eval/exact_match": float(exact_match(inputs).mean()),
                    "eval/digit_accuracy": float(digit_accuracy(inputs).mean())}
    if num_samples > 1:
        groups, _ = respond(cfg, workers, tokens, prompts, ids, num_samples, -2 * len(ids) - 1,
                            RolloutOptions.from_spec(cfg).sampling)
        score(cfg, groups, tokens, prompts)
        metrics |= sampled_eval_metrics(groups)
    return Evaluation(metrics, greedy)


def respond(cfg: RunConfig, workers: Workers, tokens: Tokens, prompts: PromptSet, ids: list[int], num_samples: int,
            first_group_id: int, sampling: SamplingOptions) -> tuple[list[Group], dict[str, float]]:
    """`num_samples` responses to each prompt (policy version -1: not trained on): one request each, or with
    agent.tools a trajectory each, played with the tools in a sandbox of its own (closed after), and the agent
    metrics as eval/agent/... A rollout actor that dies meanwhile is restarted and the trajectories are played
    again from their prompts, as `Workers.generate` issues its requests again."""
    if not cfg.agent.tools:
        return workers.generate(prompts.groups(ids, num_samples, first_group_id=first_group_id), sampling, -1), {}
    agent, sandbox = build_agent(cfg, tokens.tok)
    messages = [prompts.messages(i, cfg.data.system_prompt) for i in ids]

    def attempt(_: int) -> AgentBatch:
        return asyncio.run(agent.play_groups(
            messages, workers.engines(), num_samples_per_prompt=num_samples, first_group_id=first_group_id,
            sampling=sampling, policy_version=-1, prompt_ids=ids, answers=[prompts.answer(i) for i in ids]))

    try:
        batch = workers.retrying(-1, attempt, "the evaluation's trajectories are played again")
    finally:
        sandbox.close()
    return batch.groups, {f"eval/{k}": v for k, v in batch.metrics.items() if k.startswith("agent/")}


def log_evaluation(tracker: Tracker, step: int, evaluation: Evaluation, tokens: Tokens, num_rows: int,
                   name: str) -> None:
    """The metrics at `step`, and the greedy responses as a table of samples (samples/<name>.json)."""
    tracker.log_metrics(step, evaluation.metrics)
    if evaluation.groups:
        tracker.log_table(sample_rows(step, evaluation.groups, tokens, num_rows), f"samples/{name}.json")


def sampled_eval_metrics(groups: list[Group]) -> dict[str, float]:
    """Over k sampled responses per prompt: mean@k, pass@k (unbiased estimator; reward >= 1 is correct) and the
    best-of-k reward, each averaged over prompts."""
    k = len(groups[0].samples)
    rewards = torch.tensor([[s.reward or 0.0 for s in g.samples] for g in groups], dtype=torch.float32)
    return {"eval/mean_at_k": float(mean_at_k(rewards, k).mean()),
            "eval/pass_at_k": float(pass_at_k_from_rewards(rewards, k).mean()),
            "eval/best_of_k": float(rewards.max(dim=1).values.mean()), "eval/k": float(k)}


def evaluate_checkpoint(cfg: RunConfig, checkpoint: str, *, num_samples: int = 4) -> RunResult:
    """`rlplat eval`: serve a saved policy on the spec's rollout engines and log an MLflow evaluation run with the
    same metrics as evaluation during training (k = num_samples sampled responses per prompt). The run is tagged
    with the checkpoint and, when the checkpoint names it, nested under the training run (mlflow.parentRunId)."""
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
        log_evaluation(tracker, source.step, evaluate_policy(cfg, workers, env, inputs, num_samples=num_samples),
                       inputs.tokens, cfg.tracking.num_logged_samples, "eval")
        status = "FINISHED"
    finally:
        tracker.finish(status)
        workers.shutdown()
        if env is not None:
            env.close()
    return RunResult(tracker.run_id, tracker.uri, out_dir, tracker.history)

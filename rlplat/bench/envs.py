"""`rlplat bench envs`: env steps/s of raw EnvPool versus rlplat's text layer (render + parse), no model.

Raw: EnvPool in sync mode (batch_size = num_envs), random integer actions, auto-reset, every env stepped every
call. Text: `EnvPoolTextEnv` in the same mode playing random valid replies ("left"/"right") in rounds: reset all
envs, step the live ones until every episode is done, reset again. Its steps/s counts the model's actions only;
the filler steps that keep EnvPool's batches full once most episodes have ended are reported as `fill`
(= model steps / all EnvPool steps), and `text_pool_steps_per_s` counts both, to separate the rendering and
parsing cost from the cost of episodes ending at different times. `text_async_steps_per_s` is the text layer
with batch_size = num_envs / 4, which needs fewer fillers but more recv() calls.

Training (headline): a few steps of `--spec` (configs/envpool_cartpole.yaml) through `driver.loop.train`, with the
real vLLM engine and learner; the share of a training step spent in env + render + parse (+ tokenising
observations) is sum(time/env_s) / sum(time/step_s) over the steps after the first (warm-up). The random-policy
return of the spec's env (random valid replies, same turn and token budgets) is printed next to the run's returns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable

import envpool
import numpy as np

from rlplat.bench.common import LOCAL_RAY, OVERRIDES_HELP, emit_headline, ensure_model, print_table
from rlplat.config import RunConfig
from rlplat.envs.agent_loop import episode_budget, episode_format, play_episodes
from rlplat.envs.registry import make_episode_env, make_text_env
from rlplat.types import FinishReason, Sample, SamplingOptions


def bench_raw(task_id: str, num_envs: int, seconds: float) -> float:
    """Env steps/s of a bare EnvPool pool stepped with random actions."""
    pool = envpool.make_gymnasium(
        task_id, num_envs=num_envs, batch_size=num_envs, num_threads=min(num_envs, os.cpu_count() or 1), seed=0
    )
    num_actions = int(pool.action_space.n)
    actions = np.random.default_rng(0).integers(0, num_actions, size=(1024, num_envs), dtype=np.int32)
    pool.reset()
    num_steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for k in range(64):
            pool.step(actions[(num_steps // num_envs + k) % len(actions)])
        num_steps += 64 * num_envs
    elapsed = time.perf_counter() - start
    pool.close()
    return num_steps / elapsed


def bench_text(
    task_id: str, num_envs: int, seconds: float, replies: tuple[str, ...], *, batch_size: int | None = None
) -> tuple[float, float, float]:
    """(model steps/s, EnvPool steps/s incl. fillers, model share of EnvPool steps) through the text layer."""
    env = make_text_env(task_id, num_envs, batch_size=batch_size, seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.reset()
        live = list(range(num_envs))
        while live:
            texts = [replies[i] for i in rng.integers(0, len(replies), size=len(live))]
            live = [r.env_id for r in env.step(live, texts) if not r.done]
    elapsed = time.perf_counter() - start
    env.close()
    pool_steps = env.num_steps + env.num_filler_steps
    return env.num_steps / elapsed, pool_steps / elapsed, env.num_steps / pool_steps


class RandomReplies:
    """A stand-in for the model: each turn one of `replies` at random (valid actions only), no EOS, log-prob 0."""

    def __init__(self, replies: tuple[str, ...], encode: Callable[[str], list[int]], seed: int = 0) -> None:
        self.replies, self.encode, self.rng = replies, encode, random.Random(seed)

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        for s in samples:
            ids = self.encode(self.rng.choice(self.replies))[: sampling.max_new_tokens]
            s.extend(ids, [0.0] * len(ids), policy_version, FinishReason.STOP)
        return samples


def random_return(cfg: RunConfig, replies: tuple[str, ...], num_episodes: int, seed: int = 0) -> dict[str, float]:
    """Episode metrics of random valid replies in the spec's env, with its budgets and tokenizer (no model)."""
    from rlplat.driver.experience import Tokens
    from rlplat.models import max_context_length

    tokens = Tokens(cfg.model.path)
    env = make_episode_env(cfg.env, num_episodes)
    try:
        batch = asyncio.run(play_episodes(
            env, [RandomReplies(replies, tokens.encode, seed)], tokens,
            seeds=[2**29 + seed + i for i in range(num_episodes)], num_samples_per_seed=1, first_group_id=0,
            budget=episode_budget(cfg.env, cfg.rollout.max_new_tokens, max_context_length(cfg.model.path)),
            fmt=episode_format(cfg.env), sampling=SamplingOptions(max_new_tokens=1), policy_version=0))
    finally:
        env.close()
    return batch.metrics


def train_share(cfg: RunConfig) -> tuple[float, dict[str, list[tuple[int, float]]]]:
    """Run `cfg` through loop.train; (env share of step time after the first step, the run's history)."""
    from rlplat.driver import loop

    history = loop.train(cfg, progress=False).history
    env_s = [v for step, v in history["time/env_s"] if step > 1]
    step_s = [v for step, v in history["time/step_s"] if step > 1]
    return sum(env_s) / sum(step_s), history


def _replies(task_id: str, renderer: str) -> tuple[str, ...]:
    if task_id.startswith("CartPole"):
        return ("l", "r") if renderer == "compact" else ("left", "right")
    return ("up", "right", "down", "left")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlplat bench envs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-id", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seconds", type=float, default=1.0, help="wall time per measurement")
    parser.add_argument("--spec", default="configs/envpool_cartpole.yaml", help="spec of the training measurement")
    parser.add_argument("--train-steps", type=int, default=4, help="training steps to time (the first is warm-up)")
    parser.add_argument("--no-train", action="store_true", help="env throughput only (headline: raw/text ratio)")
    parser.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    args = parser.parse_args(argv)
    if not args.no_train:  # bad input fails before anything is measured
        from rlplat.config import load_config

        cfg = load_config(args.spec, [LOCAL_RAY, f"experiment.num_steps={args.train_steps}",
                                      "experiment.name=bench-envs", *args.overrides])
        ensure_model(cfg.model.path)
    warnings.filterwarnings("ignore", message=".*precision lowered.*")  # gymnasium on EnvPool's float64 bounds
    ratio_at_64 = _throughput_table(args)
    if args.no_train:
        if ratio_at_64 is not None:
            emit_headline("envs", metric="text_layer_overhead_ratio", value=ratio_at_64, unit="x", goal=None,
                          higher_is_better=False)
        return 0

    rand = random_return(cfg, _replies(cfg.env.task_id, cfg.env.renderer), num_episodes=1024)
    share, history = train_share(cfg)
    returns = [v for _, v in history["env/episode_return_mean"]]
    print(f"\n{args.spec}: {args.train_steps} training steps of {cfg.num_samples_per_step} episodes")
    print_table(["phase", "median s/step"], [
        [key.removeprefix("time/"), statistics.median(v for s, v in history[key] if s > 1)]
        for key in ("time/env_s", "time/generate_s", "time/train_s", "time/weight_sync_s", "time/step_s")
        if key in history])
    print(f"episode return: random valid actions {rand['env/episode_return_mean']:.2f} "
          f"({rand['env/episode_length_turns_mean']:.2f} turns); model, steps 1..{args.train_steps}: "
          f"{', '.join(f'{r:.2f}' for r in returns)}")
    print(f"env + render + parse share of a training step: {share:.4f}")
    emit_headline("envs", metric="env_share_of_step", value=share, unit="fraction", goal=0.05,
                  higher_is_better=False)
    return 0


def _throughput_table(args: argparse.Namespace) -> float | None:
    """Raw EnvPool vs the text layer at each num_envs; returns raw/text at 64 envs (None if not measured)."""
    replies = ("left", "right") if args.task_id.startswith("CartPole") else ("up", "right", "down", "left")
    rows, ratio_at_64 = [], None
    for num_envs in args.num_envs:
        raw = bench_raw(args.task_id, num_envs, args.seconds)
        text, text_pool, fill = bench_text(args.task_id, num_envs, args.seconds, replies)
        text_async, _, _ = bench_text(args.task_id, num_envs, args.seconds, replies, batch_size=max(num_envs // 4, 1))
        rows.append(
            [args.task_id, num_envs, round(raw), round(text), round(text_pool), fill, round(text_async), raw / text]
        )
        if num_envs == 64:
            ratio_at_64 = raw / text
    print_table(
        [
            "task",
            "num_envs",
            "raw_steps_per_s",
            "text_steps_per_s",
            "text_pool_steps_per_s",
            "fill",
            "text_async_steps_per_s",
            "raw/text",
        ],
        rows,
    )
    return ratio_at_64


if __name__ == "__main__":  # as `python -m rlplat bench envs`: offline, the JSON line last
    import sys

    from rlplat.cli import main as cli_main

    raise SystemExit(cli_main(["bench", "envs", *sys.argv[1:]]))

"""`rlplat bench envs`: env steps/s of raw EnvPool versus rlplat's text layer (render + parse), no model.

Raw: EnvPool in sync mode (batch_size = num_envs), random integer actions, auto-reset, every env stepped every
call. Text: `EnvPoolTextEnv` in the same mode playing random valid replies ("left"/"right") in rounds: reset all
envs, step the live ones until every episode is done, reset again. Its steps/s counts the model's actions only;
the filler steps that keep EnvPool's batches full once most episodes have ended are reported as `fill`
(= model steps / all EnvPool steps), and `text_pool_steps_per_s` counts both, to separate the rendering and
parsing cost from the cost of episodes ending at different times. `text_async_steps_per_s` is the text layer
with batch_size = num_envs / 4, which needs fewer fillers but more recv() calls.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import envpool
import numpy as np

from rlplat.bench.common import emit_headline, print_table
from rlplat.envs.registry import make_text_env


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlplat bench envs", description=__doc__)
    parser.add_argument("--task-id", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seconds", type=float, default=1.0, help="wall time per measurement")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*precision lowered.*")  # gymnasium on EnvPool's float64 bounds
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
    if ratio_at_64 is None:
        return 0
    # Headline for now: how much slower env stepping gets through the text layer. The env share of a full
    # training step (generate + env + learn) becomes the headline once the model loop exists (issue 7, part 2).
    emit_headline(
        "envs", metric="text_layer_overhead_ratio", value=ratio_at_64, unit="x", goal=None, higher_is_better=False
    )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))

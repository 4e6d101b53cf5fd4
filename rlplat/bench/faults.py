"""`rlplat bench faults`: time from killing a rollout actor mid-generation to generation resuming.
(`--chaos`: kill -9 and recovery at seeded points, compared with an uninterrupted run: rlplat/bench/faults_chaos.py.)

Ray restarts the actor process; the new engine starts, receives the current weights (`Workers.recover`), and the
interrupted batch is issued again. Printed: kill -> engine ready with weights, and kill -> the re-issued batch done.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rlplat.bench.common import LOCAL_RAY, emit_headline, ensure_model, print_table

if TYPE_CHECKING:
    from rlplat.driver.workers import Workers

SPEC = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"  # engine options of the demo, one engine


def main(argv: list[str]) -> int:
    from rlplat.config import load_config
    from rlplat.driver.workers import Workers, engine_options

    if "--chaos" in argv:
        from rlplat.bench.faults_chaos import main as chaos_main

        return chaos_main([a for a in argv if a != "--chaos"])
    p = argparse.ArgumentParser(prog="rlplat bench faults", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/tiny", help="model directory (written as a tiny model if missing)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--chaos", action="store_true", help="instead: kill -9 the driver, the learner or a rollout "
                   "actor at seeded points, recover, compare with an uninterrupted run (--chaos --help: its options)")
    args = p.parse_args(argv)
    model = ensure_model(args.model, write_if_missing=True)
    cfg = load_config(SPEC, [f"model.path={model}", LOCAL_RAY, "rollout.num_workers=1",
                             "placement.weight_sync=bytes", "experiment.output_dir=outputs/bench_faults"])
    t0 = time.perf_counter()
    workers = Workers.start(cfg, engine_options(cfg))
    try:
        workers.sync(1)
        cold_start = time.perf_counter() - t0
        rows = [asyncio.run(kill_and_resume(workers)) for _ in range(args.repeats)]
    finally:
        workers.shutdown()
    print(f"\nrlplat bench faults: rollout actor killed mid-generation, {args.repeats} times "
          f"(cold start of engine and learner + first sync, for comparison: {cold_start:.1f} s)")
    print_table(["kill -> engine ready with weights (s)", "kill -> interrupted batch re-done (s)"], rows)
    emit_headline("faults", metric="kill_to_generation_resumed_s", value=statistics.median(r[0] for r in rows),
                  unit="s", goal=None, higher_is_better=False)
    return 0


async def kill_and_resume(workers: Workers) -> list[float]:
    """Kill engine 0 0.3 s into a 64 x 100-token batch; (kill -> ready with weights, kill -> batch re-done) in s."""
    from rlplat.driver.workers import ActorDied
    from rlplat.types import Sample, SamplingOptions

    def batch() -> list[Sample]:
        return [Sample(group_id=i, sample_index=0, prompt_id=i, prompt_token_ids=[29, 16, 33, 79, 3, 4, 5, 6, 82])
                for i in range(64)]

    engine, sampling = workers.engines()[0], SamplingOptions(max_new_tokens=100)
    running = asyncio.ensure_future(engine.generate(batch(), sampling, 1))
    await asyncio.sleep(0.3)
    t_kill = time.perf_counter()
    workers.kill_engine(0)
    try:
        await running
    except ActorDied:
        pass
    if workers.recover(1) != 1:  # a fresh process: it must have lost its weights and been given them again
        raise RuntimeError("the killed engine came back with weights it should not have")
    ready = time.perf_counter() - t_kill
    await engine.generate(batch(), sampling, 1)
    return [ready, time.perf_counter() - t_kill]

"""`rlplat bench generation`: raw generation throughput of one rollout engine at several `rollout.stream_interval`s.

One RolloutEngine per interval, on the spec's model and engine options (in this process, no Ray), generates
`--num-samples` fixed-length responses (`ignore_eos`, `--max-new-tokens` each) from short prompts, `--reps` times
after one warm-up batch. At interval 1 every engine step wakes every request's coroutine; larger intervals hand
over several tokens per wake-up. tokens/s is the median over the timed batches; the headline is the best
interval's tokens/s over interval 1's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from rlplat.bench.common import emit_headline, ensure_model, print_table


async def _throughput(options, num_samples: int, max_new_tokens: int, reps: int) -> list[float]:
    from rlplat.rollout.engine import RolloutEngine
    from rlplat.types import Sample, SamplingOptions

    engine = RolloutEngine(options)
    await engine.start()
    sampling = SamplingOptions(max_new_tokens=max_new_tokens, ignore_eos=True)
    rates = []
    try:
        for rep in range(reps + 1):  # the first batch warms up (kernels, allocator)
            samples = [Sample(group_id=i, sample_index=0, prompt_id=i, prompt_token_ids=[3 + i % 7, 4, 5 + i % 11])
                       for i in range(num_samples)]
            t0 = time.perf_counter()
            await engine.generate(samples, sampling, 0)
            seconds = time.perf_counter() - t0
            if rep:
                rates.append(sum(s.num_response_tokens for s in samples) / seconds)
    finally:
        engine.shutdown()
    return rates


def main(argv: list[str]) -> int:
    import dataclasses

    from rlplat.config import load_config
    from rlplat.driver.workers import engine_options

    p = argparse.ArgumentParser(prog="rlplat bench generation", description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="configs/demo.yaml")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 16])
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.spec, args.overrides)
    ensure_model(cfg.model.path)
    base = dataclasses.replace(engine_options(cfg),
                               max_num_seqs=max(cfg.rollout.max_num_seqs, args.num_samples))
    rows, rate = [], {}
    for interval in args.intervals:
        options = dataclasses.replace(base, stream_interval=interval)
        rates = asyncio.run(_throughput(options, args.num_samples, args.max_new_tokens, args.reps))
        rate[interval] = statistics.median(rates)
        rows.append([interval, rate[interval], min(rates), max(rates)])
    print(f"\nrlplat bench generation: {args.num_samples} x {args.max_new_tokens} tokens, {cfg.model.path}")
    print_table(["stream_interval", "tokens/s (median)", "min", "max"], rows)
    first = args.intervals[0]
    best = max(rate, key=rate.get)
    print(f"best: stream_interval {best}, {rate[best] / rate[first]:.2f}x interval {first}")
    emit_headline("generation", metric=f"tokens_per_s_best_interval_over_{first}", value=rate[best] / rate[first],
                  unit="x", goal=None, higher_is_better=True)
    return 0

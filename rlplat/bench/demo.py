"""`rlplat bench demo`: seconds per training step split by phase, and generated tokens/s in the loop next to
vLLM's raw generation speed on the same prompts (same engine settings, no learner, no weight sync)."""

from __future__ import annotations

import argparse
import statistics
import time

from rlplat.bench.common import LOCAL_RAY, OVERRIDES_HELP, emit_headline, ensure_model, print_table

PHASES = ("time/rollout_s", "time/reward_s", "time/train_s", "time/weight_sync_s", "time/step_s")


def main(argv: list[str]) -> int:
    import dataclasses

    from rlplat.config import load_config
    from rlplat.driver import loop
    from rlplat.driver.experience import RolloutOptions
    from rlplat.driver.run_state import preflight
    from rlplat.driver.workers import Workers, engine_options

    p = argparse.ArgumentParser(prog="rlplat bench demo")
    p.add_argument("--spec", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    args = p.parse_args(argv)
    cfg = load_config(args.spec, [LOCAL_RAY, f"experiment.num_steps={args.steps}", "experiment.name=bench-demo",
                                  *args.overrides])
    ensure_model(cfg.model.path)
    result = loop.train(cfg, progress=False)
    skip = min(2, args.steps - 1)  # the first steps include warm-up
    rows = []
    for key in PHASES:
        values = [v for s, v in result.history[key] if s > skip]
        rows.append([key.removeprefix("time/"), statistics.median(values), statistics.mean(values)])
    loop_tps = statistics.median(v for s, v in result.history["perf/rollout_tokens_per_s"] if s > skip)
    steps_tps = statistics.median(
        len_ * cfg.num_samples_per_step / step_s
        for (s, len_), (_, step_s) in zip(result.history["rollout/response_length_mean"],
                                          result.history["time/step_s"], strict=True) if s > skip)

    # Raw vLLM on the same prompts: one engine, same options, generate only.
    inputs = preflight(cfg)
    one_engine = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, num_workers=1))
    workers = Workers.start(one_engine, engine_options(cfg), with_learner=False)
    sampling = RolloutOptions.from_spec(cfg).sampling
    raw = []
    try:
        for rep in range(5):
            n = cfg.rollout.num_prompts_per_step
            groups = inputs.train_prompts.groups(list(range(rep * n, (rep + 1) * n)),
                                                 cfg.rollout.num_samples_per_prompt, first_group_id=rep * 1000)
            t0 = time.perf_counter()
            out = workers.generate(groups, sampling, 0)
            raw.append(sum(g.num_response_tokens for g in out) / (time.perf_counter() - t0))
    finally:
        workers.shutdown()
    raw_tps = statistics.median(raw[1:])

    print(f"\nrlplat bench demo: {args.steps} steps of {cfg.rollout.num_prompts_per_step} prompts x "
          f"{cfg.rollout.num_samples_per_prompt} samples, {cfg.rollout.max_new_tokens} new tokens (steps > {skip})")
    print_table(["phase", "median s/step", "mean s/step"], rows)
    print()
    print_table(["generation", "tokens/s"], [
        ["vLLM raw (same prompts, generate only)", raw_tps],
        ["rollout phase inside the loop", loop_tps],
        ["whole training step (tokens / step time)", steps_tps],
    ])
    print(f"rollout phase / raw vLLM: {loop_tps / raw_tps:.2f}x")
    emit_headline("demo", metric="step_s", value=statistics.median(rows[-1][1:2]), unit="s", goal=None,
                  higher_is_better=False)
    return 0

"""`rlplat bench algos`: GRPO, PPO, ReMix-GRPO and ReMix-PPO on the demo task for the same rollout budget.

Each algorithm runs `driver.loop.train` on its shipped spec (configs/<name>.yaml: the demo task, 16 prompts x 8
samples per step) for `--steps` steps, so every run consumes the same number of rollouts (samples). All runs
share one local Ray instance; each starts its own vLLM engine. The table shows, side by side, the reward curve
(mean rollout reward over the first and last `--smooth` steps, best moving average) and the rollouts each
algorithm needed before its moving-average reward reached a threshold: GRPO's final reward (the mean of its last
`--smooth` steps) and the fixed `--thresholds`.

Headline: rollouts ReMix-GRPO needed to reach GRPO's final reward / GRPO's rollouts (lower is better; goal <= 0.5,
the paper's claim of fewer rollouts for the same reward). `inf` when it never got there within the budget.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from rlplat.bench.common import LOCAL_RAY, emit_headline, ensure_model, print_table

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = {"grpo": "grpo.yaml", "ppo": "ppo.yaml", "remix_grpo": "remix_grpo.yaml", "remix_ppo": "remix_ppo.yaml"}


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values: out[i] = mean(values[max(0, i - window + 1) : i + 1])."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def rollouts_to_reach(rewards: list[float], threshold: float, *, window: int, samples_per_step: int) -> float:
    """Samples generated up to the first step whose trailing `window`-step mean reward is >= threshold (inf: never).

    >>> rollouts_to_reach([0.0, 0.2, 0.4, 0.6], 0.3, window=2, samples_per_step=10)
    30
    """
    for step, value in enumerate(moving_average(rewards, window), start=1):
        if value >= threshold - 1e-12:
            return step * samples_per_step
    return math.inf


def run_algorithm(name: str, spec: str, args: argparse.Namespace) -> dict[str, object]:
    from rlplat.config import load_config
    from rlplat.driver import loop

    out = Path(args.out) / name
    # one local Ray for every run (never attach to someone else's cluster from a benchmark)
    overrides = [LOCAL_RAY, f"experiment.num_steps={args.steps}", f"model.path={args.model}",
                 f"experiment.output_dir={out}", "tracking.experiment_name=rlplat-bench-algos",
                 f"tracking.log_samples_every_steps={args.steps}", f"experiment.seed={args.seed}",
                 "rollout.reproducible_sampling=true", *args.override]
    cfg = load_config(ROOT / "configs" / spec, overrides)
    start = time.perf_counter()
    result = loop.train(cfg, progress=False)
    seconds = time.perf_counter() - start
    rewards = [v for _, v in sorted(result.history["rollout/reward_mean"])]
    exact = [v for _, v in sorted(result.history.get("eval/exact_match", []))]
    return {"name": name, "rewards": rewards, "samples_per_step": cfg.num_samples_per_step, "seconds": seconds,
            "exact_match": exact[-1] if exact else float("nan"), "run_id": result.run_id}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlplat bench algos", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="training steps per algorithm (same rollouts for all)")
    p.add_argument("--algos", default=",".join(ALGORITHMS), help=f"comma-separated subset of {', '.join(ALGORITHMS)}")
    p.add_argument("--model", default="models/tiny", help="model directory (written as a tiny model if missing)")
    p.add_argument("--out", default="outputs/bench_algos")
    p.add_argument("--smooth", type=int, default=10, help="moving-average window in steps")
    p.add_argument("--thresholds", default="0.1,0.2,0.3", help="fixed reward thresholds to report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], help="extra spec override for every run (a.b=value)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.algos.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or "grpo" not in names:
        p.error(f"--algos must include grpo and use only {', '.join(ALGORITHMS)} (got {unknown or names})")
    ensure_model(args.model, write_if_missing=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # init_ray hands VLLM_* on to the engines
    runs = [run_algorithm(n, ALGORITHMS[n], args) for n in names]
    return report(runs, args)


def report(runs: list[dict], args: argparse.Namespace) -> int:
    grpo = next(r for r in runs if r["name"] == "grpo")
    target = sum(grpo["rewards"][-args.smooth :]) / len(grpo["rewards"][-args.smooth :])
    grpo_rollouts = grpo["samples_per_step"] * len(grpo["rewards"])
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    headers = ["algorithm", "rollouts", f"reward first {args.smooth}", f"reward last {args.smooth}",
               f"best MA{args.smooth}", f"rollouts to {target:.3f} (GRPO final)", "ratio to GRPO",
               *[f"rollouts to {t:g}" for t in thresholds], "eval exact", "wall s"]
    rows = []
    ratios: dict[str, float] = {}
    for r in runs:
        rw, sps, w = r["rewards"], r["samples_per_step"], args.smooth
        reach = rollouts_to_reach(rw, target, window=w, samples_per_step=sps)
        ratios[r["name"]] = reach / grpo_rollouts
        rows.append([r["name"], sps * len(rw), sum(rw[:w]) / len(rw[:w]), sum(rw[-w:]) / len(rw[-w:]),
                     max(moving_average(rw, w)), reach, ratios[r["name"]],
                     *[rollouts_to_reach(rw, t, window=w, samples_per_step=sps) for t in thresholds],
                     r["exact_match"], r["seconds"]])
    print(f"\nDemo task (reverse 4 digits, digit-accuracy reward), {args.steps} steps per algorithm, "
          f"moving average over {args.smooth} steps")
    print_table(headers, rows)
    headline = ratios.get("remix_grpo", math.inf)
    emit_headline("algos", metric="remix_rollouts_to_grpo_final_over_grpo", value=headline, unit="ratio", goal=0.5,
                  higher_is_better=False)
    return 0


if __name__ == "__main__":  # as `python -m rlplat bench algos`: offline, the JSON line last
    import sys

    from rlplat.cli import main as cli_main

    raise SystemExit(cli_main(["bench", "algos", *sys.argv[1:]]))

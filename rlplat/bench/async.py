"""`rlplat bench async`: the demo workload synchronously and with the asynchronous store at k = 1 and 2.

Each mode is one `driver.loop.train` run with the same seed and steps. samples/s = samples trained / summed step
time of steps 2..N (engine start-up, evaluation and the first step's warm-up excluded: on GPU step 1 takes
seconds of CUDA and allocator warm-up, which differs between modes and would swamp a short run); reward = mean
rollout reward over the last 10 steps.

Where a step's time goes (medians of steps 2..N): the learner's wait for its batch (all of generation + reward when
synchronous), training, and the weight sync. From the synchronous run, (generate + train + sync) /
max(generate, train + sync) is the most any overlap of rollout and training can give on this workload: it is
printed next to the measured ratio, so a workload with one dominant phase reads as such, not as a slow store.
The demo workload is overhead-bound on GPUs (a 0.4 s step); `configs/gpu_async.yaml` is a 2-GPU workload in which
generation and training each take a real share of the step.

`--seeds 0 1 2 3` runs every mode once per seed. The reward column is then the mean over seeds with its spread, and
each async mode is judged against synchronous: its reward is "within noise" when the difference of the means is at
most two standard errors of that difference (Welch), so one lucky or unlucky seed does not decide it.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

from rlplat.bench.common import LOCAL_RAY, OVERRIDES_HELP, emit_headline, ensure_model, print_table


def main(argv: list[str]) -> int:
    from rlplat.config import load_config
    from rlplat.driver import loop

    p = argparse.ArgumentParser(prog="rlplat bench async")
    p.add_argument("--spec", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=60, help="steps per mode (>= 2; step 1 is warm-up)")
    p.add_argument("--staleness", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run each mode once per experiment.seed (default: the spec's seed, one run per mode)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    args = p.parse_args(argv)
    modes: list[tuple[str, list[str]]] = [("sync", ["data.store.enabled=false"])]
    modes += [(f"async k={k}", ["data.store.enabled=true", f"data.store.max_staleness={k}"]) for k in args.staleness]
    seeds: list[int | None] = list(args.seeds) if args.seeds else [None]
    runs: dict[str, list[RunSummary]] = {}
    for name, extra in modes:
        for seed in seeds:
            run_name = "bench-async-" + name.replace(" ", "").replace("=", "") + ("" if seed is None else f"-s{seed}")
            seed_override = [] if seed is None else [f"experiment.seed={seed}"]
            cfg = load_config(args.spec, [LOCAL_RAY, f"experiment.num_steps={args.steps}",
                                          f"experiment.name={run_name}", *extra, *args.overrides, *seed_override])
            ensure_model(cfg.model.path)
            history = loop.train(cfg, progress=False).history
            runs.setdefault(name, []).append(summarize_run(history, cfg.num_samples_per_step))
    rate = {name: samples_per_s(rs) for name, rs in runs.items()}
    rows = [mode_row(name, rs, runs["sync"]) for name, rs in runs.items()]
    phase_rows = [[name, *mean_phases(rs).values()] for name, rs in runs.items()]
    bound = overlap_bound(mean_phases(runs["sync"]))
    seed_note = "the spec's seed" if seeds == [None] else f"seeds {', '.join(map(str, args.seeds))}"
    print(f"\nrlplat bench async: {args.steps} steps of {args.spec} per mode, {seed_note}")
    print_table(["mode", "samples/s (steps 2..N)", "median step s", "step 1 s", "reward (last 10)", "reward sd (seeds)",
                 "reward vs sync", "max staleness"], rows)
    print("\nmedian seconds per step (steps 2..N; mean over seeds)")
    print_table(["mode", *PHASES], phase_rows)
    base = rate["sync"]
    for name in rate:
        print(f"{name}: {rate[name] / base:.2f}x synchronous samples/s")
    print(f"most any overlap can give here (synchronous phases): {bound:.2f}x")
    k1 = next((n for n in rate if n == "async k=1"), None)
    emit_headline("async", metric="samples_per_s_k1_over_sync", value=rate[k1] / base if k1 else float("nan"),
                  unit="x", goal=1.5, higher_is_better=True)
    return 0


@dataclass(frozen=True)
class RunSummary:
    """What one `loop.train` run contributes to the bench."""

    step_s: list[float]  # steps 2..N
    first_step_s: float
    samples_per_step: int
    reward_last10: float  # mean rollout reward over the last 10 steps
    max_staleness: float
    phases_s: dict[str, float]  # step_phases of the run


def summarize_run(history: dict[str, list[tuple[int, float]]], samples_per_step: int) -> RunSummary:
    first, *steps = [v for _, v in history["time/step_s"]]
    rewards = [v for _, v in history["rollout/reward_mean"]]
    return RunSummary(step_s=steps, first_step_s=first, samples_per_step=samples_per_step,
                      reward_last10=statistics.mean(rewards[-10:]),
                      max_staleness=max((v for _, v in history.get("async/batch_staleness_max", [])), default=0.0),
                      phases_s=step_phases(history))


def samples_per_s(runs: list[RunSummary]) -> float:
    """Samples trained over summed step time, steps 2..N of every run."""
    return sum(r.samples_per_step * len(r.step_s) for r in runs) / sum(sum(r.step_s) for r in runs)


def mode_row(name: str, runs: list[RunSummary], sync_runs: list[RunSummary]) -> list[object]:
    """One line of the main table: throughput, step times, the reward over seeds and how it compares with sync."""
    rewards = [r.reward_last10 for r in runs]
    verdict = "" if runs is sync_runs else _verdict([r.reward_last10 for r in sync_runs], rewards)
    return [name, samples_per_s(runs), statistics.median(t for r in runs for t in r.step_s),
            statistics.mean(r.first_step_s for r in runs), statistics.mean(rewards),
            statistics.stdev(rewards) if len(rewards) > 1 else float("nan"), verdict,
            max(r.max_staleness for r in runs)]


def mean_phases(runs: list[RunSummary]) -> dict[str, float]:
    return {label: statistics.mean(r.phases_s[label] for r in runs) for label in PHASES}


def reward_difference(sync: list[float], other: list[float]) -> tuple[float, float]:
    """(mean(other) - mean(sync), two standard errors of that difference): Welch's, from each side's sample
    variance over seeds. Needs two or more seeds per side."""
    if len(sync) < 2 or len(other) < 2:
        raise ValueError("the reward's noise needs two or more seeds per mode")
    se = math.sqrt(statistics.variance(sync) / len(sync) + statistics.variance(other) / len(other))
    return statistics.mean(other) - statistics.mean(sync), 2.0 * se


def _verdict(sync: list[float], other: list[float]) -> str:
    if len(sync) < 2 or len(other) < 2:
        return "(needs --seeds)"
    diff, two_se = reward_difference(sync, other)
    return f"{diff:+.3f} (2 SE {two_se:.3f}): " + ("within noise" if abs(diff) <= two_se else "outside noise")


PHASES = ("wait for batch", "generate + reward", "train", "weight sync")


def step_phases(history: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """Median seconds of each phase over steps 2..N (generate + reward: the producer's, matched to its batch)."""
    def later(key: str) -> list[float]:
        return [v for step, v in history.get(key, []) if step > 1]

    values = dict(zip(PHASES, (later("time/rollout_s"),
                               [g + r for g, r in zip(later("time/generate_s"), later("time/reward_s"), strict=False)],
                               later("time/train_s"), later("time/weight_sync_s")), strict=True))
    return {label: statistics.median(v) if v else float("nan") for label, v in values.items()}


def overlap_bound(sync_phases: dict[str, float]) -> float:
    """(generate + train + sync) / max(generate, train + sync): a step's time when run one after the other, over
    its time if rollout and training overlapped perfectly (the learner still waits for its own sync)."""
    rollout = sync_phases["generate + reward"]
    learner = sync_phases["train"] + sync_phases["weight sync"]
    return (rollout + learner) / max(rollout, learner)

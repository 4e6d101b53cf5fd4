"""`rlplat bench async`: the demo workload synchronously and with the asynchronous store at k = 1 and 2.

Each mode is one `controller.train` run with the same seed and steps. samples/s = samples trained / summed step
time of steps 2..N (engine start-up, evaluation and the first step's warm-up excluded: on GPU step 1 takes
seconds of CUDA and allocator warm-up, which differs between modes and would swamp a short run); reward = mean
rollout reward over the last 10 steps.

Where a step's time goes (medians of steps 2..N): the learner's wait for its batch (all of generation + reward when
synchronous), training, and the weight sync. From the synchronous run, (generate + train + sync) /
max(generate, train + sync) is the most any overlap of rollout and training can give on this workload: it is
printed next to the measured ratio, so a workload with one dominant phase reads as such, not as a slow store.
The demo workload is overhead-bound on GPUs (a 0.4 s step); `configs/gpu_async.yaml` is a 2-GPU workload in which
generation and training each take a real share of the step.
"""

from __future__ import annotations

import argparse
import statistics

from rlplat.bench.common import emit_headline, print_table


def main(argv: list[str]) -> int:
    from rlplat import controller
    from rlplat.config import load_config

    p = argparse.ArgumentParser(prog="rlplat bench async")
    p.add_argument("--spec", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=60, help="steps per mode (>= 2; step 1 is warm-up)")
    p.add_argument("--staleness", type=int, nargs="+", default=[1, 2])
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    modes: list[tuple[str, list[str]]] = [("sync", ["data.store.enabled=false"])]
    modes += [(f"async k={k}", ["data.store.enabled=true", f"data.store.max_staleness={k}"]) for k in args.staleness]
    rows, phase_rows, rate, bound = [], [], {}, float("nan")
    for name, extra in modes:
        run_name = "bench-async-" + name.replace(" ", "").replace("=", "")
        cfg = load_config(args.spec, [f"experiment.num_steps={args.steps}", f"experiment.name={run_name}",
                                      *extra, *args.overrides])
        h = controller.train(cfg, progress=False).history
        first, *steps = [v for _, v in h["time/step_s"]]
        rate[name] = cfg.num_samples_per_step * len(steps) / sum(steps)
        rewards = [v for _, v in h["rollout/reward_mean"]]
        rows.append([name, rate[name], statistics.median(steps), first, statistics.mean(rewards[-10:]),
                     max((v for _, v in h.get("async/batch_staleness_max", [])), default=0.0)])
        phases = step_phases(h)
        phase_rows.append([name, *phases.values()])
        if name == "sync":
            bound = overlap_bound(phases)
    print(f"\nrlplat bench async: {args.steps} steps of {args.spec} per mode")
    print_table(["mode", "samples/s (steps 2..N)", "median step s", "step 1 s", "reward (last 10)", "max staleness"],
                rows)
    print("\nmedian seconds per step (steps 2..N)")
    print_table(["mode", *PHASES], phase_rows)
    base = rate["sync"]
    for name in rate:
        print(f"{name}: {rate[name] / base:.2f}x synchronous samples/s")
    print(f"most any overlap can give here (synchronous phases): {bound:.2f}x")
    k1 = next((n for n in rate if n == "async k=1"), None)
    emit_headline("async", metric="samples_per_s_k1_over_sync", value=rate[k1] / base if k1 else float("nan"),
                  unit="x", goal=1.5, higher_is_better=True)
    return 0


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

"""`rlplat bench faults --chaos`: kill -9 the driver, the learner or a rollout actor at seeded points, recover, and
compare every logged step with an uninterrupted run.

Each run is a real `rlplat train` of the demo task (tiny model, a few steps, a checkpoint every 2 steps, evaluation
every 3, `rollout.reproducible_sampling`) in a process of its own. One fault point = one run started with
RLPLAT_CHAOS=TARGET:PHASE:N (rlplat/driver/chaos.py), during rollout, train, weight sync, checkpoint save or eval.
A dead driver or learner ends the run: it is resumed (`--resume`); a dead rollout actor is recovered inside the run
(Ray restarts it, it gets the current weights, its batch is issued again). The point passes when the recovered run
logged the same value for every compared metric at every step as the uninterrupted run (exactly; timings and fault
counters are not compared). Also counted, per point: processes of the run alive after its driver ended (found by
an environment tag every process of the run inherits) and /dev/shm files its processes had mapped that are still
there. Both are removed after counting.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rlplat.bench.common import LOCAL_RAY, emit_headline, ensure_model, print_table

SPEC = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
CHECKPOINT_EVERY, EVAL_EVERY = 2, 3
TAG = "RLPLAT_CHAOS_RUN"  # set on each driver; inherited by its Ray processes, actors and engines
IGNORED_PREFIXES = ("time/", "perf/", "system/", "resume/", "faults/")  # timings, and what a fault changes by design
KINDS = ("rollout", "train", "sync", "checkpoint", "eval")
PHASES = {"rollout": "generation", "train": "train step", "sync": "weight sync", "checkpoint": "checkpoint save",
          "eval": "generation"}


@dataclass(frozen=True, slots=True)
class FaultPoint:
    kind: str  # one of KINDS
    target: str  # driver | learner | rollout
    step: int  # the step during which (or after which, for eval) the kill happens
    nth_call: int  # the N of RLPLAT_CHAOS: which call of the phase

    @property
    def chaos(self) -> str:
        return f"{self.target}:{PHASES[self.kind]}:{self.nth_call}"

    def __str__(self) -> str:
        return f"{self.target} killed in {self.kind} @ step {self.step}"


@dataclass
class RunOutcome:
    exit_code: int
    leftover_processes: int
    leftover_shm: int
    shm_paths: set[str] = field(default_factory=set)


def generation_calls(num_steps: int, eval_every: int) -> list[str]:
    """The driver's "generation" calls in order, for a synchronous run with greedy-only evaluation: an evaluation
    before step 1, then each step's rollout, an evaluation after every `eval_every`-th step but the last, and one
    after the last step.

    >>> generation_calls(4, 2)
    ['eval 0', 'step 1', 'step 2', 'eval 2', 'step 3', 'step 4', 'eval 4']
    """
    calls = ["eval 0"]
    for s in range(1, num_steps + 1):
        calls.append(f"step {s}")
        if eval_every and s % eval_every == 0 and s < num_steps:
            calls.append(f"eval {s}")
    return [*calls, f"eval {num_steps}"]


def fault_points(num_points: int, seed: int, num_steps: int) -> list[FaultPoint]:
    """`num_points` kill points: the kinds in turn (rollout, train, sync, checkpoint, eval, ...), the targets in turn
    from a seeded start, the step drawn from `seed`. Every kill comes after the first checkpoint, so a resumed run
    has one to start from."""
    rng = random.Random(seed)
    gens = generation_calls(num_steps, EVAL_EVERY)
    first = CHECKPOINT_EVERY + 1
    evals = [s for s in range(EVAL_EVERY, num_steps + 1, EVAL_EVERY)] + [num_steps]
    points, targets, shift = [], ("driver", "learner", "rollout"), rng.randrange(3)
    for i in range(num_points):
        kind, target = KINDS[i % len(KINDS)], targets[(i + shift) % len(targets)]
        if kind == "checkpoint":
            step = CHECKPOINT_EVERY * rng.randint(2, num_steps // CHECKPOINT_EVERY)
            n = step // CHECKPOINT_EVERY
        elif kind == "eval":
            step = rng.choice(sorted(set(evals)))
            n = gens.index(f"eval {step}") + 1
        else:
            step = rng.randint(first, num_steps)
            n = gens.index(f"step {step}") + 1 if kind == "rollout" else step
        points.append(FaultPoint(kind, target, step, n))
    return points


def compare(base: dict[str, list[tuple[int, float]]], got: dict[str, list[tuple[int, float]]]) -> list[str]:
    """What differs between two runs' metrics (IGNORED_PREFIXES left out): a missing or extra key, a step logged
    twice or missing, a different value. [] when equal.

    >>> compare({"loss/policy": [(1, 0.5), (2, 0.25)]}, {"loss/policy": [(1, 0.5), (2, 0.25), (2, 0.3)]})
    ['loss/policy: steps [1, 2] vs [1, 2, 2]']
    >>> compare({"loss/policy": [(1, 0.5)], "time/step_s": [(1, 3.0)]}, {"loss/policy": [(1, 0.5)]})
    []
    """
    def kept(h: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
        return {k: v for k, v in h.items() if not k.startswith(IGNORED_PREFIXES)}

    base, got = kept(base), kept(got)
    diffs = [f"{k}: missing" for k in sorted(base.keys() - got.keys())]
    diffs += [f"{k}: not in the uninterrupted run" for k in sorted(got.keys() - base.keys())]
    for k in sorted(base.keys() & got.keys()):
        steps_a, steps_b = [s for s, _ in base[k]], [s for s, _ in got[k]]
        if steps_a != steps_b:
            diffs.append(f"{k}: steps {steps_a} vs {steps_b}")
            continue
        diffs += [f"{k}: step {s}: {a!r} vs {b!r}" for (s, a), (_, b) in zip(base[k], got[k], strict=True) if a != b]
    return diffs


# ------------------------------------------------------------------------------------------------ running
def run_driver(args: list[str], out: Path, log_name: str, chaos: str | None, timeout_s: float) -> RunOutcome:
    """`rlplat train ARGS` in its own process (RLPLAT_CHAOS set when `chaos`); waits for it, then counts (and
    removes) the run's processes still alive and the /dev/shm files they had mapped that are still there."""
    import psutil

    tag = uuid.uuid4().hex
    env = {**os.environ, "RAY_ADDRESS": "", TAG: tag}
    env.pop("RLPLAT_CHAOS", None)
    if chaos:
        env["RLPLAT_CHAOS"] = chaos
    out.mkdir(parents=True, exist_ok=True)
    shm: set[str] = set()
    with open(out / f"{log_name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlplat", "train", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            shm |= mapped_shm(tagged(tag))
            time.sleep(1.0)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
    time.sleep(5.0)  # what the run's own shutdown still does after its driver exits
    alive = tagged(tag)
    for p in alive:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    left = {s for s in shm if Path(s).exists()}
    for s in left:
        Path(s).unlink(missing_ok=True)
    return RunOutcome(code, len(alive), len(left), left)


def tagged(tag: str) -> list:
    """The live processes whose environment carries TAG=tag."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG) == tag:
                found.append(p)
        except psutil.Error:
            continue
    return found


def mapped_shm(procs: list) -> set[str]:
    """The /dev/shm files (not yet unlinked) that `procs` have mapped."""
    from rlplat.rollout.shm import mapped_segments

    return mapped_segments([p.pid for p in procs])


def train_args(model: Path, out: Path, num_steps: int, extra: list[str]) -> list[str]:
    return [str(SPEC), f"model.path={model}", LOCAL_RAY, f"experiment.output_dir={out}",
            f"experiment.num_steps={num_steps}", f"checkpoint.every_steps={CHECKPOINT_EVERY}",
            f"eval.every_steps={EVAL_EVERY}", "eval.num_samples=1", "rollout.reproducible_sampling=true",
            "placement.weight_sync=bytes", "tracking.system_metrics_interval_s=0", *extra, "--no-progress"]


def main(argv: list[str]) -> int:
    from rlplat.tracking import read_histories

    p = argparse.ArgumentParser(prog="rlplat bench faults --chaos", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/tiny", help="model directory (written as a tiny model if missing)")
    p.add_argument("--points", type=int, default=5, help="fault points K (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="draws the targets and steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=6, help="steps of every run (default: %(default)s)")
    p.add_argument("--out", default="outputs/bench_chaos", help="output directory (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=900, help="per driver process (default: %(default)s)")
    p.add_argument("override", nargs="*", help="spec overrides a.b=value")
    args = p.parse_args(argv)
    if args.steps < 2 * CHECKPOINT_EVERY or args.points < 1:
        raise SystemExit("rlplat bench faults --chaos: --steps must be >= 4 and --points >= 1")
    model, root = ensure_model(args.model, write_if_missing=True), Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    base_out = root / "uninterrupted"
    base = run_driver(train_args(model, base_out, args.steps, args.override), base_out, "run", None, args.timeout_s)
    if base.exit_code != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {base.exit_code}); see {base_out / 'run.log'}")
    reference = read_histories(f"sqlite:///{base_out.resolve()}/mlflow.db")
    rows, passed = [], 0
    for i, point in enumerate(fault_points(args.points, args.seed, args.steps)):
        out = root / f"point_{i}"
        spec_args = train_args(model, out, args.steps, args.override)
        first = run_driver(spec_args, out, "run", point.chaos, args.timeout_s)
        resumed = run_driver([*spec_args, "--resume"], out, "resume", None, args.timeout_s) \
            if first.exit_code != 0 else None
        diffs = compare(reference, read_histories(f"sqlite:///{out.resolve()}/mlflow.db"))
        passed += not diffs and (resumed is None or resumed.exit_code == 0)
        runs = [first] + ([resumed] if resumed else [])
        rows.append([str(point), point.chaos, first.exit_code, "-" if resumed is None else resumed.exit_code,
                     "yes" if not diffs else f"no ({len(diffs)}: {diffs[0][:60]})",
                     sum(r.leftover_processes for r in runs), sum(r.leftover_shm for r in runs)])
        print(f"[{i + 1}/{args.points}] {rows[-1]}", flush=True)
        for d in diffs[:10]:
            print(f"    {d}")
    compared = len([k for k in reference if not k.startswith(IGNORED_PREFIXES)])
    print(f"\nrlplat bench faults --chaos: {args.points} fault points (seed {args.seed}), {args.steps} steps each, "
          f"{compared} metrics compared at every step with an uninterrupted run ({root}); the uninterrupted run "
          f"left {base.leftover_processes} processes and {base.leftover_shm} /dev/shm files")
    print_table(["fault point", "RLPLAT_CHAOS", "exit", "resume exit", "equal to uninterrupted",
                 "leftover processes", "leftover /dev/shm"], rows)
    emit_headline("faults_chaos", metric="share_of_fault_points_equal_to_uninterrupted", value=passed / args.points,
                  unit="share", goal=1.0, higher_is_better=True)
    return 0

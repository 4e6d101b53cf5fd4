"""`rlplat bench peer`: rlplat against TRL's GRPOTrainer on the same work, side by side, in one run.

Both sides train the same local model directory (models/tiny, written if missing) from the same weights on the
same prompts (the copy task, `cp:1234=` -> `1234<eos>`), 16 prompts x 8 samples per step, 6 new tokens,
temperature 1, lr 1e-4 (constant, AdamW, grad clip 1), GRPO group-normalized advantages, the token-mean PPO-clip
loss (clip 0.2), one update per batch, no KL, rlplat's `digit_accuracy` reward, and the same seed.
rlplat runs `configs/demo.yaml data.task=copy learner.lr=1e-4` through `driver.loop.train` (vLLM rollout);
TRL runs GRPOTrainer with HF generate (no vLLM) in a subprocess, rlplat/bench/peer_trl/trl_grpo.py, with the
Python of a venv that has trl: this one when `.[peer]` is installed, else `--venv` (built on first use:
`python -m venv` + `pip install torch==<this torch> transformers==<this transformers> trl==<TRL_VERSION>`).
rlplat's learner and engine are Ray actors of num_cpus=1, so each runs one torch thread; TRL's process gets one too
(`--trl-threads`): with torch's default of one per core, a TRL step took 6.1 s instead of 0.6 s on 2 busy cores.

For each side and seed the table shows seconds per step (median), samples/s and generated tokens/s (EOS
included), and the steps and seconds of training until the `--window`-step trailing mean reward first reaches
each of `--thresholds` (inf: never within `--steps`). Seconds count from the start of the first step, logging
included; "wall s" is the whole side, from launch (imports, Ray, vLLM, eval) to exit.

Headline: time to the highest threshold, rlplat / TRL (median over seeds; lower is better; goal <= 1.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlplat.bench.algos import moving_average
from rlplat.bench.common import LOCAL_RAY, emit_headline, ensure_model, print_table

if TYPE_CHECKING:
    from rlplat.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
TRL_SCRIPT = Path(__file__).resolve().parent / "peer_trl" / "trl_grpo.py"
TRL_VERSION = "1.16.0"
SPEC = ROOT / "configs" / "demo.yaml"
# The shared settings on rlplat's side; trl_grpo.py sets the same ones from the job file.
RLPLAT_OVERRIDES = ("data.task=copy", "learner.lr=1e-4", "rollout.num_prompts_per_step=16",
                    "rollout.num_samples_per_prompt=8", "rollout.max_new_tokens=6", "rollout.temperature=1.0",
                    "algorithm.kl_coef=0.0")


@dataclass(frozen=True, slots=True)
class SideRun:
    """One side's training run, per step (index 0 = step 1). end_s: seconds from the start of step 1 to the end
    of the step (its logging included); setup_s: from launch to the start of step 1 (imports, model load; rlplat:
    also Ray, the vLLM engine, the step-0 eval); wall_s: the whole side from launch to exit."""

    side: str
    seed: int
    reward_mean: list[float]
    step_s: list[float]
    end_s: list[float]
    num_tokens: list[float]
    setup_s: float
    wall_s: float


def parse_floats(text: str) -> list[float]:
    """'0.5, 0.8' -> [0.5, 0.8]; ValueError names the bad item.

    >>> parse_floats("0.5,0.8")
    [0.5, 0.8]
    """
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise ValueError(f"not a number: {item!r} in {text!r}") from None
    if not out:
        raise ValueError(f"no values in {text!r}")
    return out


def steps_to_reach(rewards: list[float], threshold: float, *, window: int) -> float:
    """The first step (1-based) whose trailing `window`-step mean reward is >= threshold; only full windows count
    (step >= window). inf: never.

    >>> steps_to_reach([0.0, 0.2, 0.4, 0.6], 0.3, window=2)
    3
    >>> steps_to_reach([0.9, 0.0], 0.5, window=3)
    inf
    """
    for step, value in enumerate(moving_average(rewards, window), start=1):
        if step >= window and value >= threshold - 1e-12:
            return step
    return math.inf


def time_to_reach(run: SideRun, threshold: float, *, window: int) -> float:
    """Seconds from the start of step 1 to the end of the step that first reaches `threshold` (inf: never)."""
    step = steps_to_reach(run.reward_mean, threshold, window=window)
    return run.end_s[int(step) - 1] if step != math.inf else math.inf


def summary_row(run: SideRun, thresholds: list[float], *, window: int, samples_per_step: int) -> list[object]:
    """side, seed, steps, median s/step, samples/s, generated tokens/s, steps and seconds to each threshold,
    the last window's mean reward, setup and wall seconds."""
    median_step = statistics.median(run.step_s)
    reach = [steps_to_reach(run.reward_mean, t, window=window) for t in thresholds]
    times = [time_to_reach(run, t, window=window) for t in thresholds]
    last = run.reward_mean[-window:]
    return [run.side, run.seed, len(run.step_s), median_step, samples_per_step / median_step,
            sum(run.num_tokens) / sum(run.step_s), *reach, *times, sum(last) / len(last), run.setup_s, run.wall_s]


def table_headers(thresholds: list[float], window: int) -> list[str]:
    return ["side", "seed", "steps", "s/step (median)", "samples/s", "gen tokens/s",
            *[f"steps to {t:g}" for t in thresholds], *[f"s to {t:g}" for t in thresholds],
            f"reward last {window}", "setup s", "wall s"]


def headline_ratio(runs: list[SideRun], threshold: float, *, window: int) -> float:
    """Median over seeds of rlplat's time to `threshold` / the median of TRL's (inf: rlplat never got there;
    nan: neither did)."""
    def median_time(side: str) -> float:
        return statistics.median(time_to_reach(r, threshold, window=window) for r in runs if r.side == side)

    ours, theirs = median_time("rlplat"), median_time("trl")
    if math.isinf(ours) and math.isinf(theirs):
        return math.nan
    return ours / theirs


# --- TRL: a venv with trl, and trl_grpo.py in it -----------------------------------------------------------------

def trl_python(venv: Path) -> Path:
    """This interpreter when trl is importable (`pip install -e .[peer]`), else the venv's, built on first use."""
    if importlib.util.find_spec("trl") is not None:
        return Path(sys.executable)
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl, transformers, torch, datasets"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    import torch
    import transformers

    wants = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
             f"trl=={TRL_VERSION}"]
    print(f"building the TRL venv {venv} (first use, a few minutes): pip install {' '.join(wants)}",
          file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wants], check=True)
    return python


def shared_config(args: argparse.Namespace) -> RunConfig:
    """rlplat's spec of the shared work; the TRL side reads its task, shape and hyperparameters from it."""
    from rlplat.config import load_config

    return load_config(SPEC, [LOCAL_RAY, *RLPLAT_OVERRIDES, f"model.path={args.model}",
                              f"experiment.num_steps={args.steps}", "experiment.name=bench-peer",
                              "tracking.experiment_name=rlplat-bench-peer",
                              f"tracking.log_samples_every_steps={args.steps}", *args.override])


def run_trl(args: argparse.Namespace, seed: int, python: Path) -> SideRun:
    from rlplat.envs.tasks import make_split

    cfg = shared_config(args)
    problems = make_split(cfg.data.task, num_digits=cfg.data.num_digits, num_prompts=cfg.data.num_train_prompts,
                          seed=cfg.data.seed, split="train")  # rlplat's train prompts, served in TRL's order
    out = Path(args.out) / f"trl-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    job = {"model": str(Path(args.model).resolve()), "prompts": [p.prompt for p in problems],
           "answers": [p.answer for p in problems], "num_prompts_per_step": cfg.rollout.num_prompts_per_step,
           "num_samples_per_prompt": cfg.rollout.num_samples_per_prompt,
           "max_new_tokens": cfg.rollout.max_new_tokens, "temperature": cfg.rollout.temperature,
           "lr": cfg.learner.lr, "seed": seed, "num_steps": args.steps, "output_dir": str(out / "trainer")}
    (out / "job.json").write_text(json.dumps(job))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if args.trl_threads:  # torch's intra-op threads; rlplat's roles each run one (Ray's num_cpus=1 actors)
        env |= {"OMP_NUM_THREADS": str(args.trl_threads), "MKL_NUM_THREADS": str(args.trl_threads)}
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        done = subprocess.run([str(python), str(TRL_SCRIPT), str(out / "job.json"), str(out / "result.json")],
                              stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600 + 30 * args.steps)
    if done.returncode != 0:
        tail = (out / "log.txt").read_text().splitlines()[-15:]
        raise RuntimeError(f"the TRL side failed (exit {done.returncode}); {out / 'log.txt'} ends:\n" + "\n".join(tail))
    r = json.loads((out / "result.json").read_text())
    print(f"trl seed {seed}: TRL {r['trl']}, transformers {r['transformers']}, torch {r['torch']}", file=sys.stderr)
    return SideRun("trl", seed, r["reward_mean"], r["step_s"], r["end_s"], r["num_tokens"], r["setup_s"],
                   time.perf_counter() - start)


# --- rlplat ---------------------------------------------------------------------------------------------------

class StepClock:
    """Wall-clock time at which each step's line lands in output_dir/trained_groups.jsonl (written as the step is
    logged), read by polling: the driver keeps (step, value) metrics without timestamps."""

    def __init__(self, path: Path, interval_s: float = 0.02) -> None:
        self.path, self.interval_s, self.times = path, interval_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        seen = 0
        while not self._stop.wait(self.interval_s):
            try:
                with open(self.path, "rb") as f:
                    lines = f.read().count(b"\n")
            except FileNotFoundError:
                continue
            now = time.perf_counter()
            self.times += [now] * (lines - seen)
            seen = lines

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.times


def run_rlplat(args: argparse.Namespace, seed: int) -> SideRun:
    from rlplat.driver import loop

    out = Path(args.out) / f"rlplat-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    shared = shared_config(args)
    cfg = dataclasses.replace(shared, experiment=dataclasses.replace(shared.experiment, seed=seed,
                                                                     output_dir=str(out)))
    start = time.perf_counter()
    clock = StepClock(out / "trained_groups.jsonl")
    try:
        result = loop.train(cfg, progress=False)
    finally:
        logged = clock.stop()
    wall = time.perf_counter() - start
    h = {k: [v for _, v in sorted(result.history[k])] for k in
         ("rollout/reward_mean", "time/step_s", "rollout/response_length_mean")}
    if len(logged) != len(h["time/step_s"]):
        raise RuntimeError(f"saw {len(logged)} steps logged in {out / 'trained_groups.jsonl'}, expected "
                           f"{len(h['time/step_s'])}")
    begin = logged[0] - h["time/step_s"][0]  # the first step began this long before its line landed
    return SideRun("rlplat", seed, h["rollout/reward_mean"], h["time/step_s"], [t - begin for t in logged],
                   [n * cfg.num_samples_per_step for n in h["rollout/response_length_mean"]], begin - start, wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlplat bench peer", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per side and seed (default 1000; "
                                                           "--quick: 30)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, each run on both sides (e.g. 0,1,2)")
    p.add_argument("--thresholds", default="0.5,0.8", help="reward thresholds of the trailing mean to time")
    p.add_argument("--window", type=int, default=None, help="trailing-mean window in steps (default 20; --quick: 5)")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes: 30 steps, one seed")
    p.add_argument("--model", default="models/tiny", help="model directory (the tiny model is written if missing)")
    p.add_argument("--out", default="outputs/peer", help="where both sides write their runs and logs")
    p.add_argument("--venv", default="outputs/peer/venv", help="the venv with trl (built here on first use) when "
                                                              "this Python has no trl")
    p.add_argument("--trl-threads", type=int, default=1, help="torch threads of the TRL process (default 1, as "
                   "each rlplat role has; 0: torch's default, every core: slow when other work shares the cores)")
    p.add_argument("--override", action="append", default=[], help="extra rlplat spec override (a.b=value)")
    args = p.parse_args(argv)
    args.steps = args.steps or (30 if args.quick else 1000)
    args.window = args.window or (5 if args.quick else 20)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        thresholds = parse_floats(args.thresholds)
    except ValueError as e:
        p.error(str(e))
    if args.quick:
        seeds = seeds[:1]
    if args.steps < args.window:
        p.error(f"--steps {args.steps} must be >= --window {args.window}")
    ensure_model(args.model, write_if_missing=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # init_ray hands VLLM_* on to the engines
    python = trl_python(Path(args.venv))
    runs: list[SideRun] = []
    for seed in seeds:  # alternate sides, so a change in machine load hits both
        runs.append(run_trl(args, seed, python))
        runs.append(run_rlplat(args, seed))
    return report(runs, thresholds, args, shared_config(args).num_samples_per_step)


def report(runs: list[SideRun], thresholds: list[float], args: argparse.Namespace, samples: int) -> int:
    print(f"\nrlplat vs TRL {TRL_VERSION} GRPOTrainer: copy 4 digits, 16 prompts x 8 samples, 6 new tokens, lr 1e-4, "
          f"{args.steps} steps, trailing mean over {args.window} steps, TRL threads {args.trl_threads or 'default'}; "
          f"{_load()}")
    print_table(table_headers(thresholds, args.window),
                [summary_row(r, thresholds, window=args.window, samples_per_step=samples) for r in runs])
    top = max(thresholds)
    ratio = headline_ratio(runs, top, window=args.window)
    print(f"time to {top:g}, rlplat / TRL (median over seeds): {ratio:.3g}")
    emit_headline("peer", metric=f"time_to_{top:g}_rlplat_over_trl", value=ratio, unit="ratio", goal=1.5,
                  higher_is_better=False)
    return 0


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


if __name__ == "__main__":  # as `python -m rlplat.bench.peer`: offline, the JSON line last
    from rlplat.cli import main as cli_main

    raise SystemExit(cli_main(["bench", "peer", *sys.argv[1:]]))

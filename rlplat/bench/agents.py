"""`rlplat bench agents`: the sandbox's throughput and latency, and the share of a multi-turn training step spent
outside generation and training.

Part 1, the sandbox (no engine): --num-runs executions of each program, submitted at once to one pool built from
the spec's `agent.sandbox` (its max_concurrency slots, its limits, the isolation this machine allows). Rows: a
short program; one that prints 10 MB (kept up to max_output_bytes); one that spins until the wall-clock limit
(--timeout-s, fewer runs: each takes that long). executions/s = runs / wall time of the whole batch; latency =
each execution's own wall time (`SandboxResult.wall_s`, start to exit or kill; time queued for a slot excluded),
p50 and p99; "as expected" counts runs that gave the right stdout / were truncated / timed out.

Part 2, training steps (--steps, 0 skips it): a real run of the spec (configs/tools.yaml) with the `python` tool,
on the tiny chat model SFT'd on python-tool traces. When --model is missing it is made first (data, model, a short
SFT: as `rlplat data tools OUT --tool python --sft`, `rlplat model tiny --corpus`, `rlplat sft`), so a fresh clone
runs it. Per step:
  engine_s   the time in which at least one model-turn request was in flight on any engine. Measured here: the
             driver logs the rollout's wall time (time/generate_s, which includes tools and template work) but
             not the engines' busy time, so the bench wraps the engines the loop plays trajectories on.
  train_s    time/train_s
  outside_s  time/step_s - engine_s - train_s: tools while no request was in flight, template deltas, rewards,
             batching, weight sync, Ray calls.
Headline: the median over steps 2..N of outside_s / step_s (goal < 10%); with --steps 0, the short program's
executions/s.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlplat.bench.common import LOCAL_RAY, OVERRIDES_HELP, emit_headline, print_table

PROGRAMS = {  # name -> (program, what a correct run shows)
    "short program": ("print(sum(i * i for i in range(1000)))", "stdout 332833500"),
    "prints 10 MB": ("import sys\nsys.stdout.write('x' * 10_000_000)", "stdout truncated"),
    "times out": ("while True:\n    pass", "timed out"),
}
SFT_DIR = Path("outputs/bench-agents-sft")  # data/, tiny/ and sft_model/ of the python-tool warm start
PROMPTS = Path("outputs/bench-agents-prompts")  # the run's prompts (tool task, seed 1), written on every run


# ------------------------------------------------------------------------------------------------ the sandbox
@dataclass(frozen=True, slots=True)
class SandboxRow:
    program: str
    num_runs: int
    executions_per_s: float
    p50_ms: float
    p99_ms: float
    num_as_expected: int


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics, as numpy's default.

    >>> percentile([4.0, 1.0, 3.0, 2.0], 50), percentile([1.0, 2.0, 3.0, 4.0, 5.0], 99), percentile([7.0], 99)
    (2.5, 4.96, 7.0)
    """
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def as_expected(program: str, res: Any) -> bool:
    if program == "short program":
        return res.ok and res.stdout.strip() == "332833500"
    if program == "prints 10 MB":
        return res.stdout_truncated and not res.timed_out
    return res.timed_out


def bench_sandbox(sandbox: Any, *, num_slots: int, num_runs: int, timeout_s: float) -> list[SandboxRow]:
    """One row per PROGRAMS entry; `sandbox` is an rlplat.sandbox.Sandbox of `num_slots` slots."""
    rows = []
    for name, (code, _) in PROGRAMS.items():
        limits = replace(sandbox.limits, timeout_s=timeout_s) if name == "times out" else sandbox.limits
        n = num_runs if name != "times out" else max(2, min(num_runs, 2 * num_slots))
        sandbox.run_sync("pass")  # warm: the first run pays for the page cache
        t0 = time.perf_counter()
        futures = [sandbox.submit(code, limits=limits) for _ in range(n)]
        wait(futures, timeout=n * (limits.timeout_s + 30))
        seconds = time.perf_counter() - t0
        results = [f.result(timeout=0) for f in futures]
        walls_ms = [r.wall_s * 1000 for r in results]
        rows.append(SandboxRow(name, n, n / seconds, percentile(walls_ms, 50), percentile(walls_ms, 99),
                               sum(as_expected(name, r) for r in results)))
    return rows


# ---------------------------------------------------------------------------------------------- a train step
@dataclass(slots=True)
class BusyClock:
    """Seconds in which at least one request was in flight (over every engine), by the requests' policy version.
    Requests of one synchronous step share its version, so busy_s[v] is that step's engine time."""

    busy_s: dict[int, float] = field(default_factory=dict)
    in_flight: int = 0
    since: float = 0.0

    def started(self) -> None:
        if self.in_flight == 0:
            self.since = time.perf_counter()
        self.in_flight += 1

    def finished(self, version: int) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.busy_s[version] = self.busy_s.get(version, 0.0) + time.perf_counter() - self.since


class TimedEngine:
    """An engine (the agent loop's TurnWorker) whose requests are timed by a shared BusyClock."""

    def __init__(self, engine: Any, clock: BusyClock) -> None:
        self.engine, self.clock = engine, clock

    async def generate(self, samples: list[Any], sampling: Any, policy_version: int) -> list[Any]:
        self.clock.started()
        try:
            return await self.engine.generate(samples, sampling, policy_version)
        finally:
            self.clock.finished(policy_version)

    async def abort(self) -> int:
        return await self.engine.abort()


@contextlib.contextmanager
def timed_engines(clock: BusyClock) -> Iterator[None]:
    """While open, `Workers.engines()` (what AgentTrajectories plays on) hands out TimedEngines."""
    from rlplat.driver.workers import Workers

    original = Workers.engines
    Workers.engines = lambda self: [TimedEngine(e, clock) for e in original(self)]  # type: ignore[method-assign]
    try:
        yield
    finally:
        Workers.engines = original  # type: ignore[method-assign]


@dataclass(frozen=True, slots=True)
class StepShare:
    step: int
    step_s: float
    engine_s: float
    train_s: float
    outside_s: float
    tools_s: float  # time/tools_s: trajectories' waits on tools, summed (they overlap generation)

    @property
    def outside_share(self) -> float:
        return self.outside_s / self.step_s


def step_shares(history: dict[str, list[tuple[int, float]]], busy_s: dict[int, float]) -> list[StepShare]:
    """Per step: step, engine, train and outside time. The k-th smallest policy version is step k's (synchronous).

    >>> h = {"time/step_s": [(1, 10.0), (2, 4.0)], "time/train_s": [(1, 1.0), (2, 1.0)],
    ...      "time/tools_s": [(1, 0.5), (2, 0.5)]}
    >>> [round(s.outside_share, 3) for s in step_shares(h, {0: 6.0, 1: 2.6})]
    [0.3, 0.1]
    """
    steps = dict(history["time/step_s"])
    if len(busy_s) != len(steps):
        raise RuntimeError(f"engine time of {len(busy_s)} policy versions for {len(steps)} steps: the bench "
                           "needs a synchronous run (data.store.enabled=false) without dynamic sampling")
    train, tools = dict(history["time/train_s"]), dict(history.get("time/tools_s", []))
    rows = []
    for step, version in zip(sorted(steps), sorted(busy_s), strict=True):
        outside = steps[step] - busy_s[version] - train[step]
        rows.append(StepShare(step, steps[step], busy_s[version], train[step], outside, tools.get(step, 0.0)))
    return rows


def ensure_python_tool_model(model: Path, *, sft_steps: int) -> Path:
    """The python-tool SFT model; made under SFT_DIR when missing (data, tiny BPE model, SFT). Never a hub request."""
    if (model / "config.json").is_file():
        return model
    from rlplat.agents.tools import python_tool
    from rlplat.config import load_config
    from rlplat.data.generators import write_splits
    from rlplat.data.tool_tasks import corpus_lines, tool_splits
    from rlplat.driver.sft import train_sft
    from rlplat.models import write_tiny_model

    print(f"{model} is missing: writing python-tool traces, a tiny model and {sft_steps} SFT steps under {SFT_DIR}",
          file=sys.stderr)
    schemas = [python_tool().schema()]
    splits = tool_splits(num_train=1000, num_test=50, seed=0, schemas=schemas, sft=True, tool="python")
    write_splits(SFT_DIR / "data", splits)
    tiny = write_tiny_model(SFT_DIR / "tiny", tokenizer="bpe", corpus=corpus_lines(splits["train"], schemas, "python"))
    cfg = load_config("configs/sft_tools.yaml", [
        f"model.path={tiny}", f"sft.train_files=[{SFT_DIR / 'data/train.jsonl'}]",
        f"sft.eval_files=[{SFT_DIR / 'data/test.jsonl'}]", f"sft.num_steps={sft_steps}", "sft.eval_every_steps=0",
        "experiment.name=bench-agents-sft", f"sft.save_dir={model}"])
    train_sft(cfg, report=lambda line: print(line, file=sys.stderr))
    return model


def bench_steps(spec: str, model: Path, steps: int, overrides: Sequence[str]) -> list[StepShare]:
    from rlplat.config import load_config
    from rlplat.data.generators import write_splits
    from rlplat.data.tool_tasks import tool_splits
    from rlplat.driver import loop

    prompts = write_splits(PROMPTS, tool_splits(num_train=500, num_test=0, seed=1))[0]
    cfg = load_config(spec, [LOCAL_RAY, f"model.path={model}", f"data.train_files=[{prompts}]",
                             "agent.tools=[python]", f"experiment.num_steps={steps}", "experiment.name=bench-agents",
                             "tracking.log_samples_every_steps=1000", *overrides])
    clock = BusyClock()
    with timed_engines(clock):
        result = loop.train(cfg, progress=False)
    shares = step_shares(result.history, clock.busy_s)
    tool_use = dict(result.history.get("agent/tool_use_rate", []))
    print(f"\ntraining steps: {spec} with the python tool, {cfg.rollout.num_prompts_per_step} prompts x "
          f"{cfg.rollout.num_samples_per_prompt} trajectories, sandbox slots {cfg.agent.sandbox.max_concurrency}")
    print_table(["step", "step s", "engine busy s", "train s", "outside s", "outside share", "tools s (summed)",
                 "tool use rate"],
                [[s.step, s.step_s, s.engine_s, s.train_s, s.outside_s, f"{100 * s.outside_share:.1f}%", s.tools_s,
                  tool_use.get(s.step, float("nan"))] for s in shares])
    return shares


def main(argv: list[str]) -> int:
    from rlplat.agents.spec import build_sandbox
    from rlplat.config import load_config
    from rlplat.sandbox import isolation_report

    p = argparse.ArgumentParser(prog="rlplat bench agents")
    p.add_argument("--spec", default="configs/tools.yaml", help="its agent.sandbox and rollout sizes are used")
    p.add_argument("--num-runs", type=int, default=64, help="executions per sandbox program (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=1.0, help="wall-clock limit of the `times out` program")
    p.add_argument("--steps", type=int, default=6, help="training steps with the python tool (0: sandbox only; "
                                                         "step 1 is warm-up)")
    p.add_argument("--model", default=str(SFT_DIR / "sft_model"), help="python-tool chat model (made if missing)")
    p.add_argument("--sft-steps", type=int, default=80, help="SFT steps when --model must be made")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    args = p.parse_args(argv)
    cfg = load_config(args.spec, [LOCAL_RAY, *args.overrides])
    with build_sandbox(cfg.agent.sandbox) as sandbox:
        print(f"sandbox isolation: {isolation_report(sandbox.isolation)}")
        rows = bench_sandbox(sandbox, num_slots=cfg.agent.sandbox.max_concurrency, num_runs=args.num_runs,
                             timeout_s=args.timeout_s)
    print(f"\nsandbox: {cfg.agent.sandbox.max_concurrency} slots, {args.num_runs} runs per program "
          f"(`times out`: {args.timeout_s} s limit)")
    print_table(["program", "runs", "executions/s", "p50 ms", "p99 ms", "as expected", "expected"],
                [[r.program, r.num_runs, r.executions_per_s, r.p50_ms, r.p99_ms, f"{r.num_as_expected}/{r.num_runs}",
                  PROGRAMS[r.program][1]] for r in rows])
    if args.steps <= 0:
        emit_headline("agents", metric="sandbox_executions_per_s", value=rows[0].executions_per_s, unit="1/s",
                      goal=None, higher_is_better=True)
        return 0
    model = ensure_python_tool_model(Path(args.model), sft_steps=args.sft_steps)
    shares = bench_steps(args.spec, model, args.steps, args.overrides)
    later = [s.outside_share for s in shares if s.step > 1] or [s.outside_share for s in shares]
    emit_headline("agents", metric="step_share_outside_generation_and_training", value=statistics.median(later),
                  unit="fraction", goal=0.10, higher_is_better=False)
    return 0

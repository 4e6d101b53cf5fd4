"""`rlplat bench rollout`: synchronous full-batch rollout against APRIL, side by side on the same vLLM engines.

Both modes run through `AprilManager` on the same in-process `RolloutEngine`s (started once): synchronous
rollout is over_provision 1 (issue N groups, wait for all N), APRIL is over_provision 2 (issue 2N, stop at N
complete, abort, continue the rest next step). Both must deliver exactly N complete groups per step.

Long tail: a random tiny model almost never emits EOS, so a sample runs to its token budget. Each prompt gets
one budget for its whole group, drawn from a log-normal (median `--median-tokens`, sigma `--sigma`) and capped at
`--max-new-tokens`, so a batch's slowest group is several times its median. Budgets depend only on the prompt id
and both modes see the same prompt stream.

Honest accounting: throughput counts only tokens of groups delivered complete, divided by rollout wall time
(`collect`, including APRIL's abort and drain). Tokens APRIL generated for groups still buffered at the end earn
nothing. Between steps every engine reloads the weights (as a weight sync does, which also clears the prefix
cache, so a continued sample pays its re-prefill); that time is the same in both modes and not counted. Modes
alternate in rounds (sync, april, sync, april, ...) so load from other processes hits both alike. Engine idle
share: the fraction of rollout time an engine had no request at all.

    python -m rlplat.bench.rollout [--quick] [--num-engines 2] [--steps 12]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlplat.bench.common import emit_headline, print_table
from rlplat.rollout.april_manager import AprilManager
from rlplat.rollout.engine import EngineOptions, RolloutEngine
from rlplat.types import Group, Sample, SamplingOptions

PROMPT_LEN = 8
CONTEXT = 512


@dataclass
class ModeTotals:
    name: str
    over_provision: float
    steps: int = 0
    groups: int = 0
    tokens: int = 0  # response tokens of delivered (complete) groups
    rollout_s: float = 0.0
    sync_s: float = 0.0
    idle_s: float = 0.0  # engine-seconds with no request, summed over engines
    inflight_sample_s: float = 0.0  # in-flight samples integrated over time, summed over engines
    off_policy: list[float] = field(default_factory=list)
    tokens_generated: int = 0
    tokens_buffered: int = 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlplat bench rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (about a minute after engine start)")
    parser.add_argument("--model", default="", help="HF model dir (default: a tiny random Qwen2 in a temp dir)")
    parser.add_argument("--num-engines", type=int, default=2, help="rollout engines (workers)")
    parser.add_argument("--num-groups", type=int, default=16, help="complete groups per step (N)")
    parser.add_argument("--group-size", type=int, default=4, help="samples per group")
    parser.add_argument("--over-provision", type=float, default=2.0, help="APRIL's N'/N")
    parser.add_argument("--steps", type=int, default=None, help="steps per mode (default 12, quick 6)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations sync/april the steps are split into")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="budget cap")
    parser.add_argument("--median-tokens", type=float, default=24.0, help="median per-prompt budget")
    parser.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of the per-prompt budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 12)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # read when vllm is first imported (engine start)
    if args.num_engines < 1 or args.num_groups < 1 or args.group_size < 1 or args.over_provision < 1:
        parser.error("--num-engines, --num-groups, --group-size must be >= 1 and --over-provision >= 1")
    if args.model:
        _check_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else _tiny_model(Path(tmp))
        sync, april = asyncio.run(_run(args, model))
    _report(args, sync, april)
    return 0


def _check_model(path: str) -> None:
    """A --model that is not a local model directory is bad input (one line), never a hub request."""
    from rlplat.config import ConfigError
    from rlplat.models import check_model_dir

    try:
        check_model_dir(path)
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None


def _tiny_model(tmp: Path) -> Path:
    from rlplat.models import TinyModelShape, write_tiny_model

    return write_tiny_model(tmp / "tiny", shape=TinyModelShape(max_position_embeddings=CONTEXT))


def budget(prompt_id: int, args: argparse.Namespace) -> int:
    """The per-prompt token budget: log-normal(median, sigma), at least 4, capped at --max-new-tokens."""
    z = random.Random(args.seed * 1_000_003 + prompt_id).gauss(0.0, 1.0)
    return max(4, min(args.max_new_tokens, round(args.median_tokens * math.exp(args.sigma * z))))


class PromptStream:
    """fresh(k) for `AprilManager.collect`: new groups of random prompts, numbered in order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.next_id = args, 0

    def __call__(self, k: int) -> list[Group]:
        out = []
        for _ in range(k):
            pid, self.next_id = self.next_id, self.next_id + 1
            rng = random.Random(self.args.seed * 7919 + pid)
            prompt = [rng.randrange(2, 60) for _ in range(PROMPT_LEN)]
            samples = [Sample(group_id=pid, sample_index=i, prompt_id=pid, prompt_token_ids=list(prompt))
                       for i in range(self.args.group_size)]
            out.append(Group(group_id=pid, prompt_id=pid, samples=samples))
        return out


async def _run(args: argparse.Namespace, model: Path) -> tuple[ModeTotals, ModeTotals]:
    from safetensors.torch import load_file

    from rlplat.weights import state_dict_to_bytes

    context = PROMPT_LEN + args.max_new_tokens + 8
    engines = [RolloutEngine(EngineOptions(model_path=str(model), max_model_len=max(context, 64), seed=args.seed + i))
               for i in range(args.num_engines)]
    t0 = time.perf_counter()
    await asyncio.gather(*(e.start() for e in engines))
    print(f"started {len(engines)} engine(s) in {time.perf_counter() - t0:.1f} s", flush=True)
    weights = load_file(str(model / "model.safetensors"))
    weights.pop("lm_head.weight", None)
    payload = state_dict_to_bytes(weights)
    try:
        warm = PromptStream(args)
        warm_up = AprilManager(engines, over_provision=1.0)
        await warm_up.collect(2 * len(engines), warm, SamplingOptions(max_new_tokens=16), 0)
        modes = [(ModeTotals("sync", 1.0), AprilManager(engines, over_provision=1.0), PromptStream(args)),
                 (ModeTotals("april", args.over_provision), AprilManager(engines, over_provision=args.over_provision),
                  PromptStream(args))]
        per_round = [args.steps // args.rounds + (r < args.steps % args.rounds) for r in range(args.rounds)]
        for n_steps in per_round:
            for totals, mgr, stream in modes:
                for _ in range(n_steps):
                    await _step(args, engines, payload, totals, mgr, stream)
                print(f"{totals.name}: {totals.steps} steps, {totals.tokens} tokens in {totals.rollout_s:.1f} s",
                      flush=True)
        for totals, mgr, _ in modes:
            totals.tokens_generated, totals.tokens_buffered = mgr.ledger.generated, mgr.ledger.buffered
        return modes[0][0], modes[1][0]
    finally:
        for e in engines:
            e.shutdown()


async def _step(args: argparse.Namespace, engines: list[RolloutEngine], payload: bytes, totals: ModeTotals,
                mgr: AprilManager, stream: PromptStream) -> None:
    sampling = SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=1.0)
    t0 = time.perf_counter()
    step = await mgr.collect(args.num_groups, stream, sampling, totals.steps,
                             budget_for=lambda g: budget(g.prompt_id, args))
    t1 = time.perf_counter()
    await asyncio.gather(*(e.load_weights(payload) for e in engines))  # the weight sync (not timed as rollout)
    if len(step.groups) != args.num_groups or not all(g.is_complete for g in step.groups):
        raise RuntimeError(f"{totals.name}: step delivered {len(step.groups)} groups, expected {args.num_groups}")
    wall = t1 - t0
    totals.steps += 1
    totals.groups += len(step.groups)
    totals.tokens += sum(g.num_response_tokens for g in step.groups)
    totals.rollout_s += wall
    totals.sync_s += time.perf_counter() - t1
    totals.idle_s += step.metrics["april/engine_idle_share"] * wall * len(engines)
    totals.inflight_sample_s += step.metrics["april/mean_inflight_samples_per_engine"] * wall * len(engines)
    totals.off_policy.append(step.metrics["rollout/off_policy_token_fraction"])


def _report(args: argparse.Namespace, sync: ModeTotals, april: ModeTotals) -> None:
    budgets = [budget(p, args) for p in range(2000)]
    q = statistics.quantiles(budgets, n=100)
    print(f"\nrollout: {args.num_engines} vLLM engine(s), N={args.num_groups} groups x {args.group_size} samples per "
          f"step, {args.steps} steps per mode; per-prompt budget log-normal: median {statistics.median(budgets):.0f}, "
          f"mean {statistics.mean(budgets):.0f}, p90 {q[89]:.0f}, p99 {q[98]:.0f}, cap {args.max_new_tokens} tokens")
    rows = []
    for t in (sync, april):
        engine_s = t.rollout_s * args.num_engines
        rows.append([t.name, t.over_provision, t.steps, t.groups, t.tokens, round(t.rollout_s, 2),
                     round(t.tokens / t.rollout_s, 1), round(t.groups / t.rollout_s, 2),
                     round(t.idle_s / engine_s, 3), round(t.inflight_sample_s / engine_s, 1),
                     round(statistics.mean(t.off_policy), 3), t.tokens_generated, t.tokens_buffered,
                     round(t.sync_s, 2)])
    print_table(["mode", "N'/N", "steps", "groups", "tokens_done", "rollout_s", "tokens_per_s", "groups_per_s",
                 "engine_idle", "inflight_per_engine", "off_policy", "tokens_generated", "tokens_buffered_end",
                 "weight_sync_s"], rows)
    ratio = (april.tokens / april.rollout_s) / (sync.tokens / sync.rollout_s)
    emit_headline("rollout", metric="april_over_sync_throughput", value=round(ratio, 3), unit="x", goal=1.3,
                  higher_is_better=True)


if __name__ == "__main__":  # as `python -m rlplat bench rollout`: offline, the JSON line last
    import sys

    from rlplat.cli import main as cli_main

    raise SystemExit(cli_main(["bench", "rollout", *sys.argv[1:]]))

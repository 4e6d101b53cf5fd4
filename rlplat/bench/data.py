"""`rlplat bench data`: rows/s of loading, templating and tokenizing prompt datasets, and the share of a training
step spent preparing data (issue 17: goal < 2%).

1. Throughput. `--rows` countdown rows (chat-message prompts) and as many arithmetic rows (GSM8K-like plain-string
   `question`s) are generated (rlplat.data.generators) and written as jsonl and parquet to a temporary directory,
   next to the tiny BPE chat model (`rlplat model tiny --tokenizer bpe`) and the demo's char tokenizer. Each stage
   is timed on its own, the best of `--repeats` runs: `load_rows` per format with a cold `datasets` cache (a fresh
   cache dir: what the first run on a file pays) and a warm one (the Arrow cache a rerun reads); `tokenize_prompts`
   through the BPE model's ChatML template (arithmetic also as plain text, and the demo's digit prompts on the
   char tokenizer); and the whole `load_prompts` (load + template + tokenize) per format, cold.
2. Per step. The driver's data work in one step of the demo's shape (16 prompts x 8 samples, 6 response tokens):
   `EpochCursor.take`, `PromptSet.groups` (a copy of the prompt ids per sample) and `reward_inputs` (responses
   decoded, answers encoded, each sample's row columns looked up by prompt id), over `--steps` steps; filling in
   the responses, the engine's work, is not counted. Share = median data seconds per step / training step seconds.
   The step time is `--step-s`, by default DEMO_STEP_S, or with `--measure-step` the median `time/step_s` of 10
   steps of configs/demo.yaml through driver.loop.train after 2 warm-up steps (this starts Ray and vLLM).
Headline: data_share_of_step, the largest share of the datasets (lower is better, goal 0.02).
No Ray here unless --measure-step (driver.experience, for reward_inputs, imports the ray module without starting it).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rlplat.bench.common import LOCAL_RAY, OVERRIDES_HELP, emit_headline, ensure_model, print_table
from rlplat.data.chat import ChatTemplateMode

# The median whole-step time (`time/step_s`) of `rlplat bench demo` in BENCHMARKS.md ("Per-phase step time", the
# rerun on the 2-core CPU while nearly idle). The faster of its two figures, so the share errs high.
DEMO_STEP_S = 0.225
GOAL = 0.02
FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True, slots=True)
class DataSet:
    """One prompt dataset under test: its files by format, the column holding the prompt, and which tiny model's
    tokenizer renders it."""

    name: str
    files: dict[str, Path]
    prompt_key: str
    tokenizer_name: str  # "bpe" | "char"


def rows_per_s(num_rows: int, seconds: float) -> float:
    """Throughput of a stage that handled `num_rows` rows in `seconds`.

    >>> rows_per_s(20_000, 0.5)
    40000.0
    """
    if seconds <= 0:
        raise ValueError(f"a timed stage must take > 0 s, got {seconds}")
    return num_rows / seconds


def data_share(data_s_per_step: float, step_s: float) -> float:
    """The fraction of a training step spent preparing data.

    >>> data_share(0.002, 0.2)
    0.01
    """
    if step_s <= 0:
        raise ValueError(f"the training step time must be > 0 s, got {step_s} (--step-s)")
    if data_s_per_step < 0:
        raise ValueError(f"data seconds per step must be >= 0, got {data_s_per_step}")
    return data_s_per_step / step_s


def median_after_warmup(history: Sequence[tuple[int, float]], *, warmup_steps: int) -> float:
    """Median value of (step, value) pairs after the first `warmup_steps` steps (steps count from 1).

    >>> median_after_warmup([(1, 9.0), (2, 5.0), (3, 0.2), (4, 0.4), (5, 0.3)], warmup_steps=2)
    0.3
    """
    values = [v for step, v in history if step > warmup_steps]
    if not values:
        raise ValueError(f"no steps after the {warmup_steps} warm-up steps (run more steps)")
    return statistics.median(values)


def random_responses(num_samples: int, length: int, token_ids: Sequence[int], *, seed: int) -> list[list[int]]:
    """`num_samples` responses of `length` ids drawn from `token_ids`: stand-ins for what the engine generates.

    >>> random_responses(2, 3, [7], seed=0)
    [[7, 7, 7], [7, 7, 7]]
    """
    if not token_ids:
        raise ValueError("no token ids to draw responses from")
    rng = random.Random(seed)
    return [[rng.choice(token_ids) for _ in range(length)] for _ in range(num_samples)]


def best_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """The shortest wall time of `repeats` calls of fn: under a shared machine's load the minimum is the closest
    to the work's own cost."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def with_cold_cache(load: Callable[..., object], new_cache_dir: Callable[[], Path]) -> Callable[[], object]:
    """`load` called with a cache dir no load has used, so `datasets` converts the file again on every call."""
    return lambda: load(cache_dir=new_cache_dir())


def write_datasets(out: Path, num_rows: int, seed: int) -> list[DataSet]:
    """Countdown (chat messages) and arithmetic (plain strings) train rows as jsonl and parquet under `out`."""
    from rlplat.data.generators import arithmetic_splits, countdown_splits, write_splits

    sets = []
    for name, make, key in (("countdown", countdown_splits, "prompt"), ("arithmetic", arithmetic_splits, "question")):
        splits = make(num_train=num_rows, num_test=0, seed=seed)
        files = {fmt: write_splits(out / name, splits, fmt=fmt)[0] for fmt in FORMATS}
        sets.append(DataSet(name, files, key, "bpe"))
    return sets


def digit_rows(num_rows: int, seed: int) -> list[Any]:
    """The demo's prompts (reverse 4 digits) as in-memory rows, as the driver builds them for `data.task`."""
    from rlplat.data.datasets import rows_from_records
    from rlplat.data.generators import records_from_problems
    from rlplat.envs.tasks import make_split

    problems = make_split("reverse", num_digits=4, num_prompts=num_rows, seed=seed, split="train")
    return rows_from_records(records_from_problems(problems), source="digits:reverse:train")


def throughput(sets: list[DataSet], digits: list[Any], tokenizers: dict[str, Any], tmp: Path,
               repeats: int) -> tuple[list[list[object]], dict[str, Any]]:
    """The throughput table's rows, and each dataset's TokenizedPrompts (for the per-step part)."""
    from rlplat.data.datasets import load_prompts, load_rows, tokenize_prompts

    caches = iter(range(1_000_000))

    def cold() -> Path:  # a cache dir no load has used
        return tmp / "cache" / str(next(caches))

    table: list[list[object]] = []
    tokenized: dict[str, Any] = {}

    def add(name: str, stage: str, tok: str, n: int, seconds: float, tokens: float | str = "") -> None:
        table.append([name, stage, tok, n, seconds, round(rows_per_s(n, seconds)), tokens])

    for ds in sets:
        tok = tokenizers[ds.tokenizer_name]
        rows: list[Any] = []
        for fmt, path in ds.files.items():
            load = partial(load_rows, [path], prompt_key=ds.prompt_key)
            rows = load(cache_dir=cold())
            add(ds.name, f"load_rows {fmt}, cold cache", "", len(rows),
                best_seconds(with_cold_cache(load, cold), repeats))
            warm = partial(load, cache_dir=cold())
            warm()
            add(ds.name, f"load_rows {fmt}, warm cache", "", len(rows), best_seconds(warm, repeats))
        modes: tuple[ChatTemplateMode, ...] = ("auto", "never") if ds.name == "arithmetic" else ("auto",)
        for mode in modes:
            render = partial(tokenize_prompts, rows, tok, apply_chat_template=mode)
            out = render()
            tokenized.setdefault(ds.name, out)
            stage = "tokenize_prompts, " + ("chat template" if mode == "auto" else "plain text")
            add(ds.name, stage, ds.tokenizer_name, len(rows), best_seconds(render, repeats),
                statistics.mean(map(len, out.prompt_token_ids)))
        for fmt, path in ds.files.items():
            load_all = partial(load_prompts, [path], tok, prompt_key=ds.prompt_key)
            add(ds.name, f"load_prompts {fmt}, cold cache", ds.tokenizer_name, len(rows),
                best_seconds(with_cold_cache(load_all, cold), repeats))
    render = partial(tokenize_prompts, digits, tokenizers["char"])
    out = render()
    tokenized["digits"] = out
    add("digits (demo)", "tokenize_prompts, plain text", "char", len(digits), best_seconds(render, repeats),
        statistics.mean(map(len, out.prompt_token_ids)))
    return table, tokenized


def step_data_seconds(prompts: Any, tokens: Any, *, num_prompts: int, num_samples: int, response_tokens: int,
                      num_steps: int, seed: int) -> list[float]:
    """Seconds of data work in each of `num_steps` steps: cursor.take + PromptSet.groups + reward_inputs.

    prompts: a driver PromptSet; tokens: the driver's Tokens (tokenizer used to decode responses)."""
    from rlplat.data.datasets import EpochCursor
    from rlplat.driver.experience import first_group_id, reward_inputs
    from rlplat.types import FinishReason

    cursor = EpochCursor(len(prompts), seed=seed)
    special = set(tokens.tok.all_special_ids)
    vocab = [i for i in range(len(tokens.tok)) if i not in special]
    out = []
    for step in range(1, num_steps + 1):
        responses = random_responses(num_prompts * num_samples, response_tokens, vocab, seed=seed + step)
        t0 = time.perf_counter()
        groups = prompts.groups(cursor.take(num_prompts), num_samples, first_group_id(step))
        t1 = time.perf_counter()
        samples = [s for g in groups for s in g.samples]
        for s, ids in zip(samples, responses, strict=True):  # the engine's part: not counted
            s.extend(ids, [0.0] * len(ids), 0, FinishReason.LENGTH)
        t2 = time.perf_counter()
        reward_inputs(samples, tokens, prompts)
        out.append(t1 - t0 + time.perf_counter() - t2)
    return out


def measure_step_s(spec: str, overrides: Sequence[str], num_steps: int = 10, warmup_steps: int = 2) -> float:
    """Median `time/step_s` of `spec` trained for `num_steps` steps through driver.loop.train, after warm-up."""
    from rlplat.config import load_config
    from rlplat.driver import loop

    cfg = load_config(spec, [LOCAL_RAY, f"experiment.num_steps={num_steps}", "experiment.name=bench-data",
                             *overrides])
    ensure_model(cfg.model.path)
    history = loop.train(cfg, progress=False).history
    return median_after_warmup(history["time/step_s"], warmup_steps=warmup_steps)


def main(argv: list[str]) -> int:
    from rlplat.driver.experience import Tokens
    from rlplat.driver.prompts import PromptSet
    from rlplat.models import write_tiny_model

    p = argparse.ArgumentParser(prog="rlplat bench data", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows per dataset (quick run: --rows 2000)")
    p.add_argument("--repeats", type=int, default=3, help="throughput: best of this many runs per stage")
    p.add_argument("--steps", type=int, default=200, help="per-step part: steps timed")
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--samples-per-prompt", type=int, default=8)
    p.add_argument("--response-tokens", type=int, default=6)
    p.add_argument("--step-s", type=float, default=DEMO_STEP_S,
                   help=f"training step seconds to divide by (default {DEMO_STEP_S}: the demo's median in "
                        "BENCHMARKS.md, 2-core CPU)")
    p.add_argument("--measure-step", action="store_true",
                   help="measure the step time instead: 10 steps of --spec, median after 2 (starts Ray and vLLM)")
    p.add_argument("--spec", default="configs/demo.yaml", help="the spec --measure-step trains")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="with --measure-step: " + OVERRIDES_HELP)
    args = p.parse_args(argv)
    if args.rows < args.prompts_per_step:
        p.error(f"--rows must be >= --prompts-per-step ({args.prompts_per_step})")

    with tempfile.TemporaryDirectory(prefix="rlplat-bench-data-") as d:
        tmp = Path(d)
        print(f"writing {args.rows} rows per dataset and the tiny models to {tmp}", file=sys.stderr)
        sets = write_datasets(tmp, args.rows, args.seed)
        digits = digit_rows(args.rows, args.seed)
        models = {name: write_tiny_model(tmp / name, tokenizer=name) for name in ("bpe", "char")}
        tokens = {name: Tokens(str(path)) for name, path in models.items()}
        table, tokenized = throughput(sets, digits, {k: t.tok for k, t in tokens.items()}, tmp, args.repeats)

        per_step = []
        for name, t in tokenized.items():
            prompts = PromptSet("train", t.rows, t.prompt_token_ids, t.num_dropped)
            seconds = step_data_seconds(prompts, tokens["char" if name == "digits" else "bpe"],
                                        num_prompts=args.prompts_per_step, num_samples=args.samples_per_prompt,
                                        response_tokens=args.response_tokens, num_steps=args.steps, seed=args.seed)
            per_step.append((name, "char" if name == "digits" else "bpe", statistics.median(seconds),
                             statistics.mean(seconds)))

    step_s, source = args.step_s, "--step-s" if args.step_s != DEMO_STEP_S else "the demo's median in BENCHMARKS.md"
    if args.measure_step:
        step_s, source = measure_step_s(args.spec, args.overrides), f"measured: {args.spec}, median of steps 3-10"

    print(f"\nrlplat bench data: {args.rows} rows per dataset, best of {args.repeats} runs per stage")
    print_table(["dataset", "stage", "tokenizer", "rows", "s", "rows/s", "tokens/prompt"], table)
    print(f"\nper step: {args.prompts_per_step} prompts x {args.samples_per_prompt} samples, {args.response_tokens} "
          f"response tokens, {args.steps} steps; training step {step_s:.4g} s ({source})")
    shares = [data_share(median, step_s) for _, _, median, _ in per_step]
    print_table(["dataset", "tokenizer", "median ms/step", "mean ms/step", "share of step"],
                [[name, tok, 1e3 * median, 1e3 * mean, share]
                 for (name, tok, median, mean), share in zip(per_step, shares, strict=True)])
    emit_headline("data", metric="data_share_of_step", value=max(shares), unit="fraction", goal=GOAL,
                  higher_is_better=False)
    return 0

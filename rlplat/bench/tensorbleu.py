"""`rlplat bench tensorbleu`: NLTK's per-sentence BLEU loop (CPU) against TensorBLEU on CPU and, if present, GPU.

Workload (as in the TensorBLEU paper, arXiv:2510.05485): B candidates of exactly L random token ids (vocab 32000),
one reference each (the candidate with ~30% of its tokens replaced), BLEU-4 with "floor" smoothing (NLTK
method1). NLTK gets ready-made Python lists (list conversion not timed, which favours NLTK); TensorBLEU gets
tensors already on its device. Each time is the median of several repeats after a warm-up; GPU times
synchronize before and after. The last column checks that both give the same scores.

    python -m rlplat.bench.tensorbleu [--quick] [--repeats 10] [--nltk-repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from rlplat.bench.common import emit_headline, print_table
from rlplat.rewards.tensorbleu import corpus_bleu, sentence_bleu

FULL_SIZES = [(b, seq_len) for seq_len in (256, 1024) for b in (32, 128, 256, 512)]  # (batch size, tokens)
QUICK_SIZES = [(32, 256), (512, 1024)]
HEADLINE_SIZE = (512, 1024)
VOCAB_SIZE = 32000
PAD_ID = 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlplat bench tensorbleu", description="NLTK vs TensorBLEU timings")
    parser.add_argument("--quick", action="store_true", help="two sizes only (runs in < 1 min on a small CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed TensorBLEU runs (default 10, quick 3)")
    parser.add_argument("--nltk-repeats", type=int, default=None, help="timed NLTK runs per size (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (3 if args.quick else 10)
    nltk_repeats = args.nltk_repeats or (1 if args.quick else 3)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    rows: list[list[object]] = []
    headline: dict[str, float] = {}
    for batch_size, seq_len in sizes:
        cand, refs = _make_batch(batch_size, seq_len, seed=batch_size * 7919 + seq_len)
        nltk_ms, nltk_scores = _time_nltk(cand, refs, nltk_repeats)
        for device in devices:
            c, r = cand.to(device), refs.to(device)
            sent_ms, scores = _time_tensor(partial(sentence_bleu, c, r, pad_id=PAD_ID, smoothing="floor"), repeats)
            corp_ms, _ = _time_tensor(partial(corpus_bleu, c, r, pad_id=PAD_ID, smoothing="floor"), repeats)
            diff = "n/a" if nltk_scores is None else f"{(scores.cpu() - nltk_scores).abs().max().item():.1e}"
            speedup = "n/a" if nltk_ms is None else f"{nltk_ms / sent_ms:.1f}x"
            nltk_cell = "n/a" if nltk_ms is None else nltk_ms
            rows.append([device, batch_size, seq_len, nltk_cell, sent_ms, speedup, corp_ms, diff])
            if (batch_size, seq_len) == HEADLINE_SIZE:
                headline[device] = sent_ms
    print(f"TensorBLEU vs NLTK sentence_bleu, BLEU-4 floor smoothing, 1 reference, vocab {VOCAB_SIZE}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    headers = ["device", "B", "L", "nltk_ms", "tensorbleu_ms", "speedup", "corpus_ms", "max_abs_diff"]
    print_table(headers, rows)
    fastest = "cuda" if "cuda" in headline else "cpu"
    emit_headline(
        "tensorbleu",
        metric="ms_at_B512_L1024",
        value=round(headline[fastest], 4),
        unit="ms",
        goal=10.0,
        higher_is_better=False,
    )
    return 0


def _make_batch(batch_size: int, seq_len: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates [B, L] int64 and references [B, 1, L] int64 (30% of tokens replaced), no padding."""
    gen = torch.Generator().manual_seed(seed)
    cand = torch.randint(1, VOCAB_SIZE, (batch_size, seq_len), generator=gen)
    noise = torch.randint(1, VOCAB_SIZE, (batch_size, seq_len), generator=gen)
    replace = torch.rand(batch_size, seq_len, generator=gen) < 0.3
    return cand, torch.where(replace, noise, cand)[:, None, :]


def _time_nltk(cand: torch.Tensor, refs: torch.Tensor, repeats: int) -> tuple[float | None, torch.Tensor | None]:
    """Median ms of NLTK sentence_bleu over the batch in a Python loop, and its scores [B] f64 (None w/o nltk)."""
    try:
        from nltk.translate.bleu_score import SmoothingFunction
        from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu
    except ImportError:
        print("nltk not installed: NLTK columns are n/a", file=sys.stderr)
        return None, None
    hyps, ref_lists = cand.tolist(), [[r] for r in refs[:, 0].tolist()]
    smooth = SmoothingFunction().method1
    times, scores = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = [nltk_sentence_bleu(r, h, smoothing_function=smooth) for h, r in zip(hyps, ref_lists, strict=True)]
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), torch.tensor(scores, dtype=torch.float64)


def _time_tensor(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median ms of fn() after warm-up, synchronizing CUDA around each call; also returns the last output."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(3 if torch.cuda.is_available() else 1):
        out = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


if __name__ == "__main__":  # as `python -m rlplat bench tensorbleu`: offline, the JSON line last
    from rlplat.cli import main as cli_main

    raise SystemExit(cli_main(["bench", "tensorbleu", *sys.argv[1:]]))

"""`python -m rlplat.bench.fsdp_step`: the PolicyLearner's step with FSDP2 on one rank vs the plain one-process
learner on one GPU (issue 19's "FSDP2 with one rank within 10% of today's step" check), and the weight-sync gather:
the whole engine state dict at once (plain) vs buckets gathered from shards (FSDP).

The model and batch are `rlplat bench learner`'s: a Qwen2.5-0.5B-shaped Qwen2 with random weights, `--num-seqs`
sequences of `--seq-len` tokens, GRPO, one update per step, bf16 compute on fp32 master weights, the fused head.
Order: plain, FSDP, plain again (the spread between the two plain runs is the noise). The FSDP learner runs in a
process group of one (NCCL on GPU, gloo on CPU). `--small` runs a tiny shape on CPU. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rlplat.bench.learner import QWEN25_05B, SMALL, make_batch, timed_steps, write_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model_dir: str, batch, *, sharded: bool, budget: int, steps: int, dtype: str, bucket_mb: int) -> dict:
    from rlplat.config import AlgorithmConfig, LearnerConfig
    from rlplat.learners.fsdp import GatherStats
    from rlplat.learners.policy import PolicyLearner
    from rlplat.learners.ranks import ONE_PROCESS, init_learner_group

    cuda = torch.cuda.is_available()
    ranks = ONE_PROCESS
    if sharded:
        ranks = init_learner_group("nccl" if cuda else "gloo", "127.0.0.1", _free_port(), 0, 1, timeout_s=120)
    cfg = LearnerConfig(lr=1e-6, micro_batch_size_in_tokens=budget, fsdp=sharded, sync_bucket_mb=bucket_mb)
    learner = PolicyLearner(model_dir, cfg, AlgorithmConfig(), dtype=dtype, seed=0, ranks=ranks)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    learner.train_step(batch)  # warm-up
    sync()
    times, metrics, peak_gib = timed_steps(learner, batch, steps)
    base = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    stats = GatherStats()
    if sharded:
        total = sum(t.numel() * t.element_size() for bucket in learner.engine_buckets(stats) for _, t in bucket)
    else:
        total = sum(t.numel() * t.element_size() for t in learner.engine_state_dict().values())
    sync()
    gather_s = time.perf_counter() - t0
    sync_peak_extra_gib = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else float("nan")
    out = {"learner": "fsdp, 1 rank" if sharded else "plain", "step_s_min": min(times),
           "step_s_mean": sum(times) / len(times), "peak_gib": peak_gib, "loss": metrics["loss/policy"],
           "sync_gather_s": gather_s, "sync_gib": total / 2**30, "sync_s_per_gib": gather_s / max(total / 2**30, 1e-9),
           "sync_peak_extra_gib": sync_peak_extra_gib, "buckets": stats.num_buckets}
    del learner
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if sharded:
        dist.destroy_process_group()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlplat.bench.fsdp_step", description=__doc__)
    p.add_argument("--small", action="store_true", help="tiny shape, CPU")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--num-seqs", type=int, default=16)
    p.add_argument("--budget", type=int, default=8192, help="learner.micro_batch_size_in_tokens")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--json-out", default="", help="file for the results (a JSON list)")
    args = p.parse_args(argv)
    shape = SMALL if args.small else QWEN25_05B
    seq_len = 64 if args.small else args.seq_len
    dtype = "float32" if args.small else "bfloat16"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_model(shape, Path(tmp), max_len=seq_len)
        batch = make_batch(args.num_seqs, seq_len, shape.vocab, prompt_len=seq_len // 4)
        for sharded in (False, True, False):
            results.append(run(tmp, batch, sharded=sharded, budget=args.budget, steps=args.steps, dtype=dtype,
                               bucket_mb=args.bucket_mb))
            print(json.dumps(results[-1]), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

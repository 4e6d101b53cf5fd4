"""`rlplat bench learner`: one GRPO learner step on a Qwen2.5-0.5B-shaped model: tokens/s and MFU.

The model is a Qwen2 with Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864,
vocabulary 151936, tied embeddings) and random weights, written to a temporary directory and loaded by
`PolicyLearner` exactly as a training run would (fp32 master weights, bf16 autocast, SDPA attention, fused AdamW).
The batch is `--num-seqs` sequences of `--seq-len` tokens (a 256-token prompt + response), groups of 8, GRPO
advantages, one optimizer update per step (so the learner takes log pi_k from the training forward itself).

MFU = model FLOPs per token * tokens / step_time / peak, peak = 989e12 (H100/H200 SXM dense bf16). Model FLOPs per
token = 6 * N + 6 * layers * hidden * seq: N = all parameters (494M; with tied embeddings the LM head matmul is counted
once, the embedding lookup costs nothing), plus the attention-score matmuls (QK^T and AV, forward + backward) over the
causal half of the scores, which is what a causal kernel computes (+8.9% at 2048 tokens). That is PaLM's MFU
(arXiv:2204.02311, appendix B) with its 12 * layers * hidden * seq attention term halved for causality; the table
also prints `mfu_6n` (no attention term) and the headline is `mfu`. The fused head's recomputed matmul in the
backward is not counted: MFU counts useful work.
`step` is the whole `train_step` (batching, forward, backward, AdamW, metrics). `--small` runs a tiny shape on CPU.

Variants (`--configs`, each optionally `name@budget` for its micro-batch token budget): `amp_head`, `fp32_head` and
`compile` take the plain LM head (full [tokens, V] logits); the `fused*` ones take the chunked fused head
(`learners/fused_head.py`, the learner's default), `_fp32` with the fp32 head matmul, `_tf32` also allowing TF32 for
it; `_flash` lets SDPA use only FlashAttention, `_flex` runs attention as compiled FlexAttention
(`learner.attn_implementation: flex_attention`), `_keep` keeps the head's chunk logits for the backward
(`learner.head_recompute: false`). `--profile SPEC` prints the kernel-time table of one extra step of
the variant SPEC (`name@budget`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlplat.bench.common import emit_headline, machine_description, print_table

if TYPE_CHECKING:
    from rlplat.learners.policy import PolicyLearner
    from rlplat.types import TrainBatch

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass(frozen=True, slots=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


QWEN25_05B = Shape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936)
SMALL = Shape(hidden=128, layers=2, heads=2, kv_heads=2, intermediate=256, vocab=512)


def write_model(shape: Shape, out_dir: Path, *, max_len: int) -> int:
    """Random-weight Qwen2 of `shape` saved in bf16 (half the bytes; the learner upcasts); returns its parameters."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=max(max_len, 4096),
                         tie_word_embeddings=True, rope_theta=1e6)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def attention_flops_per_token(shape: Shape, seq_len: int) -> float:
    """QK^T and AV, forward (2 matmuls x 2 FLOPs per multiply-add) + backward (twice the forward), over the causal
    half of the seq x seq scores: 12 * layers * hidden * seq / 2 per token (PaLM's term, halved)."""
    return 12 * shape.layers * shape.hidden * seq_len / 2


def make_batch(num_seqs: int, seq_len: int, vocab: int, *, prompt_len: int = 256, group: int = 8):  # -> TrainBatch
    from rlplat.algos.advantages import grpo_advantages
    from rlplat.types import FinishReason, Sample, TrainBatch

    rng = random.Random(0)
    samples = []
    for i in range(num_seqs):
        g = i // group
        s = Sample(group_id=g, sample_index=i % group, prompt_id=g,
                   prompt_token_ids=[rng.randrange(3, vocab) for _ in range(min(prompt_len, seq_len // 2))])
        n = seq_len - len(s.prompt_token_ids)
        s.extend([rng.randrange(3, vocab) for _ in range(n)], [-2.0] * n, 0, FinishReason.LENGTH)
        s.reward = float(rng.random() < 0.5)
        samples.append(s)
    adv = grpo_advantages(torch.tensor([s.reward for s in samples]), torch.tensor([s.group_id for s in samples]))
    return TrainBatch(samples=samples, advantages=adv.tolist())


@dataclass(frozen=True, slots=True)
class Variant:
    compile: bool
    fp32_head: bool
    head_chunk_tokens: int  # 0: the plain full-logits head
    tf32: bool = False
    flash_only: bool = False  # SDPA may use only FlashAttention (cuDNN and memory-efficient attention off)
    attn: str = "sdpa"  # learner.attn_implementation
    head_recompute: bool = True  # learner.head_recompute


VARIANTS = {
    "amp_head": Variant(compile=False, fp32_head=False, head_chunk_tokens=0),
    "fp32_head": Variant(compile=False, fp32_head=True, head_chunk_tokens=0),
    "compile": Variant(compile=True, fp32_head=False, head_chunk_tokens=0),
    "fused": Variant(compile=False, fp32_head=False, head_chunk_tokens=4096),
    "fused_fp32": Variant(compile=False, fp32_head=True, head_chunk_tokens=4096),
    "compile_fused": Variant(compile=True, fp32_head=False, head_chunk_tokens=4096),
    "compile_fused_8k": Variant(compile=True, fp32_head=False, head_chunk_tokens=8192),
    "compile_fused_fp32": Variant(compile=True, fp32_head=True, head_chunk_tokens=4096),
    "compile_fused_fp32_tf32": Variant(compile=True, fp32_head=True, head_chunk_tokens=4096, tf32=True),
    "compile_flash": Variant(compile=True, fp32_head=False, head_chunk_tokens=0, flash_only=True),
    "compile_fused_flash": Variant(compile=True, fp32_head=False, head_chunk_tokens=4096, flash_only=True),
    "compile_fused_flex": Variant(compile=True, fp32_head=False, head_chunk_tokens=4096, attn="flex_attention"),
    "compile_flex": Variant(compile=True, fp32_head=False, head_chunk_tokens=0, attn="flex_attention"),
    "compile_fused_flex_keep": Variant(compile=True, fp32_head=False, head_chunk_tokens=4096, attn="flex_attention",
                                       head_recompute=False),
}


def measure(model_dir: str, batch, *, budget: int, variant: Variant, steps: int, dtype: str,
            profile: bool = False) -> dict:
    """Build a learner, warm up one step, time `steps` train_steps; returns timings and peak memory."""
    from rlplat.config import AlgorithmConfig, LearnerConfig
    from rlplat.learners.policy import PolicyLearner

    cfg = LearnerConfig(lr=1e-6, micro_batch_size_in_tokens=budget, compile=variant.compile,
                        fp32_lm_head=variant.fp32_head, attn_implementation=variant.attn,
                        head_recompute=variant.head_recompute)
    torch.backends.cuda.matmul.allow_tf32 = variant.tf32  # only the fp32 head runs fp32 matmuls
    torch.backends.cuda.enable_cudnn_sdp(not variant.flash_only)
    torch.backends.cuda.enable_mem_efficient_sdp(not variant.flash_only)
    if variant.compile:
        torch._dynamo.reset()  # a fresh learner compiles for its own shapes (no automatic-dynamic recompile)
    learner = PolicyLearner(model_dir, cfg, AlgorithmConfig(), dtype=dtype, seed=0,
                            head_chunk_tokens=variant.head_chunk_tokens)
    cuda = learner.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    learner.train_step(batch)  # warm-up: allocator, kernels, compilation
    sync()
    warmup = time.perf_counter() - t0
    times, metrics, peak_gib = timed_steps(learner, batch, steps)
    if profile:
        _profile_step(learner, batch)
    del learner
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.enable_cudnn_sdp(True)
    torch.backends.cuda.enable_mem_efficient_sdp(True)
    if cuda:
        torch.cuda.empty_cache()
    return {"step_s": min(times), "step_s_mean": sum(times) / len(times), "warmup_s": warmup, "peak_gib": peak_gib,
            "loss": metrics["loss/policy"], "grad_norm": metrics["train/grad_norm"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlplat bench learner", description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny shape and short sequences (CPU smoke run)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 2048; --small 128)")
    p.add_argument("--num-seqs", type=int, default=None, help="sequences per step (default 32; --small 8)")
    p.add_argument("--budgets", default=None, help="micro-batch token budgets to try (default 16384,8192)")
    p.add_argument("--configs", default="amp_head,fp32_head,compile,fused,fused_fp32",
                   help=f"variants, each optionally NAME@BUDGET: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--time-limit", type=float, default=330.0, help="skip variants that would start after this many s")
    p.add_argument("--profile", default="", help="NAME@BUDGET: kernel-time table of one more step of that variant")
    p.add_argument("--json-out", default=os.environ.get("OUT", ""), help="directory for results.json")
    args = p.parse_args(argv)
    shape = SMALL if args.small else QWEN25_05B
    seq_len = args.seq_len or (128 if args.small else 2048)
    num_seqs = args.num_seqs or (8 if args.small else 32)
    budgets = [int(b) for b in (args.budgets or ("512" if args.small else "16384,8192")).split(",")]
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        num_params = write_model(shape, Path(tmp), max_len=seq_len)
        batch = make_batch(num_seqs, seq_len, shape.vocab)
        tokens = num_seqs * seq_len
        print(f"{machine_description()}: {num_params / 1e6:.1f}M params, {num_seqs} x {seq_len} tokens per step, "
              f"dtype {dtype}", flush=True)
        results = run_variants(tmp, batch, args, budgets, dtype, start)
    peak = _peak_flops()
    attn_flops = attention_flops_per_token(shape, seq_len)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["variant"], r["budget"], "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        r["tokens_per_s"] = tokens / r["step_s"]
        r["mfu_6n"] = 6 * num_params * r["tokens_per_s"] / peak if peak else float("nan")
        r["mfu"] = (6 * num_params + attn_flops) * r["tokens_per_s"] / peak if peak else float("nan")
        rows.append([r["variant"], r["budget"], f"{r['step_s']:.3f}", f"{r['tokens_per_s']:,.0f}", f"{r['mfu']:.3f}",
                     f"{r['mfu_6n']:.3f}", f"{r['peak_gib']:.1f}", f"warm-up {r['warmup_s']:.1f}s"])
    print_table(["variant", "budget", "step s", "tokens/s", "MFU", "MFU 6N only", "peak GiB", "note"], rows)
    ok = [r for r in results if "mfu" in r and math.isfinite(r["mfu"])]
    best = max(ok, key=lambda r: r["mfu"]) if ok else None
    if args.json_out:
        Path(args.json_out).mkdir(parents=True, exist_ok=True)
        (Path(args.json_out) / "results.json").write_text(json.dumps(
            {"machine": machine_description(), "params": num_params, "tokens_per_step": tokens, "peak": peak,
             "results": results}, indent=2))
    if best:
        print(f"best: {best['variant']} budget {best['budget']}: {best['tokens_per_s']:,.0f} tokens/s, "
              f"MFU {best['mfu']:.3f}")
    emit_headline("learner", metric="mfu", value=round(best["mfu"], 4) if best else float("nan"), unit="fraction",
                  goal=0.4, higher_is_better=True)
    return 0


def run_variants(model_dir: str, batch, args: argparse.Namespace, budgets: list[int], dtype: str, start: float) -> list:
    """Each NAME@BUDGET at its budget; a bare amp_head at every budget, any other bare name at the fastest budget
    found so far (or the first). Failures are recorded."""
    results: list[dict] = []
    specs = [v.strip() for v in args.configs.split(",") if v.strip()]
    for spec in specs:
        name, _, at = spec.partition("@")
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        timed = [r for r in results if "step_s" in r]
        if at:
            todo = [int(at)]
        else:
            todo = budgets if name == "amp_head" or not timed else [min(timed, key=lambda r: r["step_s"])["budget"]]
        for budget in todo:
            if time.perf_counter() - start > args.time_limit:
                results.append({"variant": name, "budget": budget, "error": "skipped: time limit"})
                continue
            try:
                r = measure(model_dir, batch, budget=budget, variant=VARIANTS[name], steps=args.steps, dtype=dtype,
                            profile=args.profile == f"{name}@{budget}")
            except Exception as e:  # OOM or a compile failure: record it and go on with the next variant
                r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                torch.backends.cuda.matmul.allow_tf32 = False
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            results.append({"variant": name, "budget": budget, **r})
            print(json.dumps(results[-1]), flush=True)
    return results


def timed_steps(learner: PolicyLearner, batch: TrainBatch, steps: int) -> tuple[list[float], dict[str, float], float]:
    """`steps` timed learner steps after the warm-up: seconds of each, the last step's metrics, and the peak GPU
    memory of those steps in GiB (NaN on CPU)."""
    cuda = learner.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, metrics = [], {}
    for _ in range(steps):
        t0 = time.perf_counter()
        metrics = learner.train_step(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return times, metrics, torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


def _profile_step(learner, batch) -> None:  # learner: PolicyLearner
    """Print the top kernels of one train_step by device time (CPU: by CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        learner.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    print(events.table(sort_by=key, row_limit=25, max_name_column_width=70), flush=True)
    groups = {"matmul": ("gemm", "xmma", "cutlass", "nvjet", "cublas"), "attention": ("flash", "fmha", "attention"),
              "triton (compiled elementwise/reductions)": ("triton",), "optimizer": ("adam",)}
    totals: dict[str, float] = {}
    for e in events:
        group = next((g for g, keys in groups.items() if any(k in e.key.lower() for k in keys)), "other")
        totals[group] = totals.get(group, 0.0) + getattr(e, key) / 1e3
    print("kernel ms by kind: " + ", ".join(f"{g} {ms:.1f}" for g, ms in sorted(totals.items(), key=lambda x: -x[1])),
          flush=True)


def _peak_flops() -> float:
    if not torch.cuda.is_available():
        return 0.0
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 989e12)


if __name__ == "__main__":  # as `python -m rlplat bench learner`: offline, the JSON line last
    import sys

    from rlplat.cli import main as cli_main

    raise SystemExit(cli_main(["bench", "learner", *sys.argv[1:]]))

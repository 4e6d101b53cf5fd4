"""`python -m rlplat.bench.sleep`: vLLM's sleep mode in one `RolloutEngine` on one GPU (issue 19 item 6, no Ray).

The engine serves a random model with Qwen2.5-0.5B's decoder (896 hidden, 24 layers, 14 query / 2 KV heads, 4864
MLP; the char tokenizer's small vocabulary), written to `--model` if missing. GPU memory is read with NVML (the
whole card, so nothing else may run on it): before the engine starts, once it is up (the engine's footprint), and
asleep. For each level: greedy generation, sleep, wake the weights, load the weights from the model's safetensors
bytes (what a weight sync does), wake the KV cache, greedy generation again, which must give the same tokens.
Prints a table and, last, one JSON line (the freed share of the engine's memory at the deepest level run). CUDA only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from rlplat.bench.common import emit_headline, machine_description, print_table
from rlplat.models import TinyModelShape, write_tiny_model
from rlplat.rollout.engine import EngineOptions, RolloutEngine
from rlplat.rollout.sleep import BEFORE_SYNC, gpu_memory_bytes
from rlplat.types import Sample, SamplingOptions

QWEN25_05B_DECODER = TinyModelShape(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                                    intermediate_size=4864, max_position_embeddings=512)
GIB = 2**30


def used_gib() -> float:
    memory = gpu_memory_bytes()
    if memory is None:
        raise SystemExit("bench sleep: no GPU visible to NVML (vLLM's sleep mode needs CUDA)")
    return (memory[1] - memory[0]) / GIB


def prompts(num: int, length: int, vocab: int) -> list[Sample]:
    return [Sample(group_id=i, sample_index=0, prompt_id=i,
                   prompt_token_ids=[2 + (i * 7919 + j * 104729) % (vocab - 2) for j in range(length)])
            for i in range(num)]


async def cycle(engine: RolloutEngine, level: int, weights: list[bytes], args: argparse.Namespace,
                reference: list[list[int]], vocab: int) -> dict[str, float]:
    """One sleep/wake cycle at `level` with a weight load between the wakes, as in a training step."""
    before = used_gib()
    slept = await engine.sleep(level)
    asleep = used_gib()
    woken = await engine.wake_up(BEFORE_SYNC)
    t0 = time.perf_counter()
    for shard in weights:
        await engine.load_weights(shard)
    load_s = time.perf_counter() - t0
    woken |= await engine.wake_up(("kv_cache",))
    awake = used_gib()
    samples = prompts(args.num_prompts, args.prompt_len, vocab)
    await engine.generate(samples, SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=0.0), 0)
    same = [s.response_token_ids for s in samples] == reference
    return {"level": level, "used_before_gib": before, "used_asleep_gib": asleep, "used_awake_gib": awake,
            "freed_gib": before - asleep, "nvml_freed_gib": slept.get("sleep/freed_gib", float("nan")),
            "sleep_s": slept["time/sleep_s"], "wake_weights_s": woken["time/wake_weights_s"], "load_weights_s": load_s,
            "wake_kv_cache_s": woken["time/wake_kv_cache_s"], "same_greedy_tokens": float(same)}


async def run(args: argparse.Namespace, model: Path) -> tuple[dict[str, float], list[dict[str, float]]]:
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(model))  # vLLM refuses ids past the tokenizer's (the model pads to 64)
    weights = [f.read_bytes() for f in sorted(model.glob("*.safetensors"))]
    base = used_gib()
    engine = RolloutEngine(EngineOptions(model_path=str(model.resolve()), max_model_len=512, dtype="bfloat16",
                                         gpu_memory_utilization=args.gpu_memory_utilization,
                                         enforce_eager=not args.cuda_graphs, enable_sleep_mode=True))
    t0 = time.perf_counter()
    await engine.start()
    start = {"engine_start_s": time.perf_counter() - t0, "used_base_gib": base, "engine_gib": used_gib() - base}
    try:
        samples = prompts(args.num_prompts, args.prompt_len, vocab)
        t0 = time.perf_counter()
        await engine.generate(samples, SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=0.0), 0)
        start["generate_s"] = time.perf_counter() - t0
        reference = [s.response_token_ids for s in samples]
        rows = [await cycle(engine, level, weights, args, reference, vocab) for level in args.levels]
    finally:
        engine.shutdown()
    return start, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlplat.bench.sleep", description=__doc__)
    p.add_argument("--model", default="models/sleep05b", help="model directory; written (random weights) if missing")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    p.add_argument("--cuda-graphs", action="store_true", help="capture CUDA graphs (default: enforce_eager)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    used_gib()  # a GPU, or exit at once
    model = Path(args.model)
    if not (model / "config.json").is_file():
        write_tiny_model(model, shape=QWEN25_05B_DECODER)
    start, rows = asyncio.run(run(args, model))
    engine_gib = start["engine_gib"]
    print(f"engine: {engine_gib:.2f} GiB once started (gpu_memory_utilization {args.gpu_memory_utilization}, "
          f"{'CUDA graphs' if args.cuda_graphs else 'eager'}), started in {start['engine_start_s']:.1f} s; "
          f"card used before it {start['used_base_gib']:.2f} GiB")
    print_table(["level", "freed GiB", "freed share", "left asleep GiB", "sleep s", "wake weights s",
                 "load weights s", "wake KV s", "same greedy tokens"],
                [[r["level"], round(r["freed_gib"], 2), round(r["freed_gib"] / engine_gib, 3),
                  round(r["used_asleep_gib"] - start["used_base_gib"], 2), round(r["sleep_s"], 3),
                  round(r["wake_weights_s"], 3), round(r["load_weights_s"], 3), round(r["wake_kv_cache_s"], 3),
                  bool(r["same_greedy_tokens"])] for r in rows])
    print(json.dumps({"start": start, "cycles": rows, "machine": machine_description()}))
    emit_headline("sleep", metric=f"freed_share_level{rows[-1]['level']}",
                  value=rows[-1]["freed_gib"] / engine_gib, unit="fraction", goal=0.8, higher_is_better=True)
    return 0 if all(r["same_greedy_tokens"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""`rlplat bench weight_sync`: seconds per learner -> engine weight sync for each `placement.weight_sync` mode.

For each mode: start the spec's engines on model B and the learner on model A (same shape, other random weights),
so a sync that moved nothing would show: checksum and log-probs must match after the first sync. Then time
`--syncs` syncs (median). Modes: bytes (safetensors through Ray's object store), broadcast (NCCL on GPU, gloo on
CPU) and ipc (CUDA IPC; GPU, colocated, one engine). Headline: bytes median / broadcast median (higher is better).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rlplat.bench.common import LOCAL_RAY, OVERRIDES_HELP, emit_headline, print_table


def main(argv: list[str]) -> int:
    from rlplat.config import load_config
    from rlplat.driver.workers import Workers, engine_options, init_ray, plan_for_cluster
    from rlplat.models import TinyModelShape, write_tiny_model

    p = argparse.ArgumentParser(prog="rlplat bench weight_sync", description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="configs/demo.yaml")
    p.add_argument("--modes", nargs="+", default=["bytes", "broadcast"], choices=["bytes", "broadcast", "ipc"])
    p.add_argument("--syncs", type=int, default=5, help="timed syncs per mode (after one checked sync)")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=256)
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="rlplat-bench-sync-"))
    shape = TinyModelShape(hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                           num_kv_heads=args.num_heads, intermediate_size=args.intermediate_size)
    learner_model = write_tiny_model(work / "learner", shape=shape, seed=0)
    engine_model = write_tiny_model(work / "engine", shape=shape, seed=1)
    rows, median = [], {}
    for mode in args.modes:
        extra = ["placement.colocate=true", "rollout.num_workers=1"] if mode == "ipc" else []
        cfg = load_config(args.spec, [f"model.path={learner_model}", LOCAL_RAY, *args.overrides,
                                      *extra, f"placement.weight_sync={mode}", f"experiment.output_dir={work / mode}"])
        init_ray(cfg)
        plan = plan_for_cluster(cfg)
        workers = Workers.start(cfg, engine_options(cfg, model_path=str(engine_model)))  # B until the first sync
        try:
            probe = list(range(1, 40))
            before = workers.verify(probe)
            workers.sync(1)
            after = workers.verify(probe)
            times = []
            for i in range(args.syncs):
                t0 = time.perf_counter()
                workers.sync(i + 2)
                times.append(time.perf_counter() - t0)
            num_bytes = sum(_nbytes(dtype, shape) for _, dtype, shape in workers.weight_meta())
        finally:
            workers.shutdown()  # also releases the placement group
        median[mode] = statistics.median(times)
        rows.append([mode, plan.describe().splitlines()[0].removeprefix("placement: "), num_bytes / 2**20,
                     median[mode], num_bytes / 2**30 / median[mode], before["sync/checksum_match"],
                     after["sync/checksum_match"], after["sync/max_logp_diff"]])
    print(f"\nrlplat bench weight_sync: model hidden {args.hidden_size} x {args.num_layers} layers, "
          f"{args.syncs} timed syncs per mode")
    print_table(["mode", "placement", "MiB", "median s", "GiB/s", "match before", "match after", "max logp diff"],
                rows)
    ratio = median["bytes"] / median["broadcast"] if {"bytes", "broadcast"} <= median.keys() else float("nan")
    emit_headline("weight_sync", metric="bytes_s_over_broadcast_s", value=ratio, unit="x", goal=None,
                  higher_is_better=True)
    return 0


def _nbytes(dtype: str, shape: list[int]) -> int:
    import torch

    n = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    for d in shape:
        n *= d
    return n

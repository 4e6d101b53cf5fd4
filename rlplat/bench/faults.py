"""`rlplat bench faults`: time from killing a rollout actor mid-generation to generation resuming.

Ray restarts the actor process; the new engine starts, receives the current weights, and the interrupted
batch is issued again. Printed: kill -> engine ready with weights, and kill -> the re-issued batch done.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rlplat.bench.common import emit_headline, print_table


def main(argv: list[str]) -> int:
    import ray
    from safetensors.torch import load_file

    from rlplat.actors.rollout import RolloutActor
    from rlplat.models import max_context_length, write_tiny_model
    from rlplat.rollout.engine import EngineOptions, SamplingOptions
    from rlplat.rollout.weight_sync import state_dict_to_bytes
    from rlplat.types import Sample

    p = argparse.ArgumentParser(prog="rlplat bench faults")
    p.add_argument("--model", default="models/tiny")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    model = write_tiny_model(args.model) if not (__import__("pathlib").Path(args.model) / "config.json").exists() \
        else args.model
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=8, include_dashboard=False)
    weights = {k: v for k, v in load_file(f"{model}/model.safetensors").items() if k != "lm_head.weight"}
    payload = ray.put(state_dict_to_bytes(weights))
    actor = RolloutActor.remote(EngineOptions(model_path=str(model), max_model_len=max_context_length(model)))
    sampling = SamplingOptions(max_new_tokens=100)

    def batch() -> list[Sample]:
        return [Sample(group_id=i, sample_index=0, prompt_id=i, prompt_token_ids=[29, 16, 33, 79, 3, 4, 5, 6, 82])
                for i in range(64)]

    t0 = time.perf_counter()
    ray.get(actor.load_weights.remote(payload, 1))
    cold_start = time.perf_counter() - t0
    rows = []
    for _ in range(args.repeats):
        ref = actor.generate.remote(batch(), sampling, 1)
        time.sleep(0.3)
        t_kill = time.perf_counter()
        ray.kill(actor, no_restart=False)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            pass
        assert ray.get(actor.loaded_version.remote()) is None  # a fresh process: weights must be pushed
        ray.get(actor.load_weights.remote(payload, 1))
        ready = time.perf_counter() - t_kill
        ray.get(actor.generate.remote(batch(), sampling, 1))
        rows.append([ready, time.perf_counter() - t_kill])
    ray.get(actor.shutdown.remote())
    print(f"\nrlplat bench faults: rollout actor killed mid-generation, {args.repeats} times "
          f"(cold engine start for comparison: {cold_start:.1f} s)")
    print_table(["kill -> engine ready with weights (s)", "kill -> interrupted batch re-done (s)"], rows)
    emit_headline("faults", metric="kill_to_generation_resumed_s", value=statistics.median(r[0] for r in rows),
                  unit="s", goal=None, higher_is_better=False)
    return 0

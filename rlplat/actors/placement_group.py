"""The Ray side of a placement plan (rlplat/placement.py): the cluster's GPUs, the placement group, actor options."""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlplat.config import ConfigError
from rlplat.placement import PlacementPlan, Slot


def cluster_gpu_count() -> float:
    """GPUs of the Ray cluster this process is attached to."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def reserve(plan: PlacementPlan, timeout_s: float):
    """Create the placement group of a GPU plan and wait until Ray has reserved it (None for a CPU plan).

    Raises ConfigError if the reservation does not complete in time (e.g. enough GPUs in total, but not free, or
    spread over nodes in pieces the bundles cannot use), and removes the half-made group."""
    if not plan.bundles:
        return None
    pg = placement_group(list(plan.bundles), strategy=plan.strategy.upper(), name="")  # PACK | SPREAD
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        free = ray.available_resources().get("GPU", 0.0)
        raise ConfigError(f"placement: Ray could not reserve {plan.num_gpus} GPU(s) in {len(plan.bundles)} bundle(s) "
                          f"within {timeout_s:g} s (placement.placement_timeout_s); {free:g} GPU(s) are free now "
                          f"of {cluster_gpu_count():g} in the cluster") from None
    return pg


def actor_options(slot: Slot, pg, tp_bundles: tuple[int, ...] = ()) -> dict:
    """Ray `.options(...)` for an actor in `slot` of placement group `pg` (no options on CPU).

    tp_bundles: a tensor-parallel engine's bundles (more than one): vLLM's Ray executor starts one worker per
    bundle; the actor's child tasks stay in `pg` and VLLM_RAY_BUNDLE_INDICES names the bundles (not yet run on GPUs).
    """
    if pg is None or slot.bundle is None:
        return {}
    tp = len(tp_bundles) > 1
    options = {"num_gpus": slot.num_gpus,
               "scheduling_strategy": PlacementGroupSchedulingStrategy(
                   placement_group=pg, placement_group_bundle_index=slot.bundle,
                   placement_group_capture_child_tasks=tp)}
    if tp:
        options["runtime_env"] = {"env_vars": {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, tp_bundles))}}
    return options


def release(pg) -> None:
    if pg is not None:
        remove_placement_group(pg)

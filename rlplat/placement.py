"""GPU placement: the spec's `placement` section -> a plan (pure), checked against the cluster, realised as Ray
placement groups by rlplat/actors/placement_group.py.

A plan lists Ray resource bundles and which bundle each actor takes:

    separate GPUs   bundle i = {GPU: 1, CPU: 1} for rollout engine i, then {GPU: 1, CPU: 1} for the learner, and
                    with placement.reward_actor one more for the reward actor
    colocated       bundle i = {GPU: 1, CPU: 1} for engine i; the learner (and the reward actor) share bundle 0
                    (engine 0 and the learner each take half of its GPU in Ray's accounting, or 0.4 + 0.4 + 0.2
                    with the reward actor; vLLM's share of the memory is rollout.gpu_memory_utilization)
    cpu             no placement group: actors ask only for CPUs, as without a plan

Asking for more GPUs than the cluster has fails before anything starts, with the numbers (`check_gpus`), instead of
leaving Ray to wait forever for resources that will never appear.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlplat.config import ConfigError, RunConfig


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one actor goes: a bundle of the placement group (None on CPU) and its share of that bundle's GPU."""

    bundle: int | None
    num_gpus: float


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    device: str  # "cpu" | "gpu"
    colocate: bool
    weight_sync: str  # "bytes" | "broadcast" | "ipc"
    bundles: tuple[dict[str, float], ...]  # Ray resource bundles (empty on CPU)
    rollout: tuple[Slot, ...]  # one per rollout engine
    learner: Slot
    reward: Slot | None = None  # the reward actor's slot; None: rewards run in the driver
    @property
    def num_gpus(self) -> int:
        return int(sum(b.get("GPU", 0) for b in self.bundles))

    def describe(self) -> str:
        """A few lines for `--dry-run` and the run log: devices, bundles, and who sits where."""
        lines = [f"placement: device {self.device}, {self.num_gpus} GPU(s), "
                 f"{'colocated' if self.colocate else 'separate'}, weight sync {self.weight_sync}"]
        if not self.bundles:
            actors = "the learner and the reward actor" if self.reward else "the learner"
            lines.append(f"  {len(self.rollout)} rollout engine(s) and {actors} on CPUs (no placement group)")
            return "\n".join(lines)
        for i, bundle in enumerate(self.bundles):
            who = [f"rollout engine {k} ({s.num_gpus:g} GPU)" for k, s in enumerate(self.rollout) if s.bundle == i]
            if self.learner.bundle == i:
                who.append(f"learner ({self.learner.num_gpus:g} GPU)")
            if self.reward is not None and self.reward.bundle == i:
                who.append(f"reward actor ({self.reward.num_gpus:g} GPU)")
            res = ", ".join(f"{k} {v:g}" for k, v in bundle.items())
            lines.append(f"  bundle {i} [{res}]: {'; '.join(who)}")
        return "\n".join(lines)


def resolve_device(requested: str, available_gpus: float) -> str:
    """`auto` -> gpu when at least one GPU is available, else cpu; cpu/gpu stay as asked."""
    if requested == "auto":
        return "gpu" if available_gpus >= 1 else "cpu"
    return requested


def plan_placement(cfg: RunConfig, available_gpus: float) -> PlacementPlan:
    """The placement of `cfg` on a cluster with `available_gpus` GPUs (used only to resolve device: auto)."""
    p, n = cfg.placement, cfg.rollout.num_workers
    device = resolve_device(p.device, available_gpus)
    sync = resolve_weight_sync(p.weight_sync, device=device, colocate=p.colocate, num_engines=n)
    reward = p.reward_actor
    if device == "cpu" and cfg.learner.attn_implementation == "flex_attention":
        raise ConfigError("learner.attn_implementation: flex_attention needs the learner on a GPU (FlexAttention has "
                          "no backward on CPU) but placement resolves to cpu; use sdpa")
    if device == "cpu":
        cpu = Slot(None, 0.0)
        return PlacementPlan("cpu", p.colocate, sync, (), (cpu,) * n, cpu, cpu if reward else None)
    bundles = [{"GPU": 1.0, "CPU": 1.0} for _ in range(n)]
    if p.colocate:
        share = 0.4 if reward else 0.5
        bundles[0] = {"GPU": 1.0, "CPU": 3.0 if reward else 2.0}
        rollout = (Slot(0, share), *(Slot(i, 1.0) for i in range(1, n)))
        return PlacementPlan("gpu", True, sync, tuple(bundles), rollout, Slot(0, share),
                             Slot(0, 0.2) if reward else None)
    bundles += [{"GPU": 1.0, "CPU": 1.0}] * (2 if reward else 1)
    return PlacementPlan("gpu", False, sync, tuple(bundles), tuple(Slot(i, 1.0) for i in range(n)), Slot(n, 1.0),
                         Slot(n + 1, 1.0) if reward else None)


def resolve_weight_sync(requested: str, *, device: str, colocate: bool, num_engines: int) -> str:
    """`auto` and the checks on an explicit choice. Raises ConfigError when the choice cannot work here."""
    shared = device == "gpu" and colocate  # engine 0 and the learner on one GPU
    if requested == "auto":
        if device == "cpu":
            return "bytes"
        if shared:
            return "ipc" if num_engines == 1 else "bytes"
        return "broadcast"
    if requested == "ipc" and not (shared and num_engines == 1):
        raise ConfigError("placement.weight_sync: ipc needs the learner and a single rollout engine on one GPU "
                          "(placement.device: gpu, placement.colocate: true, rollout.num_workers: 1); use bytes or "
                          "broadcast")
    if requested == "broadcast" and shared:
        raise ConfigError("placement.weight_sync: broadcast cannot run with placement.colocate: true on GPU (NCCL "
                          "cannot put the learner and engine 0 on one GPU as two ranks); use ipc (one engine) or bytes")
    return requested


def check_gpus(plan: PlacementPlan, available_gpus: float, where: str) -> None:
    """ConfigError naming both numbers when the plan needs more GPUs than `where` has."""
    if plan.num_gpus > available_gpus:
        engines = len(plan.rollout)
        split = (f"{engines} rollout engine(s) sharing with the learner" if plan.colocate
                 else f"{engines} rollout engine(s) + 1 learner" + (" + 1 reward actor" if plan.reward else ""))
        raise ConfigError(f"placement: the spec needs {plan.num_gpus} GPU(s) ({split}, one GPU each) but {where} has "
                          f"{available_gpus:g}; lower rollout.num_workers, set placement.colocate: true, or add GPUs")


def local_gpu_count() -> int:
    """GPUs this process can see (what a local Ray instance would offer)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a CPU-only torch build
        return 0

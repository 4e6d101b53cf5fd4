"""LearnerActor: owns one PolicyLearner and forwards calls.

With FSDP (`learner.sharded`: num_ranks > 1 or fsdp) the driver starts one actor per rank; the learner is built
in `join_world`, once the ranks' torch.distributed group is up (rank 0's address is known only after it started).
Every call that touches the sharded model goes to every rank, in the same order (the driver's Workers does that).
"""

from __future__ import annotations

import socket

import ray

from rlplat.config import AlgorithmConfig, LearnerConfig, LoraConfig
from rlplat.learners.fsdp import GatherStats
from rlplat.learners.policy import PolicyLearner
from rlplat.learners.ranks import init_learner_group
from rlplat.rollout import weight_sync
from rlplat.types import TrainBatch


@ray.remote(num_cpus=1)
class LearnerActor:
    def __init__(self, model_path: str, cfg: LearnerConfig, algo: AlgorithmConfig, *, dtype: str, seed: int,
                 lora: LoraConfig | None = None, rank: int = 0) -> None:
        self.args = (model_path, cfg, algo, {"dtype": dtype, "seed": seed, "lora": lora})
        self.rank = rank
        self.world_listener: socket.socket | None = None  # rank 0: the learner group's store socket
        if not cfg.sharded:
            self.learner = PolicyLearner(model_path, cfg, algo, dtype=dtype, seed=seed, lora=lora)
        self.weight_group = None  # placement.weight_sync: broadcast
        self.listener: socket.socket | None = None  # the weight group store's socket, from free_address
        self.outgoing: dict = {}  # tensors of a weight sync in flight

    # the learner group (FSDP): rank 0 serves the rendezvous, then every rank joins and builds its learner
    def world_address(self) -> tuple[str, int]:
        self.world_listener = weight_sync.listen_socket(ray.util.get_node_ip_address())
        host, port = self.world_listener.getsockname()[:2]
        return host, port

    def join_world(self, backend: str, host: str, port: int, world_size: int, timeout_s: float) -> int:
        listener, self.world_listener = self.world_listener, None
        ranks = init_learner_group(backend, host, port, self.rank, world_size, timeout_s=timeout_s,
                                   listener_fd=None if listener is None else listener.detach())
        model_path, cfg, algo, kw = self.args
        self.learner = PolicyLearner(model_path, cfg, algo, **kw, ranks=ranks)
        return self.rank

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        return self.learner.train_step(batch)

    def release_cached_memory(self) -> None:
        """Sleep mode: what torch's caching allocator holds but no tensor uses goes back to the GPU, so that the
        engine, which the learner's step ran beside while it slept, can wake into it."""
        import torch

        torch.cuda.empty_cache()  # a no-op in a process that never used CUDA

    def weights_bytes(self) -> bytes:
        return self.learner.weights_bytes()

    # weight sync without bytes (placement.weight_sync: broadcast | ipc); see rlplat/rollout/weight_sync.py
    def free_address(self) -> tuple[str, int]:
        """This node's IP and a port the learner (rank 0) listens on there for the weight group's store: bound to
        the node's address, not all interfaces (127.0.0.1 on a local run)."""
        self.listener = weight_sync.listen_socket(ray.util.get_node_ip_address())
        host, port = self.listener.getsockname()[:2]
        return host, port

    def open_weight_group(self, backend: str, host: str, port: int, world_size: int) -> None:
        listener, self.listener = self.listener, None
        self.weight_group = weight_sync.open_group(backend, host, port, 0, world_size, listener=listener)

    def weight_meta(self) -> list[tuple[str, str, list[int]]]:
        """Names, dtypes and shapes of the next broadcast; `broadcast_weights` then sends exactly these tensors.
        FSDP: from the shards' global shapes, nothing gathered yet."""
        if self.learner.ranks.sharded:
            return self.learner.engine_meta()
        self.outgoing = self.learner.engine_state_dict()
        return weight_sync.tensor_meta(self.outgoing)

    def broadcast_weights(self) -> dict[str, float]:
        """Send the weights to the weight group. FSDP: every rank gathers bucket by bucket (a collective) and rank 0
        broadcasts each bucket before the next is gathered; returns the gather's sizes (sync/peak_extra_bytes)."""
        if not self.learner.ranks.sharded:
            weight_sync.broadcast_tensors(self.weight_group, [t.contiguous() for t in self.outgoing.values()])
            self.outgoing = {}
            return {}
        stats = GatherStats()
        for bucket in self.learner.engine_buckets(stats):
            if self.weight_group is not None:
                weight_sync.broadcast_tensors(self.weight_group, [t.contiguous() for _, t in bucket])
        return stats.metrics()

    def ipc_payload(self) -> bytes:
        """CUDA IPC handles of the engine weights; they stay valid until `release_ipc`."""
        self.outgoing = {k: v.contiguous() for k, v in self.learner.engine_state_dict().items()}
        return weight_sync.ipc_payload(self.outgoing)

    def release_ipc(self) -> None:
        self.outgoing = {}

    def engine_layout_checksum(self, names: list[str]) -> str:
        return self.learner.engine_layout_checksum(names)

    def sequence_logps(self, token_ids: list[int]) -> list[float]:
        return self.learner.sequence_logps(token_ids)

    def save(self, out_dir: str) -> None:
        self.learner.save(out_dir)

    def save_state(self, out_dir: str) -> None:
        from rlplat.learners.state import save_learner_state

        save_learner_state(self.learner, out_dir)

    def load_state(self, in_dir: str) -> None:
        from rlplat.learners.state import load_learner_state

        load_learner_state(self.learner, in_dir)

"""A learner process's place in the learner world, and the few reductions its step needs.

`Ranks()` (the default) is the single-process learner: every reduction is the identity, so the one-rank path runs
exactly as before. With `world_size > 1` the default torch.distributed group is up (the actor started it) and
every method here is a collective: all ranks must call them in the same order with the same keys.

What is reduced and why (the ranks' parts of one step must add up to the one-rank step):
  - loss denominators (`agg_count`): the sum of each rank's count (`rlplat.learners.balance`);
  - padded widths (`max`): `seq-mean-token-sum-norm` divides by the batch's longest row;
  - micro-batch rounds (`max_each`): every rank runs as many forward/backward passes as the busiest one;
  - metrics (`sum_each`): every summed metric is a sum of per-rank parts (weights use the global token count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from rlplat.algos.losses import aggregate_count
from rlplat.learners.balance import global_agg_count, local_agg_count
from rlplat.learners.microbatch import MicroBatch, blank_micro_batch


@dataclass(frozen=True, slots=True)
class Ranks:
    """rank/world_size of the learner group; sharded: the models are wrapped with FSDP2 (also with one rank)."""

    rank: int = 0
    world_size: int = 1
    sharded: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum_each(self, values: dict[str, float]) -> dict[str, float]:
        """Every value summed over the ranks (one all-reduce; keys in the same order on every rank)."""
        if not self.distributed or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(values, t.tolist(), strict=True))

    def sum(self, value: float) -> float:
        return self.sum_each({"v": value})["v"]

    def max_each(self, values: list[int]) -> list[int]:
        """The elementwise largest value over the ranks (one all-reduce)."""
        if not self.distributed or not values:
            return values
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def max(self, value: int) -> int:
        return self.max_each([value])[0]

    def agg_count(self, mode: str, masks: list[Tensor]) -> float:
        """The outer loss denominator of `aggregate(..., mode)` over every rank's micro-batches."""
        if not self.distributed:
            return aggregate_count(mode, masks)
        return global_agg_count(mode, [self.sum(local_agg_count(mode, masks))])


ONE_PROCESS = Ranks()  # the single-process learner


def pad_rounds(minibatches: list[list[MicroBatch]], ranks: Ranks) -> list[list[MicroBatch]]:
    """Each mini-batch's micro-batches padded with blanks to the largest count any rank has for it (no-op on one
    rank). A rank with nothing in a mini-batch gets only blanks."""
    rounds = ranks.max_each([len(mbs) for mbs in minibatches])
    return [mbs + [blank_micro_batch() for _ in range(n - len(mbs))] for mbs, n in zip(minibatches, rounds,
                                                                                       strict=True)]


def init_learner_group(backend: str, host: str, port: int, rank: int, world_size: int, *, timeout_s: float,
                       listener_fd: int | None = None) -> Ranks:
    """Start torch's default process group of the learner ranks: a TCPStore rendezvous at host:port (rank 0 serves
    it, on `listener_fd` when given: a socket bound to the node's address only), then `backend` ("gloo", "nccl" or
    "cpu:gloo,cuda:nccl"). Every rank must call it within `timeout_s`."""
    import datetime

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                          master_listen_fd=listener_fd if rank == 0 else None)
    if torch.cuda.is_available():
        torch.cuda.set_device(0)  # Ray shows each rank its own GPU as device 0
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return Ranks(rank, world_size, sharded=True)

"""Placement of tensor-parallel engines and a multi-rank learner, and who sends weights to whom (pure; used by
`rlplat.placement.plan_placement` when learner.num_ranks > 1 or rollout.tensor_parallel_size > 1 on GPU).

Every bundle is one GPU. Engine e at tensor-parallel size T takes bundles e*T .. e*T+T-1 (its TP workers 0..T-1,
which vLLM starts in those bundles); then:

    separate   learner rank r takes bundle E*T + r (E*T + N GPUs in all)
    colocated  learner rank r shares bundle r with a TP worker (N <= E*T; E*T GPUs), vLLM sleeping while it trains

With `gpus_per_node` G, bundles go onto nodes by `strategy`: pack fills node 0, then node 1, ... in bundle order
(bundle b on node b // G); spread deals the units (an engine's T bundles, a learner rank's one) round-robin over the
nodes, each to the next node with room. An engine never straddles two nodes (its TP all-reduces want NVLink), so T
must divide G.

Weight sync: every learner rank holds each full bucket after `fsdp.iter_full_weights` (the gather is an
all-gather), and every TP worker receives FULL tensors: vLLM's own `load_weights` keeps the worker's shard (column-
or row-parallel slices, stacked q/k/v and gate/up), so nothing here slices weights. A worker sharing its GPU with a
learner rank gets that rank's CUDA IPC handles; every other worker joins one broadcast group whose rank 0 is
learner rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScaleOutPlan:
    """bundles: one {GPU: 1, CPU: c} per GPU. engines[e][t]: bundle of engine e's TP worker t. learner[r]: bundle
    of learner rank r. node_of[b]: node of bundle b (empty without gpus_per_node)."""

    bundles: tuple[dict[str, float], ...]
    engines: tuple[tuple[int, ...], ...]
    learner: tuple[int, ...]
    colocate: bool
    node_of: tuple[int, ...] = ()

    @property
    def num_gpus(self) -> int:
        return len(self.bundles)

    @property
    def num_nodes(self) -> int:
        return max(self.node_of) + 1 if self.node_of else 1

    def describe(self) -> str:
        """One line per bundle: node, GPU, who sits there (for `--dry-run`)."""
        tp = len(self.engines[0]) if self.engines else 0
        lines = [f"scale-out: {len(self.engines)} engine(s) x TP {tp}, {len(self.learner)} learner rank(s), "
                 f"{self.num_gpus} GPU(s) on {self.num_nodes} node(s), {'colocated' if self.colocate else 'separate'}"]
        for b in range(self.num_gpus):
            who = [f"engine {e} TP worker {t}" for e, ws in enumerate(self.engines) for t, w in enumerate(ws) if w == b]
            who += [f"learner rank {r}" for r, lb in enumerate(self.learner) if lb == b]
            node = f"node {self.node_of[b]} " if self.node_of else ""
            lines.append(f"  {node}bundle {b}: {'; '.join(who)}")
        return "\n".join(lines)


def plan_scale_out(*, num_engines: int, tensor_parallel_size: int, num_learner_ranks: int, colocate: bool,
                   gpus_per_node: int | None = None, strategy: str = "pack") -> ScaleOutPlan:
    """The bundles and seats of E engines at TP size T and N learner ranks (layout in the module docstring).

    Raises ValueError for counts < 1, a colocated learner with more ranks than engine GPUs, or an engine that would
    straddle two nodes.

    >>> plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=4, colocate=False).learner
    (4, 5, 6, 7)
    """
    e, t, n = num_engines, tensor_parallel_size, num_learner_ranks
    if min(e, t, n) < 1:
        raise ValueError(f"num_engines, tensor_parallel_size and num_learner_ranks must be >= 1, got {e}, {t}, {n}")
    if colocate and n > e * t:
        raise ValueError(f"colocated: {n} learner ranks but only {e} engine(s) x TP {t} = {e * t} GPUs to share; "
                         "lower learner.num_ranks or add engines")
    engines = tuple(tuple(range(i * t, (i + 1) * t)) for i in range(e))
    learner = tuple(range(n)) if colocate else tuple(range(e * t, e * t + n))
    total = e * t if colocate else e * t + n
    bundles = tuple({"GPU": 1.0, "CPU": 2.0 if colocate and b < n else 1.0} for b in range(total))
    node_of: tuple[int, ...] = ()
    if gpus_per_node is not None:
        if gpus_per_node < 1 or gpus_per_node % t:
            raise ValueError(f"rollout.tensor_parallel_size {t} must divide the GPUs per node ({gpus_per_node}): an "
                             "engine's TP workers must sit on one node")
        units = [t] * e + ([] if colocate else [1] * n)
        node_of = assign_nodes(units, gpus_per_node, strategy)
    return ScaleOutPlan(bundles, engines, learner, colocate, node_of)


def assign_nodes(unit_sizes: list[int], gpus_per_node: int, strategy: str) -> tuple[int, ...]:
    """The node of every bundle when units of `unit_sizes` consecutive bundles are placed on nodes of
    `gpus_per_node` GPUs: pack (in order, node by node) or spread (round-robin, each unit to the next node with
    room). A unit is never split. Raises ValueError for an unknown strategy.

    >>> assign_nodes([2, 2, 1, 1, 1, 1], 4, "pack")
    (0, 0, 0, 0, 1, 1, 1, 1)
    >>> assign_nodes([2, 2, 1, 1, 1, 1], 4, "spread")
    (0, 0, 1, 1, 0, 1, 0, 1)
    """
    if strategy not in ("pack", "spread"):
        raise ValueError(f"placement.strategy must be pack or spread, got {strategy!r}")
    total = sum(unit_sizes)
    if strategy == "pack":
        return tuple(b // gpus_per_node for b in range(total))
    num_nodes = -(-total // gpus_per_node)
    free = [gpus_per_node] * num_nodes
    out: list[int] = []
    node = 0
    for size in unit_sizes:
        for _ in range(num_nodes):  # the next node (cyclic) with room for the whole unit
            if free[node] >= size:
                break
            node = (node + 1) % num_nodes
        else:
            num_nodes, node = num_nodes + 1, num_nodes
            free.append(gpus_per_node)
        free[node] -= size
        out += [node] * size
        node = (node + 1) % num_nodes
    return tuple(out)


def check_fits(plan: ScaleOutPlan, available_gpus: int, where: str) -> None:
    """ValueError naming both numbers when the plan needs more GPUs than `where` has."""
    if plan.num_gpus > available_gpus:
        raise ValueError(f"the plan needs {plan.num_gpus} GPU(s) ({len(plan.engines)} engine(s) x TP "
                         f"{len(plan.engines[0])}{'' if plan.colocate else f' + {len(plan.learner)} learner rank(s)'})"
                         f" but {where} has {available_gpus}")


@dataclass(frozen=True, slots=True)
class SyncRoute:
    """How TP worker `tp_rank` of `engine` gets each bucket: CUDA IPC from the learner rank on its GPU
    (`ipc_from`), or as rank `broadcast_rank` of the broadcast group (rank 0 = learner rank 0). Exactly one is set."""

    engine: int
    tp_rank: int
    ipc_from: int | None
    broadcast_rank: int | None


def sync_routes(plan: ScaleOutPlan) -> tuple[tuple[SyncRoute, ...], int]:
    """One route per TP worker (engines in order, TP ranks in order) and the broadcast group's world size (1 +
    workers without a learner rank on their GPU; 1 means no broadcast group is needed).

    >>> routes, world = sync_routes(plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=1,
    ...                                            colocate=False))
    >>> [r.broadcast_rank for r in routes], world
    ([1, 2, 3, 4], 5)
    """
    on_bundle = {b: r for r, b in enumerate(plan.learner)}
    routes: list[SyncRoute] = []
    next_rank = 1
    for e, workers in enumerate(plan.engines):
        for t, b in enumerate(workers):
            if b in on_bundle:
                routes.append(SyncRoute(e, t, on_bundle[b], None))
            else:
                routes.append(SyncRoute(e, t, None, next_rank))
                next_rank += 1
    return tuple(routes), next_rank

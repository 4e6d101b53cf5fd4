"""Placement of tensor-parallel engines and learner ranks, node packing, and weight-sync routes (pure)."""

from __future__ import annotations

import doctest
import re

import pytest

from rlplat import placement_tp
from rlplat.placement_tp import SyncRoute, check_fits, plan_scale_out, sync_routes


def test_doctests() -> None:
    assert doctest.testmod(placement_tp).failed == 0


def test_separate_engines_at_tp2_then_learner_ranks() -> None:
    plan = plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=4, colocate=False)
    assert plan.engines == ((0, 1), (2, 3)) and plan.learner == (4, 5, 6, 7)
    assert plan.num_gpus == 8 and plan.bundles == ({"GPU": 1.0, "CPU": 1.0},) * 8 and plan.num_nodes == 1
    text = plan.describe()
    assert "2 engine(s) x TP 2, 4 learner rank(s), 8 GPU(s)" in text
    assert "bundle 3: engine 1 TP worker 1" in text and "bundle 7: learner rank 3" in text


def test_colocated_learner_ranks_share_engine_gpus() -> None:
    plan = plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=3, colocate=True)
    assert plan.num_gpus == 4 and plan.learner == (0, 1, 2)
    assert [b["CPU"] for b in plan.bundles] == [2.0, 2.0, 2.0, 1.0]
    assert "bundle 0: engine 0 TP worker 0; learner rank 0" in plan.describe()
    with pytest.raises(ValueError, match="5 learner ranks but only 2 engine"):
        plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=5, colocate=True)


def test_two_nodes_pack_engines_whole() -> None:
    plan = plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=4, colocate=False,
                          gpus_per_node=4)
    assert plan.node_of == (0, 0, 0, 0, 1, 1, 1, 1) and plan.num_nodes == 2
    assert "node 1 bundle 4: learner rank 0" in plan.describe()
    with pytest.raises(ValueError, match="tensor_parallel_size 4 must divide the GPUs per node \\(6\\)"):
        plan_scale_out(num_engines=2, tensor_parallel_size=4, num_learner_ranks=1, colocate=False, gpus_per_node=6)


def test_bad_counts_and_too_few_gpus() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        plan_scale_out(num_engines=1, tensor_parallel_size=0, num_learner_ranks=1, colocate=False)
    plan = plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=4, colocate=False)
    check_fits(plan, 8, "the cluster")
    want = "needs 8 GPU(s) (2 engine(s) x TP 2 + 4 learner rank(s)) but the cluster has 6"
    with pytest.raises(ValueError, match=re.escape(want)):
        check_fits(plan, 6, "the cluster")


def test_routes_separate_all_broadcast() -> None:
    plan = plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=4, colocate=False)
    routes, world = sync_routes(plan)
    assert world == 5  # learner rank 0 + 4 TP workers, each receiving full tensors
    assert routes == (SyncRoute(0, 0, None, 1), SyncRoute(0, 1, None, 2), SyncRoute(1, 0, None, 3),
                      SyncRoute(1, 1, None, 4))


def test_routes_colocated_ipc_where_a_learner_rank_shares_the_gpu() -> None:
    plan = plan_scale_out(num_engines=2, tensor_parallel_size=2, num_learner_ranks=3, colocate=True)
    routes, world = sync_routes(plan)
    assert routes == (SyncRoute(0, 0, 0, None), SyncRoute(0, 1, 1, None), SyncRoute(1, 0, 2, None),
                      SyncRoute(1, 1, None, 1))
    assert world == 2
    full = plan_scale_out(num_engines=1, tensor_parallel_size=4, num_learner_ranks=4, colocate=True)
    assert sync_routes(full)[1] == 1 and all(r.ipc_from == r.tp_rank for r in sync_routes(full)[0])

"""Scale-out placement through the spec: learner.num_ranks and rollout.tensor_parallel_size in `plan_placement`,
pack vs spread over nodes, and `rlplat train --dry-run --assume-gpus 8 [--assume-nodes 2]`."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.config import ConfigError, load_config
from rlplat.placement import PlacementPlan, plan_placement
from rlplat.placement_tp import assign_nodes

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs/smoke/grpo.yaml"
SPEC = ROOT / "configs/scale_out_8gpu.yaml"


def _plan(available: float, *overrides: str, per_node: int | None = None) -> PlacementPlan:
    return plan_placement(load_config(SMOKE, list(overrides)), available, per_node)


def test_four_ranks_and_two_tp2_engines_take_eight_bundles() -> None:
    plan = _plan(8, "placement.device=gpu", "learner.num_ranks=4", "rollout.num_workers=2",
                 "rollout.tensor_parallel_size=2")
    assert plan.num_gpus == 8 and plan.scale_out is not None
    assert [s.bundle for s in plan.rollout] == [0, 2] and all(s.num_gpus == 0 for s in plan.rollout)  # vLLM's TP
    assert [(s.bundle, s.num_gpus) for s in plan.learner_slots] == [(4, 1.0), (5, 1.0), (6, 1.0), (7, 1.0)]


def test_cpu_plan_has_one_slot_per_rank_and_one_learner_by_default() -> None:
    assert len(_plan(0, "placement.device=cpu", "learner.num_ranks=3").learner_slots) == 3
    plain = _plan(0, "placement.device=cpu")
    assert plain.learner_ranks == () and len(plain.learner_slots) == 1


def test_scale_out_mistakes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="tensor_parallel_size: 2 needs GPUs"):
        _plan(0, "placement.device=cpu", "rollout.tensor_parallel_size=2")
    with pytest.raises(ConfigError, match="ipc sends one learner"):
        _plan(1, "placement.device=gpu", "placement.colocate=true", "placement.weight_sync=ipc", "learner.num_ranks=2")
    with pytest.raises(ConfigError, match="3 must divide the GPUs per node"):
        _plan(8, "placement.device=gpu", "rollout.tensor_parallel_size=3", per_node=4)
    with pytest.raises(ConfigError, match="algorithm.remix: not supported with an FSDP learner"):
        load_config(ROOT / "configs/remix_grpo.yaml", ["learner.num_ranks=2"])  # before any actor, not in one


def test_pack_and_spread_by_hand() -> None:
    # engines of 2 GPUs, then 4 learner ranks, 2 nodes of 4 GPUs
    assert assign_nodes([2, 2, 1, 1, 1, 1], 4, "pack") == (0, 0, 0, 0, 1, 1, 1, 1)
    assert assign_nodes([2, 2, 1, 1, 1, 1], 4, "spread") == (0, 0, 1, 1, 0, 1, 0, 1)
    assert assign_nodes([2, 1, 2], 2, "spread") == (0, 0, 1, 2, 2)  # node 1 has no room for the last engine
    with pytest.raises(ValueError, match="pack or spread"):
        assign_nodes([1], 1, "random")


def test_dry_run_prints_the_8_gpu_plan_on_one_and_two_nodes(capsys) -> None:
    assert main(["train", str(SPEC), "--dry-run", "--assume-gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "2 engine(s) x TP 2, 4 learner rank(s), 8 GPU(s) on 1 node(s)" in out
    assert "bundle 1: engine 0 TP worker 1" in out and "bundle 7: learner rank 3" in out
    assert main(["train", str(SPEC), "--dry-run", "--assume-gpus", "8", "--assume-nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "on 2 node(s)" in out and "node 0 bundle 3: engine 1 TP worker 1" in out
    assert "node 1 bundle 4: learner rank 0" in out


def test_dry_run_with_too_few_gpus_exits_2_with_both_numbers(capsys) -> None:
    assert main(["train", str(SPEC), "--dry-run", "--assume-gpus", "6"]) == 2
    err = capsys.readouterr().err
    assert "needs 8 GPU(s) (2 engine(s) x TP 2 + 4 learner rank(s)) but the assumed cluster has 6" in err
    assert main(["train", str(SPEC), "--dry-run", "--assume-gpus", "8", "--assume-nodes", "3"]) == 2
    assert "--assume-nodes 3 needs --assume-gpus with a multiple of it" in capsys.readouterr().err


def test_tp_engine_actor_keeps_vllm_workers_in_its_bundles() -> None:
    from rlplat.actors.placement_group import actor_options

    plan = _plan(8, "placement.device=gpu", "learner.num_ranks=4", "rollout.num_workers=2",
                 "rollout.tensor_parallel_size=2")
    pg = object()  # Ray only stores it in the strategy
    opts = actor_options(plan.rollout[1], pg, plan.engine_bundles(1))
    assert opts["num_gpus"] == 0 and opts["scheduling_strategy"].placement_group_bundle_index == 2
    assert opts["scheduling_strategy"].placement_group_capture_child_tasks
    assert opts["runtime_env"] == {"env_vars": {"VLLM_RAY_BUNDLE_INDICES": "2,3"}}
    learner = actor_options(plan.learner_slots[1], pg)
    assert learner["num_gpus"] == 1.0 and "runtime_env" not in learner

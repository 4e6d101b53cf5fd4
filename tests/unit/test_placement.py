"""GPU placement plans (pure), the GPU-count check, and `--dry-run` printing the 1-GPU and 8-GPU plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.config import ConfigError, load_config
from rlplat.placement import PlacementPlan, Slot, check_gpus, plan_placement, resolve_weight_sync

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs/smoke/grpo.yaml"


def _plan(available: float, *overrides: str) -> PlacementPlan:
    return plan_placement(load_config(SMOKE, list(overrides)), available)


def test_cpu_plan_has_no_bundles_and_syncs_bytes() -> None:
    plan = _plan(0, "rollout.num_workers=2")
    assert plan.device == "cpu" and plan.bundles == () and plan.num_gpus == 0 and plan.weight_sync == "bytes"
    assert plan.rollout == (Slot(None, 0.0), Slot(None, 0.0)) and plan.learner == Slot(None, 0.0)


def test_auto_device_follows_the_cluster() -> None:
    assert _plan(0).device == "cpu"
    assert _plan(1).device == "gpu"
    assert _plan(4, "placement.device=cpu").device == "cpu"


def test_flex_attention_needs_a_gpu_learner() -> None:
    assert _plan(1, "learner.attn_implementation=flex_attention").device == "gpu"
    with pytest.raises(ConfigError, match="flex_attention needs the learner on a GPU"):
        _plan(0, "learner.attn_implementation=flex_attention")
    with pytest.raises(ConfigError, match="sdpa"):  # an unknown kernel lists the valid ones
        load_config(SMOKE, ["learner.attn_implementation=flash"])


def test_separate_gpus_one_bundle_per_engine_plus_learner() -> None:
    plan = _plan(8, "placement.device=gpu", "rollout.num_workers=3")
    assert plan.bundles == ({"GPU": 1.0, "CPU": 1.0},) * 4 and plan.num_gpus == 4
    assert plan.rollout == (Slot(0, 1.0), Slot(1, 1.0), Slot(2, 1.0)) and plan.learner == Slot(3, 1.0)
    assert plan.weight_sync == "broadcast"


def test_colocated_learner_shares_engine_zero_gpu() -> None:
    plan = _plan(1, "placement.device=gpu", "placement.colocate=true")
    assert plan.bundles == ({"GPU": 1.0, "CPU": 2.0},) and plan.num_gpus == 1
    assert plan.rollout == (Slot(0, 0.5),) and plan.learner == Slot(0, 0.5)
    assert plan.weight_sync == "ipc"
    two = _plan(2, "placement.device=gpu", "placement.colocate=true", "rollout.num_workers=2")
    assert two.num_gpus == 2 and two.rollout == (Slot(0, 0.5), Slot(1, 1.0)) and two.weight_sync == "bytes"


@pytest.mark.parametrize(("requested", "device", "colocate", "engines", "expected"), [
    ("auto", "cpu", False, 1, "bytes"),
    ("auto", "cpu", True, 1, "bytes"),
    ("auto", "gpu", False, 2, "broadcast"),
    ("auto", "gpu", True, 1, "ipc"),
    ("auto", "gpu", True, 3, "bytes"),
    ("broadcast", "cpu", False, 2, "broadcast"),  # gloo on CPU
    ("bytes", "gpu", False, 1, "bytes"),
])
def test_resolve_weight_sync(requested: str, device: str, colocate: bool, engines: int, expected: str) -> None:
    assert resolve_weight_sync(requested, device=device, colocate=colocate, num_engines=engines) == expected


def test_weight_sync_that_cannot_work_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ipc needs the learner and a single rollout engine on one GPU"):
        resolve_weight_sync("ipc", device="gpu", colocate=False, num_engines=1)
    with pytest.raises(ConfigError, match="ipc needs"):
        resolve_weight_sync("ipc", device="cpu", colocate=True, num_engines=1)
    with pytest.raises(ConfigError, match="broadcast cannot run with placement.colocate: true"):
        resolve_weight_sync("broadcast", device="gpu", colocate=True, num_engines=1)


def test_too_few_gpus_names_both_numbers() -> None:
    plan = _plan(2, "placement.device=gpu", "rollout.num_workers=2")
    check_gpus(plan, 3, "the Ray cluster")
    with pytest.raises(ConfigError, match=r"needs 3 GPU\(s\) \(2 rollout engine\(s\) \+ 1 learner.*the Ray cluster "
                                          r"has 2"):
        check_gpus(plan, 2, "the Ray cluster")


def test_describe_places_every_actor() -> None:
    text = _plan(3, "placement.device=gpu", "rollout.num_workers=2").describe()
    assert "3 GPU(s), separate, weight sync broadcast" in text
    assert "bundle 0 [GPU 1, CPU 1]: rollout engine 0 (1 GPU)" in text
    assert "bundle 2 [GPU 1, CPU 1]: learner (1 GPU)" in text
    assert "no placement group" in _plan(0).describe()


def test_dry_run_prints_the_1_gpu_and_8_gpu_plans(capsys) -> None:
    assert main(["train", str(ROOT / "configs/cluster_1gpu.yaml"), "--dry-run", "--assume-gpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "placement: device gpu, 1 GPU(s), colocated, weight sync ipc" in out
    assert "bundle 0 [GPU 1, CPU 2]: rollout engine 0 (0.5 GPU); learner (0.5 GPU)" in out
    assert main(["train", str(ROOT / "configs/cluster_8gpu.yaml"), "--dry-run", "--assume-gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "placement: device gpu, 8 GPU(s), separate, weight sync broadcast" in out
    assert "bundle 6 [GPU 1, CPU 1]: rollout engine 6 (1 GPU)" in out and "bundle 7 [GPU 1, CPU 1]: learner" in out


def test_dry_run_with_too_few_gpus_exits_2_with_the_numbers(capsys) -> None:
    code = main(["train", str(ROOT / "configs/cluster_8gpu.yaml"), "--dry-run", "--assume-gpus", "4"])
    captured = capsys.readouterr()
    assert code == 2 and "bundle 7" in captured.out  # the plan is printed, then the check fails
    expected = "needs 8 GPU(s) (7 rollout engine(s) + 1 learner, one GPU each) but the assumed cluster has 4"
    assert expected in captured.err


def test_dry_run_on_this_machine_checks_its_gpus(capsys) -> None:
    import torch

    code = main(["train", str(SMOKE), "--dry-run", "cluster.address=local", "placement.device=gpu"])
    err = capsys.readouterr().err
    if torch.cuda.device_count() >= 2:
        assert code == 0
    else:
        assert code == 2 and f"but this machine has {torch.cuda.device_count()}" in err


def test_reward_actor_gets_its_own_gpu_or_shares_bundle_zero() -> None:
    separate = _plan(3, "placement.device=gpu", "placement.reward_actor=true")
    assert separate.num_gpus == 3 and separate.learner == Slot(1, 1.0) and separate.reward == Slot(2, 1.0)
    assert "bundle 2 [GPU 1, CPU 1]: reward actor (1 GPU)" in separate.describe()
    with pytest.raises(ConfigError, match=r"needs 3 GPU\(s\) \(1 rollout engine\(s\) \+ 1 learner \+ 1 reward actor"):
        check_gpus(separate, 2, "the Ray cluster")
    shared = _plan(1, "placement.device=gpu", "placement.colocate=true", "placement.reward_actor=true")
    assert shared.bundles == ({"GPU": 1.0, "CPU": 3.0},) and shared.num_gpus == 1
    assert (shared.rollout[0], shared.learner, shared.reward) == (Slot(0, 0.4), Slot(0, 0.4), Slot(0, 0.2))
    assert _plan(0, "placement.reward_actor=true").reward == Slot(None, 0.0)
    assert _plan(0).reward is None

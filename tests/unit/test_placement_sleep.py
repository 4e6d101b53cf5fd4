"""rollout.sleep_level is checked with the placement, before any actor starts: it needs CUDA, placement.colocate
and the synchronous loop. On this (CPU) machine `rlplat train` refuses it with one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.config import ConfigError, load_config
from rlplat.placement import plan_placement

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs/smoke/grpo.yaml"
SPEC = ROOT / "configs/gpu_sleep.yaml"


def _plan(available: float, *overrides: str):
    return plan_placement(load_config(SMOKE, list(overrides)), available)


def test_a_colocated_gpu_plan_takes_sleep_mode() -> None:
    for level in (1, 2):
        plan = _plan(1, "placement.device=gpu", "placement.colocate=true", f"rollout.sleep_level={level}")
        assert plan.colocate and plan.num_gpus == 1 and plan.weight_sync == "ipc"


@pytest.mark.parametrize(("overrides", "message"), [
    (("placement.device=cpu",), r"rollout.sleep_level: 1 needs CUDA .* resolves to cpu"),
    (("placement.device=auto", "placement.colocate=true"), "needs CUDA"),  # auto on a cluster without a GPU
    (("placement.device=gpu",), "needs placement.colocate: true"),
    (("placement.device=gpu", "placement.colocate=true", "data.store.enabled=true"), "data.store.enabled"),
])
def test_sleep_mode_mistakes_are_config_errors(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _plan(0 if "auto" in overrides[0] else 1, "rollout.sleep_level=1", *overrides)


def test_only_vllm_sleep_levels_load() -> None:
    with pytest.raises(ConfigError, match="sleep_level must be 0"):
        load_config(SMOKE, ["rollout.sleep_level=3"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(SMOKE, ["rollout.sleep_level=true"])


def test_the_gpu_sleep_spec_plans_one_shared_gpu_and_is_refused_on_cpu(capsys) -> None:
    assert main(["train", str(SPEC), "--dry-run", "--assume-gpus", "1"]) == 0
    assert "1 GPU(s), colocated, weight sync ipc" in capsys.readouterr().out
    assert main(["train", str(SPEC), "placement.device=auto", "--dry-run", "--assume-gpus", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rollout.sleep_level: 2 needs CUDA" in err

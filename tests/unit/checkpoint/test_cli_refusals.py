"""Through the real CLI, before any actor starts (issue 16 acceptance, items 2 and 5): a fresh run over an earlier
run's checkpoints is refused (exit 2, naming --resume and --start-over) and --start-over moves them aside; a planted
pickle in a checkpoint is refused by `train --resume`, `train` and `eval --checkpoint` and never runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.config import dump_yaml, load_config
from rlplat.driver import run_state
from tests.conftest import ROOT, smoke_overrides
from tests.unit.checkpoint.helpers import legacy_checkpoint, plant_learner_state, save, steps

SMOKE = str(ROOT / "configs/smoke/grpo.yaml")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    import ray

    code = main(argv)
    assert not ray.is_initialized(), "Ray was started"
    return code, capsys.readouterr().err.strip().splitlines()


def _args(model: Path, out: Path) -> list[str]:
    return [SMOKE, *smoke_overrides(model, out)]


def test_fresh_run_over_earlier_checkpoints_is_refused_and_start_over_moves_them(
        capsys, monkeypatch, tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        save(root, step)
    code, err = _run(["train", *_args(tiny_model_dir, tmp_path)], capsys)
    assert code == 2 and len(err) == 1
    assert "holds checkpoints up to step 4 of an earlier run; pass --resume" in err[0] and "--start-over" in err[0]
    assert steps(root) == [2, 4]

    def fake_train(cfg, **_):  # the real preflight and CLI; the run itself only checks it may start fresh
        run_state.check_fresh_start(cfg)
        return run_state.RunResult("r", "sqlite:///x", cfg.output_dir)

    monkeypatch.setattr("rlplat.driver.loop.train", fake_train)
    assert main(["train", *_args(tiny_model_dir, tmp_path), "--start-over"]) == 0
    assert "moved the earlier checkpoints to" in capsys.readouterr().out
    assert not root.exists()
    assert [steps(p) for p in tmp_path.glob("checkpoints.earlier-*")] == [[2, 4]]


def test_planted_pickles_are_refused_by_every_command_and_never_run(capsys, tiny_model_dir: Path,
                                                                    tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    legacy = legacy_checkpoint(tmp_path / "checkpoints", marker)  # driver.pkl
    args = _args(tiny_model_dir, tmp_path)
    for argv, message in [(["train", *args, "--resume"], "predates the safe checkpoint format"),
                          (["train", *args], "holds checkpoints up to step 4 of an earlier run"),
                          (["eval", *args, "--checkpoint", str(legacy)], "predates the safe checkpoint format")]:
        code, err = _run(argv, capsys)
        assert code == 2 and len(err) == 1 and message in err[0], (argv, err)

    other = tmp_path / "other"  # a learner_state.pt holding a pickled object, its manifest rewritten to fit
    cfg = load_config(SMOKE, smoke_overrides(tiny_model_dir, other))
    planted = save(other / "checkpoints", 6, spec=dump_yaml(cfg))
    plant_learner_state(planted, marker)
    code, err = _run(["eval", *_args(tiny_model_dir, other), "--checkpoint", str(planted)], capsys)
    errors = [line for line in err if line.startswith("rlplat: error:")]  # (transformers' progress bar is there too)
    assert code == 2 and len(errors) == 1 and "holds more than tensors and plain data" in errors[0], err
    assert not marker.exists()

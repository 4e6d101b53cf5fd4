"""`rlplat eval` sources: a checkpoint (full or LoRA), a saved model or an adapter becomes a servable model dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlplat import checkpoint as ck
from rlplat.config import AlgorithmConfig, ConfigError, LearnerConfig, LoraConfig, load_config
from rlplat.evaluate import EvalSource, find_source, materialise
from rlplat.learners.lora import merged_state_dict
from rlplat.learners.policy import PolicyLearner
from rlplat.learners.state import save_learner_state
from tests.conftest import ROOT


def _checkpoint(learner: PolicyLearner, root: Path, step: int) -> Path:
    tmp = ck.begin(root, step)
    save_learner_state(learner, tmp / "learner")
    state = ck.DriverState(step=step, policy_version=step, run_id="run-123", cursor={})
    return ck.commit(root, tmp, state, "spec: {}\n", keep_last=2)


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=4, target_modules=("q_proj", "v_proj"))])
def test_checkpoint_becomes_the_learners_merged_weights(lora, tiny_model_dir: Path, tmp_path: Path) -> None:
    learner = PolicyLearner(str(tiny_model_dir), LearnerConfig(), AlgorithmConfig(), dtype="float32", seed=0, lora=lora)
    with torch.no_grad():  # move away from the base weights (LoRA B starts at 0, so merged == base otherwise)
        for p in learner.model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    _checkpoint(learner, tmp_path / "checkpoints", 7)
    source = find_source(tmp_path / "checkpoints")  # the root: its latest
    assert (source.kind, source.step, source.trained_run_id) == ("checkpoint", 7, "run-123")
    overrides = [f"model.path={tiny_model_dir}"] + ([f"model.lora.rank={lora.rank}",
                                                     "model.lora.target_modules=[q_proj, v_proj]"] if lora else [])
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", overrides)
    out = materialise(source, cfg, tmp_path / "served")
    served = load_file(out / "model.safetensors")
    expected = merged_state_dict(learner.model) if lora else learner.model.state_dict()
    expected = {k: v for k, v in expected.items() if k in served}
    assert expected.keys() == served.keys() and len(served) > 5
    assert all(torch.allclose(served[k], expected[k].cpu(), atol=1e-6) for k in served)
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_checkpoint_of_another_model_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    learner = PolicyLearner(str(tiny_model_dir), LearnerConfig(), AlgorithmConfig(), dtype="float32", seed=0,
                            lora=LoraConfig(rank=2))
    _checkpoint(learner, tmp_path / "checkpoints", 1)
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", [f"model.path={tiny_model_dir}"])  # no lora in the spec
    with pytest.raises(ConfigError, match="does not fit the spec's model"):
        materialise(find_source(tmp_path / "checkpoints"), cfg, tmp_path / "served")


def test_saved_model_directory(tiny_model_dir: Path) -> None:
    assert find_source(tiny_model_dir).kind == "model"


def test_truncated_newest_checkpoint_falls_back_to_the_intact_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    learner = PolicyLearner(str(tiny_model_dir), LearnerConfig(), AlgorithmConfig(), dtype="float32", seed=0)
    root = tmp_path / "checkpoints"
    good = _checkpoint(learner, root, 2)
    bad = _checkpoint(learner, root, 4)
    state_file = bad / "learner" / "learner_state.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])
    source = find_source(root)
    assert (source.path, source.step) == (good, 2)
    with pytest.raises(ConfigError, match=r"--checkpoint: checkpoint .*step_000004: learner/learner_state.pt has 100 "
                                          r"bytes, its manifest says \d+ \(truncated or replaced\)$"):
        find_source(bad)


def test_planted_learner_state_is_a_one_line_error_and_never_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    class Planted:
        def __reduce__(self):
            return open, (str(tmp_path / "pwned"), "w")

    learner = PolicyLearner(str(tiny_model_dir), LearnerConfig(), AlgorithmConfig(), dtype="float32", seed=0)
    final = _checkpoint(learner, tmp_path / "checkpoints", 1)
    torch.save({"model": {"w": Planted()}}, final / "learner" / "learner_state.pt")
    source = EvalSource("checkpoint", final, 1, "run-123")  # past find_source's checksums, as if they were rewritten
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", [f"model.path={tiny_model_dir}"])
    with pytest.raises(ConfigError, match="--checkpoint: .*learner_state.pt holds more than tensors and plain data"):
        materialise(source, cfg, tmp_path / "served")
    assert not (tmp_path / "pwned").exists()

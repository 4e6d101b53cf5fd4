"""Bad input: one line naming the problem and exit status 2, before any actor starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.models import TinyModelShape, write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs/smoke/grpo.yaml")


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("m") / "short", shape=TinyModelShape(max_position_embeddings=12))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    import ray

    was_running = ray.is_initialized()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert ray.is_initialized() == was_running, "Ray was started for a bad spec"
    return code, err


def test_unknown_key(capsys, tmp_path) -> None:
    code, err = _run(["train", SMOKE, "rollout.num_prompt_per_step=3", f"experiment.output_dir={tmp_path}"], capsys)
    assert code == 2 and "rollout.num_prompt_per_step: unknown key" in err and len(err.splitlines()) == 1


def test_wrong_type(capsys) -> None:
    code, err = _run(["train", SMOKE, "learner.lr=fast"], capsys)
    assert code == 2 and "learner.lr: expected float, got str" in err


def test_missing_spec_file(capsys) -> None:
    code, err = _run(["train", "configs/nope.yaml"], capsys)
    assert code == 2 and "spec file 'configs/nope.yaml' does not exist" in err


def test_missing_model_directory(capsys, tmp_path) -> None:
    code, err = _run(["train", SMOKE, f"model.path={tmp_path / 'absent'}"], capsys)
    assert code == 2 and "model.path:" in err and "does not exist" in err


def test_prompt_longer_than_context(capsys, short_context_model: Path) -> None:
    code, err = _run(["train", SMOKE, f"model.path={short_context_model}"], capsys)
    assert code == 2 and "exceed the model context of 12 tokens" in err


def test_bad_reward_name(capsys, tiny_model_dir: Path) -> None:
    code, err = _run(["train", SMOKE, f"model.path={tiny_model_dir}", "reward.terms=[{name: nope}]"], capsys)
    assert code == 2 and "unknown reward 'nope'" in err


def test_dry_run_prints_resolved_spec(capsys) -> None:
    assert main(["train", SMOKE, "--dry-run", "rollout.max_new_tokens=5", "cluster.address=local"]) == 0
    out = capsys.readouterr().out
    assert "max_new_tokens: 5" in out and "num_prompts_per_step: 4" in out


def test_model_tiny_writes_loadable_directory(tmp_path: Path) -> None:
    from rlplat.models import check_model_dir

    assert main(["model", "tiny", str(tmp_path / "t")]) == 0
    check_model_dir(tmp_path / "t")


def test_model_tiny_shape_options_reach_the_config(tmp_path: Path) -> None:
    from rlplat.models import max_context_length

    argv = ["model", "tiny", str(tmp_path / "t"), "--hidden-size", "64", "--num-heads", "2",
            "--intermediate-size", "96", "--context-length", "300"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]) == (64, 96, 2)
    assert max_context_length(tmp_path / "t") == 300


def test_eval_checkpoint_that_is_not_a_directory(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, err = _run(["eval", SMOKE, f"model.path={tiny_model_dir}", "--checkpoint", str(tmp_path / "nope")], capsys)
    assert code == 2 and "is not a directory" in err


def test_eval_checkpoint_of_unknown_layout_lists_the_accepted_ones(capsys, tiny_model_dir: Path, tmp_path) -> None:
    code, err = _run(["eval", SMOKE, f"model.path={tiny_model_dir}", "--checkpoint", str(tmp_path)], capsys)
    assert code == 2 and "neither a checkpoint (learner/learner_state.pt), a saved model" in err

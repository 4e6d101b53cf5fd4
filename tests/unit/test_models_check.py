"""check_model_dir: a damaged model directory is one line naming the file, before anything loads it (and exit 2 from
the CLI), instead of a JSONDecodeError or a safetensors panic deep in the loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlplat.cli import main
from rlplat.models import check_model_dir, max_context_length

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs/smoke/grpo.yaml")


@pytest.fixture
def model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _truncate(path: Path, size: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:size])


def test_intact_directory_passes(model: Path) -> None:
    assert check_model_dir(model) == model
    assert max_context_length(model) == 128


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / "config.json").write_text('{"model_type": "qwen2", "hidden'),
     r"config.json is not valid JSON \(Unterminated string .* at line 1 column 25\): the file is damaged or truncated"),
    (lambda m: (m / "config.json").write_bytes(b"\xff\xfe\x00garbage"), r"config.json is not UTF-8 text"),
    (lambda m: (m / "config.json").write_text("[1, 2]"), r"config.json holds a JSON list, not an object"),
    (lambda m: (m / "tokenizer.json").write_text('{"version": '), r"tokenizer.json is not valid JSON"),
    (lambda m: _set_config(m, max_position_embeddings="long"),
     r"config.json: max_position_embeddings must be a positive integer, got 'long'"),
    (lambda m: _truncate(m / "model.safetensors", (m / "model.safetensors").stat().st_size // 2),
     r"model.safetensors is truncated: \d+ bytes, its header declares \d+"),
    (lambda m: _truncate(m / "model.safetensors", (m / "model.safetensors").stat().st_size - 1),
     r"model.safetensors is truncated: \d+ bytes"),
    (lambda m: _truncate(m / "model.safetensors", 100), r"model.safetensors is truncated or not a safetensors file"),
    (lambda m: _truncate(m / "model.safetensors", 3), r"model.safetensors is truncated or not a safetensors file"),
    (lambda m: (m / "model.safetensors").write_bytes((12).to_bytes(8, "little") + b"{not json!!}"),
     r"model.safetensors has a damaged safetensors header"),
])
def test_damaged_directory_is_one_line(model: Path, damage, message: str) -> None:
    damage(model)
    with pytest.raises(ValueError, match=message) as failure:
        check_model_dir(model)
    assert "\n" not in str(failure.value)


def _set_config(model: Path, **values: object) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | values))


def test_truncated_torch_bin(model: Path) -> None:
    torch.save({"w": torch.zeros(1000)}, model / "pytorch_model.bin")
    check_model_dir(model)
    _truncate(model / "pytorch_model.bin", 2000)
    with pytest.raises(ValueError, match=r"pytorch_model.bin is truncated or not a torch checkpoint"):
        check_model_dir(model)


def test_missing_shard_named_by_the_index(model: Path) -> None:
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ValueError, match=r"lacks weight shard\(s\) model-00002-of-00002.safetensors"):
        check_model_dir(model)


@pytest.mark.parametrize("damage", [
    lambda m: (m / "config.json").write_text("{"),
    lambda m: _truncate(m / "model.safetensors", (m / "model.safetensors").stat().st_size - 10),
])
def test_cli_exits_2_with_one_line_before_ray(model: Path, damage, tmp_path: Path, capsys) -> None:
    import ray

    damage(model)
    was_running = ray.is_initialized()
    code = main(["train", SMOKE, f"model.path={model}", f"experiment.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("rlplat: error: model.path: "), err
    assert ray.is_initialized() == was_running

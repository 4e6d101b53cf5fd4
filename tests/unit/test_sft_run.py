"""`rlplat sft SPEC` end to end on CPU (no Ray): MLflow metrics, a complete model directory that `rlplat train` can
start from, checkpoints that resume exactly, and bad input that stops with one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rlplat.cli import main
from rlplat.config import load_config
from rlplat.data.generators import arithmetic_splits, corpus_texts, with_messages, write_splits
from rlplat.driver import sft
from rlplat.models import TinyModelShape, check_model_dir, write_tiny_model

SHAPE = TinyModelShape(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64,
                       max_position_embeddings=256)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    write_tiny_model(root / "model", shape=SHAPE, tokenizer="bpe", corpus=corpus_texts(num_per_task=20))
    splits = {k: with_messages(v, prompt_key="question", response_key="answer")
              for k, v in arithmetic_splits(num_train=24, num_test=8, seed=0).items()}
    write_splits(root / "data", splits)
    return root


def _spec(root: Path, out: str, **sft_keys: object) -> Path:
    spec = {"experiment": {"name": "sft_test", "output_dir": str(root / out)},
            "model": {"path": str(root / "model")},
            "tracking": {"system_metrics_interval_s": 0},
            "sft": {"train_files": [str(root / "data" / "train.jsonl")],
                    "eval_files": [str(root / "data" / "test.jsonl")],
                    "num_conversations_per_step": 4, "num_steps": 6, "lr": 3e-3, **sft_keys}}
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sft_run_logs_and_saves_a_model_dir_for_rlplat_train(setup: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sft", str(_spec(setup, "run")), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "eval/sft_loss:" in out and "saved the model to" in out
    model_dir = setup / "run" / "sft_model"
    check_model_dir(model_dir)  # what `rlplat train` checks of model.path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(model_dir)
    tok, base = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(setup / "model")
    assert tok.chat_template == base.chat_template and tok.get_vocab() == base.get_vocab()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (model_dir / name).read_bytes() == (setup / "model" / name).read_bytes(), name
    assert tok.eos_token == "<|im_end|>"
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id
    assert json.loads((model_dir / "config.json").read_text())["max_position_embeddings"] == 256
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{setup / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rlplat").experiment_id])
    assert run.data.tags["rlplat.phase"] == "sft" and run.info.status == "FINISHED"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "eval/sft_loss")]
    assert len(losses) == 2 and losses[-1] < losses[0]  # before the first step and after the last
    assert {"loss/sft", "train/grad_norm", "train/lr", "perf/tokens_per_s", "data/num_conversations"} <= set(
        run.data.metrics)


def test_resume_continues_exactly(setup: Path) -> None:
    whole = sft.train_sft(load_config(_spec(setup, "whole")), report=None)
    spec = _spec(setup, "parts", num_steps=3)
    sft.train_sft(load_config(spec, ["checkpoint.every_steps=3"]), report=None)
    assert (setup / "parts" / "sft_checkpoints" / "step_000003").is_dir()
    resumed = sft.train_sft(load_config(spec, ["sft.num_steps=6"]), resume=True, report=None)
    assert resumed.run_id != whole.run_id
    for step in (4, 5, 6):
        assert dict(resumed.history["loss/sft"])[step] == pytest.approx(dict(whole.history["loss/sft"])[step],
                                                                       rel=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(whole.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_a_second_fresh_run_refuses_to_write_over_checkpoints(setup: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _spec(setup, "again", num_steps=1)
    assert main(["sft", str(spec), "checkpoint.every_steps=1", "--no-progress"]) == 0
    assert main(["sft", str(spec), "--no-progress"]) == 2
    assert "holds checkpoints" in capsys.readouterr().err
    assert main(["sft", str(spec), "--start-over", "--no-progress"]) == 0


@pytest.mark.parametrize(("override", "message"), [
    ("sft.train_files=[]", "sft.train_files: no conversation files given"),
    ("sft.train_files=[nope.jsonl]", "sft.train_files: data file 'nope.jsonl' does not exist"),
    ("sft.messages_key=chat", "sft.train_files: .*no column 'chat'"),
    ("sft.messages_key=question", "sft.train_files: .*row 1: an SFT row needs a list of chat messages"),
    ("sft.max_tokens_per_conversation=4", "sft.train_files: all 24 conversations are over 4 tokens"),
    ("model.path=/no/model", "model.path: model directory '/no/model' does not exist"),
    ("sft.num_stepz=3", "sft.num_stepz: unknown key"),
])
def test_bad_input_is_one_line_and_exit_2(setup: Path, capsys: pytest.CaptureFixture, override: str,
                                          message: str) -> None:
    assert main(["sft", str(_spec(setup, "bad")), override]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err
    assert not (setup / "bad" / "mlflow.db").exists()  # stopped before the run started


def test_resume_without_checkpoint_is_bad_input(setup: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sft", str(_spec(setup, "nothing")), "--resume"]) == 2
    assert "--resume: no checkpoint" in capsys.readouterr().err


def test_a_file_without_assistant_turns_names_the_row(setup: Path, capsys: pytest.CaptureFixture) -> None:
    bad = setup / "no_assistant.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main(["sft", str(_spec(setup, "bad2")), f"sft.train_files=[{bad}]"]) == 2
    assert f"{bad} row 1: the conversation has no assistant message" in capsys.readouterr().err

"""A real workload end to end: a jsonl of chat-message prompts with answers, a tiny BPE chat model (ChatML), the
`math_verify` reward reading the `answer` column; real Ray, real vLLM (CPU).

Tokens in, tokens out: the prompt ids the learner trains on are exactly the chat template's rendering of the row,
and the response ids are the ones the engine sampled (the learner's log-probs of them match the behaviour log-probs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat.config import ConfigError, load_config
from rlplat.data.chat import render_prompt
from rlplat.data.generators import arithmetic_splits
from rlplat.driver import loop, run_state
from rlplat.types import Group, TrainBatch
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlplat.models import TinyModelShape, write_tiny_model

    # 2048 positions: the tools' JSON schemas alone take ~700 tokens of the small BPE vocabulary
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bpe", tokenizer="bpe",
                            shape=TinyModelShape(max_position_embeddings=2048))


def _write_chat_data(out: Path) -> tuple[Path, Path]:
    splits = arithmetic_splits(num_train=12, num_test=4, seed=0)
    paths = []
    for name, records in splits.items():
        path = out / f"{name}.jsonl"
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps({"messages": [{"role": "user", "content": r["question"]}],
                                    "answer": r["answer"]}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _cfg(model: Path, out: Path, train: Path, test: Path, *extra: str):
    return load_config(ROOT / "configs/smoke/grpo.yaml", [
        *smoke_overrides(model, out), "experiment.num_steps=2", f"data.train_files=[{train}]",
        f"data.eval_files=[{test}]", "data.prompt_key=messages", "reward.terms=[{name: math_verify}]",
        "rollout.max_new_tokens=12", "eval.num_samples=2", *extra])


def test_chat_dataset_trains_on_the_tokens_the_engine_sampled(ray_session, chat_model: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    from transformers import AutoTokenizer

    train, test = _write_chat_data(tmp_path)
    cfg = _cfg(chat_model, tmp_path / "run", train, test)
    batches: list[TrainBatch] = []
    make_batch = loop.make_batch

    def spy(advantage: str, groups: list[Group]) -> TrainBatch:
        batch = make_batch(advantage, groups)
        batches.append(batch)
        return batch

    # The behaviour log-probs travel with the ids: before its first update, the learner's log-probs of a trained
    # sample's own ids match them.
    seen: list[float] = []
    train_step = loop.train_step

    def probe(cfg_, workers, batch, step):
        if not seen:
            s = batch.samples[0]
            logps = workers.call(workers.learner.sequence_logps.remote(s.prompt_token_ids + s.response_token_ids),
                                 "probe")
            seen.append(max(abs(a - b) for a, b in zip(logps[len(s.prompt_token_ids) - 1:], s.logp_behaviour,
                                                       strict=True)))
        return train_step(cfg_, workers, batch, step)

    monkeypatch.setattr(loop, "make_batch", spy)
    monkeypatch.setattr(loop, "train_step", probe)
    result = loop.train(cfg, progress=False)
    assert seen and seen[0] < 2e-2

    tok = AutoTokenizer.from_pretrained(chat_model)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(batches) == 2
    for batch in batches:
        for s in batch.samples:
            assert s.prompt_token_ids == render_prompt(rows[s.prompt_id]["messages"], tok)
            assert s.prompt_token_ids[-3:] == tok.encode("<|im_start|>assistant\n")[-3:]
            assert len(s.response_token_ids) == len(s.logp_behaviour) == len(s.loss_mask) > 0
    history = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    for key in ("eval/reward_mean", "eval/pass_at_k", "eval/mean_at_k", "eval/exact_match", "rollout/reward_mean"):
        assert key in history, key
    assert history["eval/k"] == 2


def test_bad_dataset_input_stops_before_any_actor(chat_model: Path, tmp_path: Path) -> None:
    train, test = _write_chat_data(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.train_files: .*missing\.jsonl"):
        run_state.preflight(_cfg(chat_model, tmp_path, tmp_path / "missing.jsonl", test))
    with pytest.raises(ConfigError, match=r"'question'"):
        run_state.preflight(_cfg(chat_model, tmp_path, train, test, "data.prompt_key=question"))
    with pytest.raises(ConfigError, match=r"reward\.terms: reward 'countdown' needs the column"):
        run_state.preflight(_cfg(chat_model, tmp_path, train, test, "reward.terms=[{name: countdown}]"))
    with pytest.raises(ConfigError, match=r"agent: tool 'nope'"):
        run_state.preflight(_cfg(chat_model, tmp_path, train, test, "agent.tools=[nope]"))
    with pytest.raises(ConfigError, match=r"exceed the model context"):
        run_state.preflight(_cfg(chat_model, tmp_path, train, test, "agent.tools=[calculator, python]",
                                 "rollout.max_new_tokens=1500"))


def test_tool_calling_trajectories_train(ray_session, chat_model: Path, tmp_path: Path, monkeypatch) -> None:
    """agent.tools on: trajectories are played through the real engine and the tools; whatever the untrained model
    writes (a malformed or no call), each sample is valid, model tokens carry mask 1 and the run finishes."""
    train, test = _write_chat_data(tmp_path)
    cfg = _cfg(chat_model, tmp_path / "run", train, test, "agent.tools=[calculator, python]", "agent.max_turns=2",
               "eval.num_samples=1")
    batches: list[TrainBatch] = []
    make_batch = loop.make_batch

    def spy(advantage: str, groups: list[Group]) -> TrainBatch:
        batches.append(make_batch(advantage, groups))
        return batches[-1]

    monkeypatch.setattr(loop, "make_batch", spy)
    result = loop.train(cfg, progress=False)
    metrics = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    for key in ("agent/turns_mean", "agent/tool_calls_mean", "agent/malformed_calls", "time/tools_s"):
        assert key in metrics, key
    assert metrics["eval/agent/num_trajectories"] == 4  # evaluation plays the 4 test prompts with the tools too
    assert 0.0 <= metrics["eval/agent/tool_use_rate"] <= 1.0 and "eval/reward_mean" in metrics
    for s in (s for b in batches for s in b.samples):
        s.validate()
        assert s.loss_mask[0] == 1 and s.loss_mask[-1] == 1  # a model turn opens and closes every response

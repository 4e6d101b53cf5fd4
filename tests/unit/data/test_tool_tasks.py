"""The tool task's SFT traces: the trace's prompt is the agent loop's prompt token for token, its calls parse with
the Hermes parser, its tool replies are what the real tools reply, and SFT trains on the call and the answer."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlplat.agents.tool_calls import get_parser
from rlplat.agents.tools import build_toolset, calculator_tool, python_tool
from rlplat.cli import main
from rlplat.data.sft import render_conversation
from rlplat.data.tool_tasks import TOOLS, corpus_lines, tool_splits, trace
from rlplat.models import TinyModelShape, write_tiny_model
from rlplat.sandbox import Sandbox

SHAPE = TinyModelShape(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
SCHEMAS = {"calculator": [calculator_tool().schema()], "python": [python_tool().schema()]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    recs = tool_splits(num_train=20, num_test=0, seed=0)["train"]
    corpus = corpus_lines(recs, SCHEMAS["calculator"]) + corpus_lines(recs, SCHEMAS["python"], "python")
    out = write_tiny_model(tmp_path_factory.mktemp("m") / "bpe", shape=SHAPE, tokenizer="bpe", corpus=corpus)
    return AutoTokenizer.from_pretrained(out)


def _records(tool: str, n: int = 6) -> list[dict]:
    return tool_splits(num_train=n, num_test=2, seed=3, schemas=SCHEMAS[tool], sft=True, tool=tool)["train"]


def test_problems_are_distinct_seeded_and_answers_exact() -> None:
    a = tool_splits(num_train=50, num_test=10, seed=1)
    assert a == tool_splits(num_train=50, num_test=10, seed=1)
    exprs = [r["expression"] for split in a.values() for r in split]
    assert len(set(exprs)) == 60
    for r in a["train"]:
        x, op, y = r["expression"].split()
        assert int(r["answer"]) == {"*": int(x) * int(y), "+": int(x) + int(y), "-": int(x) - int(y)}[op]
        assert r["expression"] in r["prompt"][0]["content"] and "messages" not in r


@pytest.mark.parametrize("tool", TOOLS)
def test_trace_prompt_is_the_agent_loops_prompt(tok, tool: str) -> None:
    """SFT renders the trace without `tools=`; its system message must render as the template's tools block."""
    for r in _records(tool):
        sft_prompt = tok.apply_chat_template(r["messages"][:2], add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
        agent_prompt = tok.apply_chat_template(r["prompt"], tools=SCHEMAS[tool], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
        assert list(sft_prompt) == list(agent_prompt)


@pytest.mark.parametrize("tool", TOOLS)
def test_trace_renders_and_trains_on_the_call_and_the_answer(tok, tool: str) -> None:
    r = _records(tool, 1)[0]
    ids, mask = render_conversation(r["messages"], tok)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=False)
    assert trained == f"{r['messages'][2]['content']}<|im_end|>#### {r['answer']}<|im_end|>"
    assert len(ids) < 512  # the tiny BPE model's context


@pytest.mark.parametrize("tool", TOOLS)
def test_trace_call_parses_and_the_real_tool_gives_its_reply(tool: str) -> None:
    r = _records(tool, 1)[0]
    turn = get_parser("hermes")(r["messages"][2]["content"])
    assert not turn.errors and len(turn.calls) == 1 and turn.content == ""
    assert turn.calls[0].name == tool
    with Sandbox(max_concurrency=1) as sb:
        replies = asyncio.run(build_toolset([tool], sandbox=sb).call_all(turn))
    assert [(x.content, x.is_error) for x in replies] == [(r["messages"][3]["content"], False)]
    assert r["messages"][4]["content"] == f"#### {r['answer']}"


def test_bad_tool_and_missing_schemas_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="tool must be one of calculator, python"):
        tool_splits(num_train=1, num_test=0, seed=0, tool="bash")
    with pytest.raises(ValueError, match="schemas"):
        tool_splits(num_train=1, num_test=0, seed=0, sft=True)
    with pytest.raises(ValueError, match="tool must be one of"):
        trace({"prompt": [], "expression": "1 + 1", "answer": "2"}, "", tool="bash")


def test_cli_writes_traces_and_corpus(tmp_path, capsys) -> None:
    assert main(["data", "tools", str(tmp_path), "--n", "5", "--n-test", "2", "--sft", "--tool", "python"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "tool",
                                                                            "assistant"]
    assert '"name": "python"' in rows[0]["messages"][0]["content"]
    assert "#### " + rows[0]["answer"] in (tmp_path / "corpus.txt").read_text()
    assert main(["data", "tools", str(tmp_path), "--n", "0"]) == 2

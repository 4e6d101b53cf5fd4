"""Hermes/Qwen tool-call parsing on hand-written model outputs, broken ones included."""

from __future__ import annotations

import random

import pytest

from rlplat.agents.tool_calls import TOOL_CALL_PARSERS, ParsedTurn, ToolCall, get_parser, parse_hermes

CALC = '{"name": "calculator", "arguments": {"expression": "123456789 * 987654321"}}'
PY = '{"name": "python", "arguments": {"code": "print(sum(range(10)))"}}'


def test_one_call_with_content() -> None:
    turn = parse_hermes(f"I will compute it.\n<tool_call>\n{CALC}\n</tool_call>")
    assert turn == ParsedTurn(content="I will compute it.", calls=[
        ToolCall(name="calculator", arguments={"expression": "123456789 * 987654321"}, id="call_0")])
    assert turn.has_calls


def test_several_calls_and_text_between() -> None:
    text = f"<think>two tools</think>First:<tool_call>{CALC}</tool_call> then <tool_call>{PY}</tool_call>"
    turn = parse_hermes(text)
    assert [c.name for c in turn.calls] == ["calculator", "python"]
    assert [c.id for c in turn.calls] == ["call_0", "call_1"]
    assert turn.content == "<think>two tools</think>First: then"
    assert turn.errors == []


def test_no_calls() -> None:
    turn = parse_hermes("The answer is 42.")
    assert turn == ParsedTurn(content="The answer is 42.") and not turn.has_calls


@pytest.mark.parametrize(("text", "error"), [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1+"</tool_call>', "not valid JSON"),
    ("<tool_call>calculator(1+2)</tool_call>", "not valid JSON"),
    ('<tool_call>["calculator", {}]</tool_call>', "is a JSON list, not an object"),
    ('<tool_call>{"arguments": {"x": 1}}</tool_call>', 'no "name" string'),
    ('<tool_call>{"name": "", "arguments": {}}</tool_call>', 'no "name" string'),
    ('<tool_call>{"name": "calculator", "arguments": [1, 2]}</tool_call>', "must be a JSON object, got list"),
    ('<tool_call>{"name": "calculator", "arguments": "{oops"}</tool_call>', "arguments string is not valid JSON"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}', "no closing </tool_call>"),
    ('{"name": "calculator", "arguments": {}}</tool_call>', "without an opening <tool_call>"),
])
def test_malformed_calls_become_errors(text: str, error: str) -> None:
    turn = parse_hermes(text)
    assert turn.calls == [] and len(turn.errors) == 1 and turn.has_calls
    assert error in turn.errors[0].message and turn.errors[0].id == "call_0"


def test_good_calls_survive_a_bad_neighbour() -> None:
    turn = parse_hermes(f"<tool_call>{CALC}</tool_call><tool_call>{{bad</tool_call><tool_call>{PY}</tool_call>")
    assert [(c.name, c.id) for c in turn.calls] == [("calculator", "call_0"), ("python", "call_2")]
    assert [e.id for e in turn.errors] == ["call_1"] and turn.errors[0].raw == "<tool_call>{bad</tool_call>"


def test_lenient_forms() -> None:
    turn = parse_hermes(
        '<tool_call>{"name": "a", "parameters": {"x": 1}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": "{\\"y\\": 2}"}</tool_call>'
        '<tool_call>{"name": "c"}</tool_call>'
    )
    assert [(c.name, c.arguments) for c in turn.calls] == [("a", {"x": 1}), ("b", {"y": 2}), ("c", {})]


def test_never_raises_on_cut_or_garbled_text() -> None:
    text = f"ok <tool_call>{CALC}</tool_call> and <tool_call>{PY}</tool_call> done"
    rng = random.Random(0)
    for _ in range(300):
        i, j = sorted(rng.sample(range(len(text) + 1), 2))
        garbled = text[:i] + text[j:] if rng.random() < 0.5 else text[i:j]
        assert isinstance(parse_hermes(garbled), ParsedTurn)


def test_parsers_by_name() -> None:
    assert get_parser("hermes") is parse_hermes and "hermes" in TOOL_CALL_PARSERS
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'.*hermes"):
        get_parser("xml")


@pytest.mark.parametrize(("text", "calls", "num_errors", "content"), [
    ('{"name": "calculator", "parameters": {"expression": "2+2"}}', [("calculator", {"expression": "2+2"})], 0, ""),
    ('<|python_tag|>{"name": "a", "parameters": {"s": "x;y"}}; {"name": "b"}', [("a", {"s": "x;y"}), ("b", {})], 0,
     ""),
    ('{"name": "a", "parameters": {}}; {"name": ', [("a", {})], 1, ""),
    ('{"parameters": {}}', [], 1, ""),
    ("The answer is 4.", [], 0, "The answer is 4."),
])
def test_llama3_json(text: str, calls: list[tuple[str, dict[str, object]]], num_errors: int, content: str) -> None:
    turn = get_parser("llama3_json")(text)
    assert [(c.name, c.arguments) for c in turn.calls] == calls
    assert len(turn.errors) == num_errors and turn.content == content

"""Parse the tool calls in a model's turn. Parsing never raises: a malformed call becomes a `ToolCallError`
whose `message` the agent loop sends back to the model as the tool's reply (and counts in a metric).

Formats, by name in `TOOL_CALL_PARSERS` (the spec picks one; a new model family adds a function here):
  hermes: Hermes / Qwen2.5 / Qwen3 chat templates. Any number of calls per turn, each
          `<tool_call>{"name": "...", "arguments": {...}}</tool_call>`; the text outside the tags is the turn's
          content. "parameters" is accepted for "arguments" (Llama 3 style), and arguments given as a JSON
          string holding an object are decoded; a call without arguments has {}.
  llama3_json: Llama 3.1 / 3.2 JSON tool calls: the whole turn is `{"name": ..., "parameters": {...}}`
          (several separated by ";"), optionally after `<|python_tag|>`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """One well-formed call. id: "call_<i>" with i its position among the turn's calls (errors included)."""

    name: str
    arguments: dict[str, Any]
    id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallError:
    """A call that could not be parsed. message: for the model; raw: the offending text (for logs)."""

    message: str
    raw: str
    id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedTurn:
    """content: the turn's text without the calls (stripped). calls and errors in the order they appeared."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[ToolCallError] = field(default_factory=list)

    @property
    def has_calls(self) -> bool:
        """True when the turn asked for tools (well-formed or not): the loop answers before the model goes on."""
        return bool(self.calls or self.errors)


class ToolCallParser(Protocol):
    """Reads one model turn (decoded text) into content, calls and errors; never raises."""

    def __call__(self, text: str) -> ParsedTurn: ...


_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)
_RAW_CHARS_KEPT = 500  # of a malformed call, in the error record


def parse_hermes(text: str) -> ParsedTurn:
    """`<tool_call>{json}</tool_call>` blocks, several per turn.

    >>> t = parse_hermes('Adding.<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>')
    >>> t.content, t.calls[0].name, t.calls[0].arguments, t.calls[0].id
    ('Adding.', 'calculator', {'expression': '2+2'}, 'call_0')
    >>> parse_hermes('<tool_call>{"name": "calculator", "arguments": </tool_call>').errors[0].message
    'tool call 0 is not valid JSON (Expecting value at char 36): expected {"name": ..., "arguments": {...}}'
    """
    calls: list[ToolCall] = []
    errors: list[ToolCallError] = []
    content_parts: list[str] = []
    pos = 0
    for i, m in enumerate(_HERMES_BLOCK.finditer(text)):
        content_parts.append(text[pos:m.start()])
        pos = m.end()
        call_id = f"call_{i}"
        if not m.group(2):
            errors.append(_error(f"tool call {i} has no closing </tool_call>", m.group(0), call_id))
            continue
        result = _hermes_json(m.group(1), i)
        if isinstance(result, str):
            errors.append(_error(result, m.group(0), call_id))
        else:
            calls.append(ToolCall(name=result[0], arguments=result[1], id=call_id))
    content_parts.append(text[pos:])
    content = "".join(content_parts)
    if "</tool_call>" in content:  # a closing tag without its opening one: the model meant a call
        call_id = f"call_{len(calls) + len(errors)}"
        errors.append(_error("found </tool_call> without an opening <tool_call>", content, call_id))
        content = content.replace("</tool_call>", "")
    return ParsedTurn(content=content.strip(), calls=calls, errors=errors)


_EXPECTED = 'expected {"name": ..., "arguments": {...}}'


def _hermes_json(body: str, i: int) -> tuple[str, dict[str, Any]] | str:
    """(name, arguments), or the error message for the model."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return f"tool call {i} is not valid JSON ({e.msg} at char {e.pos}): {_EXPECTED}"
    return _call_fields(obj, i)


def _call_fields(obj: Any, i: int) -> tuple[str, dict[str, Any]] | str:
    expected = _EXPECTED
    if not isinstance(obj, dict):
        return f"tool call {i} is a JSON {type(obj).__name__}, not an object: {expected}"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return f"tool call {i} has no \"name\" string: {expected}"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return f"tool call {i} ({name}): arguments string is not valid JSON ({e.msg} at char {e.pos})"
    if not isinstance(args, dict):
        return f"tool call {i} ({name}): arguments must be a JSON object, got {type(args).__name__}"
    return name, args


def _error(message: str, raw: str, call_id: str) -> ToolCallError:
    return ToolCallError(message=message, raw=raw[:_RAW_CHARS_KEPT], id=call_id)


_DECODER = json.JSONDecoder()


def parse_llama3_json(text: str) -> ParsedTurn:
    """Llama 3.1/3.2 JSON tool calls: the whole turn (after an optional `<|python_tag|>`) is one JSON object
    `{"name": ..., "parameters": {...}}`, or several separated by ";". A turn that does not start with "{" is
    plain content.

    >>> t = parse_llama3_json('{"name": "calculator", "parameters": {"expression": "2+2"}}; {"name": "python"')
    >>> [(c.name, c.arguments) for c in t.calls], t.errors[0].message.split(":")[0]
    ([('calculator', {'expression': '2+2'})], "tool call 1 is not valid JSON (Expecting ',' delimiter at char 17)")
    """
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return ParsedTurn(content=text.strip())
    calls: list[ToolCall] = []
    errors: list[ToolCallError] = []
    pos, i = 0, 0
    while pos < len(body):
        try:
            obj, end = _DECODER.raw_decode(body, pos)
        except json.JSONDecodeError as e:
            errors.append(_error(f"tool call {i} is not valid JSON ({e.msg} at char {e.pos - pos}): {_EXPECTED}",
                                 body[pos:], f"call_{i}"))
            break
        result = _call_fields(obj, i)
        if isinstance(result, str):
            errors.append(_error(result, body[pos:end], f"call_{i}"))
        else:
            calls.append(ToolCall(name=result[0], arguments=result[1], id=f"call_{i}"))
        i += 1
        pos = end
        while pos < len(body) and (body[pos].isspace() or body[pos] == ";"):
            pos += 1
    return ParsedTurn(content="", calls=calls, errors=errors)


TOOL_CALL_PARSERS: dict[str, ToolCallParser] = {"hermes": parse_hermes, "llama3_json": parse_llama3_json}


def get_parser(name: str) -> ToolCallParser:
    """The parser named in the spec; ValueError naming the known ones otherwise."""
    if name not in TOOL_CALL_PARSERS:
        raise ValueError(f"unknown tool-call format {name!r}: use one of {', '.join(TOOL_CALL_PARSERS)}")
    return TOOL_CALL_PARSERS[name]

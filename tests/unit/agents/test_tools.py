"""Built-in and user tools, their schemas, and a dispatcher that answers every call without raising."""

from __future__ import annotations

import asyncio
import doctest
import enum
import time
from pathlib import Path
from typing import Literal

import pytest

from rlplat.agents import tool_calls, tools
from rlplat.agents.tool_calls import ParsedTurn, ToolCall, ToolCallError, parse_hermes
from rlplat.agents.tools import (
    Tool,
    ToolSet,
    build_toolset,
    calculate,
    load_user_tool,
    python_tool,
    tool_from_function,
)
from rlplat.sandbox import Sandbox, SandboxLimits
from rlplat.sandbox import pool as sandbox_module

USER_TOOLS = '''
import asyncio, time
from typing import Literal


def lookup(word: str, limit: int = 3, mode: Literal["exact", "prefix"] = "exact", tags: list[str] | None = None,
           score: float = 0.5, strict: bool = False) -> list[str]:
    """Look a word up in the dictionary.

    Longer explanation that goes on
    over two lines.

    Args:
        word (str): the word to look up,
            possibly with a suffix
        limit: how many entries to return
        mode: exact match or prefix search

    Returns:
        The entries.
    """
    return [word] * limit


def boom(x: int) -> str:
    """Always fails."""
    raise RuntimeError(f"boom {x}")


def hang() -> str:
    """Sleeps far past its timeout."""
    time.sleep(30)
    return "never"


async def ahang() -> str:
    """Sleeps far past its timeout, asynchronously."""
    await asyncio.sleep(30)
    return "never"


def nap(s: float) -> str:
    """Sleeps s seconds."""
    time.sleep(s)
    return f"slept {s}"


def varargs(*xs: int) -> int:
    return sum(xs)
'''


@pytest.fixture()
def user_file(tmp_path: Path) -> str:
    path = tmp_path / "my_tools.py"
    path.write_text(USER_TOOLS)
    return str(path)


def test_doctests() -> None:
    for module in (sandbox_module, tool_calls, tools):
        assert doctest.testmod(module).failed == 0, module.__name__


@pytest.mark.parametrize(("expression", "value"), [
    ("2 + 2", "4"),
    ("123456789123456789 * 987654321987654321", "121932631356500531347203169112635269"),
    ("7 // 2", "3"),
    ("7 % 2", "1"),
    ("-(3 - 10) ** 2", "-49"),
    ("2 ** 0.5", "1.4142135623730951"),
    ("sqrt(144) + floor(pi)", "15.0"),
    ("max(3, 9, 4) - abs(-2)", "7"),
    ("(10 ** 30 + 7) % 97", str((10 ** 30 + 7) % 97)),
])
def test_calculator_values(expression: str, value: str) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(("expression", "error"), [
    ("9 ** 9 ** 9", "too large"),
    ("10 ** 100000", "too large"),
    ("factorial(100000)", "above 1000"),
    ("2 ^ 10", r"write \*\*"),
    ("1 / 0", "ZeroDivisionError"),
    ("__import__('os').system('true')", "unsupported syntax"),
    ("(1).__class__", "unsupported syntax"),
    ("open('x')", "unsupported syntax"),
    ("x + 1", "unsupported syntax"),
    ("'a' * 3", "unsupported syntax"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 2000, "longer than"),
    ("10.0 ** 400", "OverflowError"),
    ("sqrt(1, 2)", "sqrt"),
])
def test_calculator_rejects(expression: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        calculate(expression)


def test_user_tool_schema_from_hints_and_docstring(user_file: str) -> None:
    tool = load_user_tool(f"{user_file}:lookup")
    assert tool.schema() == {"type": "function", "function": {
        "name": "lookup",
        "description": "Look a word up in the dictionary. Longer explanation that goes on over two lines.",
        "parameters": {"type": "object", "required": ["word"], "properties": {
            "word": {"type": "string", "description": "the word to look up, possibly with a suffix"},
            "limit": {"type": "integer", "description": "how many entries to return"},
            "mode": {"type": "string", "enum": ["exact", "prefix"], "description": "exact match or prefix search"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "score": {"type": "number"},
            "strict": {"type": "boolean"},
        }},
    }}
    assert load_user_tool(f"{user_file}:boom").description == "Always fails."


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def test_schema_of_enums_and_first_line_descriptions() -> None:
    def paint(color: Color, shade: Literal[1, 2], extra: dict[str, int], anything=None) -> None:
        """Paint it.
        More words that are not a new paragraph."""

    fn = tool_from_function(paint).schema()["function"]
    assert fn["description"] == "Paint it. More words that are not a new paragraph."
    assert fn["parameters"]["properties"] == {"color": {"enum": ["red", "blue"]},
                                              "shade": {"type": "integer", "enum": [1, 2]},
                                              "extra": {"type": "object"}, "anything": {}}
    assert fn["parameters"]["required"] == ["color", "shade", "extra"]


@pytest.mark.parametrize(("spec", "error"), [
    ("missing.py:fn", "does not exist"),
    ("{file}:nope", "has no function 'nope'"),
    ("{file}:varargs", "must be a named"),
    ("{file}", "expected python, calculator or path/to/file.py:function"),
])
def test_user_tool_errors(spec: str, error: str, user_file: str) -> None:
    with pytest.raises(ValueError, match=error):
        load_user_tool(spec.format(file=user_file))


def test_user_tool_import_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('no such dependency')\n")
    with pytest.raises(ValueError, match="importing .* failed: ImportError: no such dependency"):
        load_user_tool(f"{bad}:f")


def _run(toolset: ToolSet, text: str) -> list[tuple[str, bool]]:
    return [(r.content, r.is_error) for r in asyncio.run(toolset.call_all(parse_hermes(text)))]


def test_dispatch_errors_never_raise(user_file: str) -> None:
    ts = build_toolset(["calculator", f"{user_file}:boom", f"{user_file}:lookup"])
    text = (
        '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'
        '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "lookup", "arguments": {"word": "a", "limit": "3"}}</tool_call>'
        '<tool_call>{"name": "lookup", "arguments": {"word": "a", "limit": true}}</tool_call>'
        '<tool_call>{"name": "boom", "arguments": {"x": 7}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": {"expression": "9 ** 9 ** 9"}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": {"expression": oops}}</tool_call>'
        '<tool_call>{"name": "lookup", "arguments": {"word": "hi", "limit": 2, "score": 1}}</tool_call>'
    )
    assert _run(ts, text) == [
        ("42", False),
        ("error: unknown tool 'search'; available tools: calculator, boom, lookup", True),
        ("error: bad arguments for calculator: unknown argument 'expr' (expected: expression)", True),
        ("error: bad arguments for calculator: missing required argument 'expression'", True),
        ("error: bad arguments for lookup: argument 'limit': expected integer, got str \"3\"", True),
        ("error: bad arguments for lookup: argument 'limit': expected integer, got bool true", True),
        ("error: tool boom raised RuntimeError: boom 7", True),
        ("error: tool calculator raised ValueError: result too large (over 13000 bits)", True),
        ("error: tool call 8 is not valid JSON (Expecting value at char 51): expected {\"name\": ..., "
         "\"arguments\": {...}}", True),
        ('["hi", "hi"]', False),
    ]


def test_hanging_tools_time_out_and_calls_run_concurrently(user_file: str) -> None:
    ts = build_toolset([f"{user_file}:hang", f"{user_file}:ahang", f"{user_file}:nap"], user_tool_timeout_s=0.5)
    start = time.monotonic()
    got = _run(ts, '<tool_call>{"name": "hang"}</tool_call><tool_call>{"name": "ahang"}</tool_call>'
                   '<tool_call>{"name": "nap", "arguments": {"s": 0.3}}</tool_call>'
                   '<tool_call>{"name": "nap", "arguments": {"s": 0.3}}</tool_call>')
    assert got == [("error: tool hang timed out after 0.5 s", True), ("error: tool ahang timed out after 0.5 s", True),
                   ("slept 0.3", False), ("slept 0.3", False)]
    assert time.monotonic() - start < 0.9


def test_results_are_chat_messages_and_cut_to_budget() -> None:
    ts = ToolSet(tools={"echo": Tool(name="echo", description="", fn=lambda text: text,
                                     parameters={"type": "object", "properties": {"text": {"type": "string"}}})},
                 max_output_chars=50)
    [res] = asyncio.run(ts.call_all(ParsedTurn(content="", calls=[
        ToolCall(name="echo", arguments={"text": "x" * 1000}, id="call_0")])))
    assert len(res.content) <= 50 and "chars cut" in res.content
    assert res.message() == {"role": "tool", "tool_call_id": "call_0", "name": "echo", "content": res.content}
    err = asyncio.run(ts.call(ToolCallError(message="no closing tag", raw="<tool_call>{", id="call_3")))
    assert (err.content, err.is_error, err.call_id) == ("error: no closing tag", True, "call_3")


def test_python_tool_runs_in_the_sandbox() -> None:
    limits = SandboxLimits(timeout_s=1.0, cpu_s=2, max_output_bytes=2000)
    with Sandbox(max_concurrency=2, limits=limits) as sb:
        ts = ToolSet(tools={"python": python_tool(sb)}, max_output_chars=300)
        got = _run(ts, '<tool_call>{"name": "python", "arguments": {"code": "print(2**100)"}}</tool_call>'
                       '<tool_call>{"name": "python", "arguments": {"code": "1/0"}}</tool_call>'
                       '<tool_call>{"name": "python", "arguments": {"code": "while True: pass"}}</tool_call>'
                       '<tool_call>{"name": "python", "arguments": {"code": "print(\'y\' * 10**6)"}}</tool_call>')
    assert got[0] == (f"exit status 0\nstdout:\n{2 ** 100}\n", False)
    assert got[1][0].startswith("exit status 1\nstderr:\nTraceback") and "ZeroDivisionError" in got[1][0]
    assert got[2] == ("killed: wall-clock time limit reached", False)
    assert got[3][0].startswith("exit status 0\nstdout (truncated):\nyyy") and len(got[3][0]) <= 300


def test_schemas_and_build_errors(user_file: str) -> None:
    ts = build_toolset(["python", "calculator"])
    assert [s["function"]["name"] for s in ts.schemas()] == ["python", "calculator"]
    assert all(s["type"] == "function" and s["function"]["parameters"]["type"] == "object" for s in ts.schemas())
    with pytest.raises(ValueError, match="two tools are named 'calculator'"):
        build_toolset(["calculator", "calculator"])
    with pytest.raises(ValueError, match="expected python, calculator"):
        build_toolset(["web_search"])

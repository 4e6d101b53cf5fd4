"""Tools a chat model can call, their JSON schemas for the chat template, and a dispatcher that never raises.

Names in the spec (`build_toolset`):
  python       runs the call's `code` in the sandbox (rlplat.sandbox); replies with the exit status,
               stdout and stderr.
  calculator   evaluates one arithmetic `expression` (+ - * / // % **, parentheses, a few math functions) by
               walking its syntax tree: no eval, and sizes are bounded so `9**9**9` is an error, not a hang.
  path/to/file.py:fn
               a user's function (sync or async); its schema comes from the type hints and the docstring
               (a Google-style `Args:` section describes the parameters; the text above it describes the tool).

`ToolSet.schemas()` is the OpenAI / Qwen function-calling list that `tokenizer.apply_chat_template(tools=...)`
expects. `ToolSet.call` / `call_all` answer every call, parsed or not, with a `ToolResult`: an unknown tool,
arguments that do not match the schema, a tool that raises or runs past its timeout, all become an error
result whose text goes back to the model. Replies are cut to `max_output_chars` (head and tail kept).
A sync tool runs in a daemon thread: after its timeout the call returns, but Python cannot kill the thread,
so a tool that hangs forever keeps one thread (it does not block the step or interpreter exit).
"""

from __future__ import annotations

import ast
import asyncio
import enum
import inspect
import json
import math
import operator
import re
import threading
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlplat.agents.tool_calls import ParsedTurn, ToolCall, ToolCallError
from rlplat.sandbox import Sandbox, SandboxLimits, SandboxResult, default_sandbox
from rlplat.user_code import load_function


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    """A callable tool. parameters: JSON schema of an object; fn gets the arguments as keywords and returns
    text (or anything JSON-serialisable); it may be a coroutine function."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    timeout_s: float = 30.0

    def schema(self) -> dict[str, Any]:
        """{"type": "function", "function": {name, description, parameters}}: one entry of `tools=`."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult:
    """The reply to one call. is_error: the call did not run as asked (unknown tool, bad arguments, raised,
    timed out, unparseable call); a program that fails inside the python tool is a normal result."""

    call_id: str
    name: str
    content: str
    is_error: bool

    def message(self) -> dict[str, str]:
        """The chat message for the template: {"role": "tool", "tool_call_id", "name", "content"}."""
        return {"role": "tool", "tool_call_id": self.call_id, "name": self.name, "content": self.content}


@dataclass(slots=True)
class ToolSet:
    """Tools by name with one dispatcher. Calls of one turn run concurrently."""

    tools: dict[str, Tool]
    max_output_chars: int = 4000

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    async def call(self, call: ToolCall | ToolCallError) -> ToolResult:
        if isinstance(call, ToolCallError):
            return ToolResult(call_id=call.id, name="", content=f"error: {call.message}", is_error=True)
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return self._error(call, f"unknown tool {call.name!r}; available tools: {known}")
        problem = check_arguments(tool.parameters, call.arguments)
        if problem:
            return self._error(call, f"bad arguments for {call.name}: {problem}")
        try:
            out = await asyncio.wait_for(self._invoke(tool, call.arguments), timeout=tool.timeout_s)
        except TimeoutError:
            return self._error(call, f"tool {call.name} timed out after {tool.timeout_s:g} s")
        except Exception as e:  # a tool's own failure goes back to the model, the step goes on
            return self._error(call, f"tool {call.name} raised {type(e).__name__}: {e}")
        text = out if isinstance(out, str) else json.dumps(out, default=str)
        return ToolResult(call_id=call.id, name=call.name, content=truncate_middle(text, self.max_output_chars),
                          is_error=False)

    async def call_all(self, turn: ParsedTurn) -> list[ToolResult]:
        """Every call and malformed call of a turn, in the order the model wrote them."""
        items: list[ToolCall | ToolCallError] = sorted([*turn.calls, *turn.errors], key=lambda c: _call_index(c.id))
        return list(await asyncio.gather(*(self.call(c) for c in items)))

    async def _invoke(self, tool: Tool, arguments: Mapping[str, Any]) -> Any:
        if inspect.iscoroutinefunction(tool.fn):
            return await tool.fn(**arguments)
        return await _in_daemon_thread(tool.fn, dict(arguments))

    def _error(self, call: ToolCall, message: str) -> ToolResult:
        return ToolResult(call_id=call.id, name=call.name, content=truncate_middle(f"error: {message}",
                                                                                   self.max_output_chars),
                          is_error=True)


def _call_index(call_id: str) -> int:
    digits = call_id.rpartition("_")[2]
    return int(digits) if digits.isdigit() else 0


def _in_daemon_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if fut.done():  # the caller gave up (timeout) before the tool returned
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def target() -> None:
        try:
            value, error = fn(**kwargs), None
        except BaseException as e:  # handed to the awaiting call, which reports it to the model
            value, error = None, e
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the event loop is closed: nobody waits any more
            pass

    threading.Thread(target=target, daemon=True, name=f"tool-{getattr(fn, '__name__', 'fn')}").start()
    return fut


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail (a traceback's last line matters) with a marker saying how much was cut.

    >>> truncate_middle("0123456789" * 10, 40)
    '012345678901[... 83 chars cut ...]56789'
    """
    if len(text) <= max_chars:
        return text
    marker_len = len(f"[... {len(text)} chars cut ...]")
    keep = max(max_chars - marker_len, 0)
    head, tail = keep - keep // 3, keep // 3
    cut = len(text) - head - tail
    return f"{text[:head]}[... {cut} chars cut ...]{text[len(text) - tail:] if tail else ''}"


# ---- the python tool -------------------------------------------------------------------------------------


def python_tool(sandbox: Sandbox | None = None, *, limits: SandboxLimits | None = None) -> Tool:
    """The `python` built-in: runs `code` as a fresh program in `sandbox` (default: the process-wide pool)."""

    async def python(code: str) -> str:
        sb = sandbox or default_sandbox()
        return format_execution(await sb.run(code, limits=limits or sb.limits))

    timeout = (limits.timeout_s if limits else 30.0) + 10.0  # the sandbox's own deadline fires first
    return Tool(name="python", fn=python, timeout_s=timeout,
                description="Run a Python 3 program in a fresh sandbox without network access and return its "
                            "exit status, stdout and stderr. State is not kept between calls; print what you "
                            "need to see.",
                parameters={"type": "object", "required": ["code"],
                            "properties": {"code": {"type": "string", "description": "the complete program"}}})


def format_execution(res: SandboxResult) -> str:
    """The python tool's reply: status line, then stdout and stderr when not empty."""
    if res.timed_out:
        status = "killed: wall-clock time limit reached"
    elif res.setup_error:
        status = f"not run: {res.setup_error}"
    elif res.exit_code is not None and res.exit_code < 0:
        status = f"killed by signal {-res.exit_code} (CPU time or memory limit?)"
    else:
        status = f"exit status {res.exit_code}"
    parts = [status]
    for name, text, cut in (("stdout", res.stdout, res.stdout_truncated), ("stderr", res.stderr, res.stderr_truncated)):
        if text:
            parts.append(f"{name}{' (truncated)' if cut else ''}:\n{text}")
    return "\n".join(parts)


# ---- the calculator --------------------------------------------------------------------------------------

_MAX_EXPRESSION_CHARS = 1000
_MAX_INT_BITS = 13_000  # about 3,900 decimal digits, within Python's int -> str limit of 4,300
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_FUNCS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "exp": math.exp, "log": math.log,
    "log10": math.log10, "floor": math.floor, "ceil": math.ceil, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "factorial": math.factorial,
}
_CONSTS = {"pi": math.pi, "e": math.e}


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly for integers (no eval). ValueError explains a rejected input.

    >>> calculate("123456789 * 987654321"), calculate("2 ** 10 / 4"), calculate("sqrt(16) + pi // 1")
    ('121932631112635269', '256.0', '7.0')
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None
    try:
        value = _eval(tree.body)
    except (ZeroDivisionError, OverflowError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    return str(value)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left), _eval(node.right)
        _check_size(node.op, a, b)
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ValueError("^ is not a power here: write ** (2 ** 10)")
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and not node.keywords):
        args = [_eval(a) for a in node.args]
        if node.func.id == "factorial" and args and isinstance(args[0], int) and args[0] > 1000:
            raise ValueError("factorial argument above 1000")
        try:
            return _FUNCS[node.func.id](*args)
        except TypeError as e:
            raise ValueError(f"{node.func.id}: {e}") from None
    allowed = ", ".join([*_FUNCS, *_CONSTS])
    raise ValueError(f"unsupported syntax {ast.unparse(node)!r}: numbers, + - * / // % **, ( ), and {allowed}")


def _check_size(op: ast.operator, a: int | float, b: int | float) -> None:
    """Refuse integer results larger than _MAX_INT_BITS before computing them."""
    if not (isinstance(a, int) and isinstance(b, int)):
        return
    if isinstance(op, ast.Pow) and b > 0 and abs(a) > 1 and (abs(a).bit_length() - 1) * b > _MAX_INT_BITS:
        raise ValueError(f"result too large (over {_MAX_INT_BITS} bits)")
    if isinstance(op, ast.Mult) and a.bit_length() + b.bit_length() > _MAX_INT_BITS:
        raise ValueError(f"result too large (over {_MAX_INT_BITS} bits)")


def calculator_tool() -> Tool:
    return Tool(name="calculator", fn=calculate, timeout_s=5.0,
                description="Evaluate an arithmetic expression exactly (integers of any practical size): "
                            "+ - * / // % **, parentheses, sqrt, log, exp, floor, ceil, abs, round, min, max, "
                            "factorial, pi, e.",
                parameters={"type": "object", "required": ["expression"],
                            "properties": {"expression": {"type": "string",
                                                          "description": "e.g. (123456789 * 987654321) % 97"}}})


# ---- user tools: schema from type hints and docstring ----------------------------------------------------

_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                               type(None): "null", list: "array", tuple: "array", dict: "object"}


def load_user_tool(spec: str, *, timeout_s: float = 30.0) -> Tool:
    """`path/to/file.py:function` -> Tool; ValueError if the file or function is missing or not describable."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not name:
        raise ValueError(f"tool {spec!r}: expected python, calculator or path/to/file.py:function")
    fn = load_function(path, name, what=f"tool {spec!r}")
    return tool_from_function(fn, timeout_s=timeout_s)


def tool_from_function(fn: Callable[..., Any], *, name: str = "", timeout_s: float = 30.0) -> Tool:
    """A Tool whose schema is read from `fn`'s signature, type hints and docstring.

    >>> def add(a: int, b: int = 0) -> int:
    ...     '''Add two integers.
    ...
    ...     Args:
    ...         a: the first term
    ...         b (int): the second term
    ...     '''
    ...     return a + b
    >>> tool_from_function(add).schema()["function"]  # doctest: +NORMALIZE_WHITESPACE
    {'name': 'add', 'description': 'Add two integers.',
     'parameters': {'type': 'object', 'properties': {'a': {'type': 'integer', 'description': 'the first term'},
                    'b': {'type': 'integer', 'description': 'the second term'}}, 'required': ['a']}}
    """
    description, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # unresolvable forward references in a user's file
        raise ValueError(f"tool {fn.__name__}: cannot read its type hints: {e}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ValueError(f"tool {fn.__name__}: parameter {p.name!r} must be a named (keyword) parameter")
        prop = type_schema(hints.get(p.name, Any))
        if p.name in arg_docs:
            prop["description"] = arg_docs[p.name]
        properties[p.name] = prop
        if p.default is p.empty:
            required.append(p.name)
    return Tool(name=name or fn.__name__, description=description, fn=fn, timeout_s=timeout_s,
                parameters={"type": "object", "properties": properties, "required": required})


def type_schema(hint: Any) -> dict[str, Any]:
    """JSON schema of a type hint: str/int/float/bool, list[X], tuple, dict, Literal, Enum, X | None, unions.

    >>> type_schema(list[int]), type_schema(int | None), type_schema(typing.Literal["a", "b"])
    ({'type': 'array', 'items': {'type': 'integer'}}, {'type': 'integer'}, {'type': 'string', 'enum': ['a', 'b']})
    """
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a) for a in args if a is not type(None)]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is typing.Literal:
        kinds = {_JSON_TYPES.get(type(a)) for a in args}
        return {"type": kinds.pop(), "enum": list(args)} if len(kinds) == 1 else {"enum": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    base = origin or hint
    if base in (list, tuple, set, frozenset) or (isinstance(base, type) and issubclass(base, Sequence)
                                                 and base is not str):
        items = args[0] if args and (base is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        return {"type": "array", **({"items": type_schema(items)} if items is not None else {})}
    if base is dict or (isinstance(base, type) and issubclass(base, Mapping)):
        return {"type": "object"}
    if base in _JSON_TYPES:
        return {"type": _JSON_TYPES[base]}
    raise ValueError(f"type {hint!r} has no JSON schema: use str, int, float, bool, list, dict, Literal or Enum")


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Yields|Raises|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {argument: description}) from a Google-style docstring (already dedented).

    The description is the text before the first section, joined into one line; without sections, the first
    paragraph.

    >>> parse_docstring("Look up a word.\\n\\nArgs:\\n    word (str): the word\\n        to look up\\n    n: how many")
    ('Look up a word.', {'word': 'the word to look up', 'n': 'how many'})
    """
    lines = doc.splitlines()
    first_section = next((i for i, line in enumerate(lines) if _SECTION.match(line.strip())), len(lines))
    head = "\n".join(lines[:first_section]).strip()
    description = " ".join(head.split("\n\n")[0].split()) if first_section == len(lines) else " ".join(head.split())
    args: dict[str, str] = {}
    in_args, base_indent, current = False, None, ""
    for line in lines[first_section:]:
        stripped = line.strip()
        if _SECTION.match(stripped):
            in_args, base_indent = stripped.split(":")[0] in ("Args", "Arguments", "Parameters"), None
            continue
        if not in_args or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        base_indent = indent if base_indent is None else base_indent
        m = _ARG_LINE.match(stripped)
        if indent == base_indent and m:
            current = m.group(1).lstrip("*")
            args[current] = m.group(3).strip()
        elif current and indent > base_indent:
            args[current] = f"{args[current]} {stripped}".strip()
    return description, args


def check_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> str:
    """'' when `arguments` fit the object `schema` (the subset this module writes), else what is wrong.

    >>> s = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    >>> check_arguments(s, {"x": 1}), check_arguments(s, {}), check_arguments(s, {"x": "1", "y": 2})
    ('', "missing required argument 'x'", "unknown argument 'y' (expected: x)")
    """
    props: Mapping[str, Any] = schema.get("properties", {})
    unknown = [k for k in arguments if k not in props]
    if unknown:
        return f"unknown argument {unknown[0]!r} (expected: {', '.join(props) or 'none'})"
    missing = [k for k in schema.get("required", []) if k not in arguments]
    if missing:
        return f"missing required argument {missing[0]!r}"
    for key, value in arguments.items():
        problem = _check_value(props[key], value)
        if problem:
            return f"argument {key!r}: {problem}"
    return ""


_PY_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                          "boolean": (bool,), "array": (list,), "object": (dict,),
                                          "null": (type(None),)}


def _check_value(schema: Mapping[str, Any], value: Any) -> str:
    if "anyOf" in schema:
        return "" if any(not _check_value(s, value) for s in schema["anyOf"]) else "matches none of the allowed types"
    if "enum" in schema and value not in schema["enum"]:
        return f"{value!r} is not one of {schema['enum']}"
    kind = schema.get("type")
    if kind is None:
        return ""
    ok = isinstance(value, _PY_TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
    if not ok:
        return f"expected {kind}, got {type(value).__name__} {json.dumps(value, default=str)[:50]}"
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            problem = _check_value(schema["items"], item)
            if problem:
                return f"item {i}: {problem}"
    return ""


# ---- building the spec's tool list -----------------------------------------------------------------------

BUILTIN_TOOLS: dict[str, Callable[[Sandbox | None], Tool]] = {
    "python": lambda sandbox: python_tool(sandbox),
    "calculator": lambda sandbox: calculator_tool(),
}


def build_toolset(names: Sequence[str], *, sandbox: Sandbox | None = None, max_output_chars: int = 4000,
                  user_tool_timeout_s: float = 30.0) -> ToolSet:
    """The spec's `tools:` list (built-in names and `file.py:fn`) as one ToolSet; ValueError on a bad entry."""
    tools: dict[str, Tool] = {}
    for entry in names:
        tool = BUILTIN_TOOLS[entry](sandbox) if entry in BUILTIN_TOOLS else load_user_tool(
            entry, timeout_s=user_tool_timeout_s)
        if tool.name in tools:
            raise ValueError(f"two tools are named {tool.name!r}: tool names must be unique")
        tools[tool.name] = tool
    return ToolSet(tools=tools, max_output_chars=max_output_chars)

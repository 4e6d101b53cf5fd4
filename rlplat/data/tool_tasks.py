"""The tool task: arithmetic on large numbers, which a tiny model cannot do in its head but can hand to a tool.

`tool_splits` writes seeded train/test records (`rlplat data tools OUT`):
  prompt      one user message, e.g. "What is 51494 * 6990?"
  answer      the exact result as digits ("359943060"); the `final_answer` reward compares the number after the
              response's last `####` with it
  expression  the arithmetic the tool is asked ("51494 * 6990")
  messages    (with `sft`) the trace an SFT warm start trains on, in the Hermes format of rlplat's ChatML template:
                system     the tools block exactly as the template renders `tools=` (so the SFT prompt is the
                           agent loop's prompt token for token; unit-tested against the template)
                user       the question
                assistant  <tool_call>\\n{"name": "calculator", "arguments": {"expression": "51494 * 6990"}}
                           \\n</tool_call>
                tool       "359943060" (what the calculator tool replies)
                assistant  "#### 359943060"
              The assistant's call is its content (the model's own markup), as the agent loop records a sampled turn.
              With tool="python" the call is {"code": "print(51494 * 6990)"} and the reply the python tool's
              "exit status 0\\nstdout:\\n359943060\\n" (rlplat.agents.tools.format_execution; unit-tested).

`corpus_lines` is text for the tiny model's BPE (`rlplat model tiny --corpus`), so the tools block and the calls
take fewer tokens. No tokenizer and no agents/ import here: the caller passes the tools' schemas.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from rlplat.data.generators import Record, unique_splits

TOOLS = ("calculator", "python")
# The tail of rlplat.models.CHATML_TEMPLATE's tools block (the line after </tools>).
CALL_HINT = 'Call a tool with <tool_call>{"name": <name>, "arguments": <json object>}</tool_call>'
_QUESTIONS = ("What is {e}?", "Compute {e}.", "Calculate {e} exactly.")


def tools_block(schemas: Sequence[dict[str, Any]]) -> str:
    """The system text rlplat's ChatML template writes for `tools=schemas` (one JSON schema per line).

    >>> print(tools_block([{"type": "function", "function": {"name": "f"}}]))
    # Tools
    <tools>
    {"type": "function", "function": {"name": "f"}}
    </tools>
    Call a tool with <tool_call>{"name": <name>, "arguments": <json object>}</tool_call>
    """
    lines = "".join("\n" + json.dumps(s, ensure_ascii=False) for s in schemas)
    return f"# Tools\n<tools>{lines}\n</tools>\n{CALL_HINT}"


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """One Hermes call as the model writes it (and as the template renders a `tool_calls` entry).

    >>> tool_call_text("calculator", {"expression": "2 * 3"})
    '<tool_call>\\n{"name": "calculator", "arguments": {"expression": "2 * 3"}}\\n</tool_call>'
    """
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"


def tool_problem(rng: random.Random) -> Record:
    """One problem: a product of a 4-5 digit and a 3-4 digit number, or a sum / difference of 6-8 digit numbers."""
    op = rng.choice("**+-")  # products twice as often: the hardest to guess
    if op == "*":
        a, b = rng.randint(1000, 99999), rng.randint(100, 9999)
        result = a * b
    else:
        a, b = rng.randint(100_000, 99_999_999), rng.randint(100_000, 99_999_999)
        a, b = max(a, b), min(a, b)
        result = a + b if op == "+" else a - b
    expression = f"{a} {op} {b}"
    question = rng.choice(_QUESTIONS).format(e=expression)
    return {"prompt": [{"role": "user", "content": question}], "answer": str(result), "expression": expression}


def call_and_reply(record: Record, tool: str) -> tuple[str, str]:
    """(the assistant's call, the tool's reply) that solve `record` with `tool` (calculator or python).

    >>> call, reply = call_and_reply({"expression": "2 * 3", "answer": "6"}, "python")
    >>> print(call)
    <tool_call>
    {"name": "python", "arguments": {"code": "print(2 * 3)"}}
    </tool_call>
    >>> reply
    'exit status 0\\nstdout:\\n6\\n'
    """
    if tool == "calculator":
        return tool_call_text(tool, {"expression": record["expression"]}), record["answer"]
    if tool == "python":
        return (tool_call_text(tool, {"code": f"print({record['expression']})"}),
                f"exit status 0\nstdout:\n{record['answer']}\n")
    raise ValueError(f"tool must be one of {', '.join(TOOLS)}, got {tool!r}")


def trace(record: Record, system: str, tool: str = "calculator") -> list[dict[str, str]]:
    """The SFT conversation of one record (module docstring); `system` is `tools_block(schemas)`."""
    call, reply = call_and_reply(record, tool)
    return [
        {"role": "system", "content": system},
        *record["prompt"],
        {"role": "assistant", "content": call},
        {"role": "tool", "tool_call_id": "call_0", "name": tool, "content": reply},
        {"role": "assistant", "content": f"#### {record['answer']}"},
    ]


def tool_splits(*, num_train: int, num_test: int, seed: int, schemas: Sequence[dict[str, Any]] = (),
                sft: bool = False, tool: str = "calculator") -> dict[str, list[Record]]:
    """Train/test records of distinct problems; with `sft`, each carries its trace (calling `tool`) in `messages`
    (then `schemas`, the tools the agent loop will offer, must be given: they are the trace's system text)."""
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {', '.join(TOOLS)}, got {tool!r}")
    if sft and not schemas:
        raise ValueError("SFT traces need the tools' schemas (their system text is the template's tools block)")
    splits = unique_splits(tool_problem, lambda r: r["expression"], num_train=num_train, num_test=num_test,
                           seed=seed)
    if sft:
        system = tools_block(schemas)
        splits = {name: [{**r, "messages": trace(r, system, tool)} for r in recs] for name, recs in splits.items()}
    return splits


def corpus_lines(records: Sequence[Record], schemas: Sequence[dict[str, Any]], tool: str = "calculator") -> list[str]:
    """BPE training text: the tools block once per record (so its words merge as often as the calls'), then each
    record's question, call, result and answer, and the ChatML role names. One document per line."""
    block = tools_block(schemas).splitlines()
    lines = ["system", "user", "assistant", "<tool_response>", "</tool_response>"]
    for r in records:
        lines += block
        call, reply = call_and_reply(r, tool)
        lines += [r["prompt"][-1]["content"], *call.splitlines(), *reply.splitlines(), f"#### {r['answer']}"]
    return lines

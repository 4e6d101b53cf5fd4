"""The `agent:` spec section: defaults change nothing, bad entries fail at load naming the key, and the builder
turns it into a loop with its tools, parser, budget and sandbox."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest

from rlplat.agents.spec import agent_budget, build_agent_loop, build_sandbox, sandbox_limits
from rlplat.agents.tool_calls import TOOL_CALL_PARSERS, parse_llama3_json
from rlplat.config import AgentConfig, ConfigError, RunConfig, SandboxConfig, build


def _spec(**sections: Any) -> RunConfig:
    return build(RunConfig, {"model": {"path": "m"}, **sections}, "")


def test_default_is_no_tools() -> None:
    assert _spec().agent == AgentConfig() and not AgentConfig().enabled


def test_agent_section_loads() -> None:
    cfg = _spec(agent={"tools": ["python", "calculator", "my_tools.py:lookup"], "tool_call_format": "llama3_json",
                       "max_turns": 3, "sandbox": {"memory_mb": 256}}).agent
    assert cfg.tools == ("python", "calculator", "my_tools.py:lookup") and cfg.enabled
    assert cfg.sandbox.memory_mb == 256 and cfg.max_turns == 3


@pytest.mark.parametrize(("sections", "error"), [
    ({"agent": {"tools": ["shell"]}}, "agent: tool 'shell': expected python, calculator or path/to/file.py:function"),
    ({"agent": {"tools": ["python", "python"]}}, "agent: tools lists a tool twice"),
    ({"agent": {"tool_call_format": "mistral"}}, "agent.tool_call_format: 'mistral' is not one of"),
    ({"agent": {"max_turns": 0}}, "agent: max_turns must be >= 1"),
    ({"agent": {"sandbox": {"cpu_s": 0}}}, "agent.sandbox: sandbox.cpu_s must be > 0"),
    ({"agent": {"max_wall": 3}}, "agent.max_wall: unknown key"),
    ({"agent": {"tools": ["calculator"]}, "env": {"task_id": "CartPole-v1"},
      "reward": {"terms": [{"name": "env_return"}]}}, "agent.tools: env.task_id is set"),
])
def test_bad_agent_sections_name_the_key(sections: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match="^" + error.replace("(", r"\(").replace(")", r"\)")):
        _spec(**sections)


def test_formats_are_the_parsers() -> None:
    hint = typing.get_type_hints(AgentConfig)["tool_call_format"]
    assert set(typing.get_args(hint)) == set(TOOL_CALL_PARSERS)


class _Tok:
    eos_token_id = 2

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        raise AssertionError("not rendered by the builder")

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        return []

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        return ""


def test_builder() -> None:
    cfg = AgentConfig(tools=("calculator",), tool_call_format="llama3_json", max_tool_calls=2, max_wall_s=5)
    loop = build_agent_loop(cfg, _Tok(), max_response_tokens=300, max_context_tokens=512)
    assert list(loop.tools.tools) == ["calculator"] and loop.parser is parse_llama3_json
    assert loop.budget == agent_budget(cfg, max_response_tokens=300, max_context_tokens=512)
    assert (loop.budget.max_total_tokens, loop.budget.max_tool_calls, loop.budget.max_wall_s) == (300, 2, 5)
    assert loop.end_token_ids == {2}
    assert build_agent_loop(AgentConfig(max_total_tokens=50), _Tok(), max_response_tokens=300).budget \
        .max_total_tokens == 50
    with pytest.raises(ValueError, match="does not exist"):
        build_agent_loop(AgentConfig(tools=("missing.py:fn",)), _Tok(), max_response_tokens=10)


def test_sandbox_from_spec_hides_the_output_dir(tmp_path: Path) -> None:
    limits = sandbox_limits(SandboxConfig(memory_mb=256, file_size_mb=2, disk_mb=8, timeout_s=3))
    assert (limits.memory_bytes, limits.file_size_bytes, limits.disk_bytes, limits.timeout_s) == (
        256 << 20, 2 << 20, 8 << 20, 3)
    with build_sandbox(SandboxConfig(max_concurrency=1), output_dir=tmp_path) as sb:
        assert sb.hidden_paths == (str(tmp_path.resolve()),)
    with build_sandbox(SandboxConfig(max_concurrency=1, hide_output_dir=False), output_dir=tmp_path) as sb:
        assert sb.hidden_paths == ()

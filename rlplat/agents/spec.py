"""The spec's `agent:` section -> an `AgentLoop` with its tools and sandbox (what the driver builds once per run)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from rlplat.agents.loop import AgentBudget, AgentLoop, ChatTokenizer
from rlplat.agents.tool_calls import get_parser
from rlplat.agents.tools import build_toolset
from rlplat.config import AgentConfig, RunConfig, SandboxConfig
from rlplat.models import max_context_length
from rlplat.sandbox import Sandbox, SandboxLimits


def agent_budget(cfg: AgentConfig, *, max_response_tokens: int, max_context_tokens: int | None = None) -> AgentBudget:
    """Per-trajectory budget; max_response_tokens (rollout.max_new_tokens) unless agent.max_total_tokens is set."""
    return AgentBudget(max_turns=cfg.max_turns, max_tool_calls=cfg.max_tool_calls,
                       max_new_tokens_per_turn=cfg.max_new_tokens_per_turn,
                       max_total_tokens=cfg.max_total_tokens or max_response_tokens, max_wall_s=cfg.max_wall_s,
                       max_context_tokens=max_context_tokens)


def sandbox_limits(cfg: SandboxConfig) -> SandboxLimits:
    return SandboxLimits(timeout_s=cfg.timeout_s, cpu_s=cfg.cpu_s, memory_bytes=cfg.memory_mb << 20,
                         file_size_bytes=cfg.file_size_mb << 20, max_processes=cfg.max_processes,
                         max_open_files=cfg.max_open_files, max_output_bytes=cfg.max_output_bytes,
                         disk_bytes=cfg.disk_mb << 20)


def build_sandbox(cfg: SandboxConfig, *, output_dir: str | os.PathLike[str] | None = None) -> Sandbox:
    """The pool for the `python` tool; the run's output dir is hidden from programs (sandbox.hide_output_dir)."""
    hidden: Sequence[str] = ()
    if cfg.hide_output_dir and output_dir is not None and os.path.isdir(output_dir):
        hidden = (os.path.abspath(output_dir),)
    return Sandbox(max_concurrency=cfg.max_concurrency, limits=sandbox_limits(cfg), hidden_paths=hidden)


def build_agent_loop(cfg: AgentConfig, tokenizer: ChatTokenizer, *, max_response_tokens: int,
                     max_context_tokens: int | None = None, sandbox: Sandbox | None = None) -> AgentLoop:
    """The loop for `cfg.tools` (ValueError naming a bad tool entry). The python tool runs in `sandbox`
    (build one with `build_sandbox`; default: the process-wide pool); the caller closes it."""
    tools = build_toolset(cfg.tools, sandbox=sandbox, max_output_chars=cfg.max_tool_output_chars,
                          user_tool_timeout_s=cfg.user_tool_timeout_s)
    return AgentLoop(tokenizer, tools, parser=get_parser(cfg.tool_call_format),
                     budget=agent_budget(cfg, max_response_tokens=max_response_tokens,
                                         max_context_tokens=max_context_tokens))


def build_agent(cfg: RunConfig, tokenizer: ChatTokenizer) -> tuple[AgentLoop, Sandbox]:
    """The run's agent loop (training rollouts and evaluation alike) and its sandbox, which the caller closes."""
    sandbox = build_sandbox(cfg.agent.sandbox, output_dir=cfg.output_dir)
    agent = build_agent_loop(cfg.agent, tokenizer, max_response_tokens=cfg.rollout.max_new_tokens,
                             max_context_tokens=max_context_length(cfg.model.path), sandbox=sandbox)
    return agent, sandbox

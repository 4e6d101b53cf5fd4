"""`agent:`: multi-turn tool calling for chat models (rlplat.agents.loop), and the code sandbox's limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxConfig:
    """The sandbox pool (rlplat.sandbox) that runs the `python` tool and the `code_tests` reward's programs.

    Each execution: a fresh process with these limits, killed with everything it started at timeout_s.
    """

    max_concurrency: int = 4  # executions at once, over all trajectories of the process
    timeout_s: float = 10.0  # wall clock per execution
    cpu_s: int = 10  # CPU seconds per execution (RLIMIT_CPU)
    memory_mb: int = 1024  # address space per execution (RLIMIT_AS)
    file_size_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    disk_mb: int = 64  # size of each private tmpfs (/tmp with the work dir, /var/tmp, /dev/shm)
    max_processes: int = 32  # processes and threads (RLIMIT_NPROC)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 65536  # kept per stream (stdout, stderr); the rest is dropped
    hide_output_dir: bool = True  # cover the run's output dir (checkpoints, logs) inside the sandbox

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "timeout_s", "cpu_s", "memory_mb", "file_size_mb", "disk_mb",
                     "max_processes", "max_open_files"):
            check(getattr(self, name) > 0, f"sandbox.{name} must be > 0")
        check(self.max_output_bytes >= 0, "sandbox.max_output_bytes must be >= 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig:
    """Tool calling in the rollout: with `tools` set, each sample is a trajectory of model turns and tool replies.

    A model turn ends at the template's end-of-turn token (EOS) or after max_new_tokens_per_turn; its tool calls
    (parsed in `tool_call_format`) run, their replies are appended as the chat template renders tool messages
    (loss mask 0), and the model goes on. Budgets per trajectory end it (finish_reason length) when spent.
    Empty `tools`: no agent loop (the default; every spec without `agent:` runs as before).
    """

    tools: tuple[str, ...] = ()  # built-ins `python`, `calculator`, or `path/to/file.py:function`
    tool_call_format: Literal["hermes", "llama3_json"] = "hermes"  # rlplat.agents.tool_calls.TOOL_CALL_PARSERS
    max_turns: int = 8  # model turns per trajectory
    max_tool_calls: int = 16  # tool calls per trajectory (malformed ones count)
    max_new_tokens_per_turn: int = 256  # one model turn ends at EOS or after this many tokens
    max_total_tokens: int | None = None  # model + tool tokens after the prompt; None: rollout.max_new_tokens
    max_wall_s: float = 300.0  # wall clock per trajectory, checked between turns (a turn is not cut)
    max_tool_output_chars: int = 4000  # a tool reply longer than this keeps its head and tail
    user_tool_timeout_s: float = 30.0  # time limit of one call of a `file.py:function` tool
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_tool_calls", "max_new_tokens_per_turn", "max_tool_output_chars"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        check(self.max_total_tokens is None or self.max_total_tokens >= 1, "max_total_tokens must be >= 1")
        check(self.max_wall_s > 0, "max_wall_s must be > 0")
        check(self.user_tool_timeout_s > 0, "user_tool_timeout_s must be > 0")
        check(len(set(self.tools)) == len(self.tools), "tools lists a tool twice")
        for entry in self.tools:
            check(entry in ("python", "calculator") or (":" in entry and entry.rpartition(":")[0].endswith(".py")),
                  f"tool {entry!r}: expected python, calculator or path/to/file.py:function")

    @property
    def enabled(self) -> bool:
        return bool(self.tools)

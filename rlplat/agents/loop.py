"""The agent loop: a chat model calls tools over several turns, one trajectory per `Sample`, all in flight at once.

A trajectory's tokens:

    prompt   = chat_template(prompt messages, tools=schemas, add_generation_prompt=True)
    response = [model turn 1][tool turn 1][model turn 2][tool turn 2] ... [model turn k]
    model turn: the tokens the engine sampled (loss mask 1, behaviour log-prob, policy version per token), up to
                the end-of-turn token (EOS, <|im_end|> for ChatML) or max_new_tokens_per_turn
    tool turn:  what the chat template adds after the model's turn: the rest of the assistant turn that the
                model did not sample (ChatML: the "\n" after <|im_end|>), the tool messages, and the next
                generation prompt (loss mask 0, log-prob 0.0, the step's policy version)

Template deltas, never re-tokenization: a trajectory keeps its conversation (`messages`) and `text`, the
conversation as rendered so far, which equals decode(prompt + response) by construction. After a model turn with
decoded text M (its end token included), the conversation gets the assistant message (content = M without the
end token, verbatim: the model's own markup, no `tool_calls` field, so the template writes back exactly what was
sampled) and the tool messages, and is rendered again with the generation prompt. That rendering must start with
`text + M`; the rest is the tool turn's text, and only it is tokenized. The model's tokens are decoded (to parse
calls and to render) but never encoded again, so the learner trains on exactly the ids the engine sampled. A
template that rewrites earlier turns when messages are appended (e.g. one that drops past reasoning) fails the
prefix check: the trajectory ends there (finish_reason stop) and `agent/template_mismatches` counts it.

A turn without tool calls is the final answer (finish_reason stop; length if it was cut by the per-turn cap).
A turn with calls (well-formed or not, `ParsedTurn.has_calls`) is answered: every call gets a tool message, a
malformed one an error text saying what was wrong (counted in `agent/malformed_calls`), a call that fails
(unknown tool, bad arguments, raised, timed out) an error text too (`agent/tool_errors`); nothing the model
writes raises. Budgets per trajectory (`AgentBudget`) end it with finish_reason length, counted in
`agent/truncated_by_budget`: model turns, tool calls (malformed included), response tokens (model + tool, and
the model's context), and wall time, which is checked between turns and bounds the tools' time (a model turn in
progress is not cut).

Rounds: every model turn and its tool turn are one round of `rlplat.turns.play_round`, the multi-turn driver
shared with EnvPool episodes; `AgentLoop.respond` is this loop's `TurnEnv` (parse, run tools, render the delta).

APRIL and crash recovery: a request the engine aborts leaves the sample PENDING, the turn's ids so far in
`partial_turn`; a turn whose tools did not finish (the step stopped, a worker died) is kept with `turn_done` and
its tools run again when it is next played (tools are expected to be pure: the sandbox starts from nothing). The
conversation (`messages`, `text`) changes only when a turn's reply is complete, so a trajectory is consistent at
every point it can be interrupted. Playing the same `Trajectory` again (next step) continues it. Wall time counts
the time a trajectory is played, not time it waits between steps. `TrajectoryGroup` is the buffer's (and a
checkpoint's) unit: plain data, JSON through rlplat.checkpoint.

Concurrency: every trajectory is its own asyncio task, so one trajectory's tools (sandbox processes, threads,
coroutines) run while others generate; a turn is one `generate` request of one sample (the engine batches
concurrent requests). A group stays on one worker (group_id mod workers: its prefix cache).

No Ray here: workers are anything with `async generate(samples, sampling, policy_version)` (the `TurnWorker`
protocol of rlplat.turns).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlplat.agents.tool_calls import ParsedTurn, ToolCallParser
from rlplat.agents.tools import ToolResult, ToolSet
from rlplat.turns import ModelTurn, Reply, TurnLimits, TurnWorker, play_round
from rlplat.types import FinishReason, Group, Sample, SamplingOptions

log = logging.getLogger(__name__)
Message = dict[str, Any]
__all__ = ["TurnWorker"]


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the loop uses."""

    eos_token_id: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def decode(self, token_ids: Any, **kwargs: Any) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentBudget:
    """Per-trajectory limits. Tokens count the response only (model + tool turns), as rollout.max_new_tokens."""

    max_turns: int  # model turns
    max_tool_calls: int  # calls answered, malformed ones included
    max_new_tokens_per_turn: int  # one model turn ends at its end token or after this many tokens
    max_total_tokens: int  # model + tool tokens after the prompt
    max_wall_s: float  # from the trajectory's first request; checked between turns
    max_context_tokens: int | None = None  # the model's context: prompt + response never exceeds it

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_tool_calls", "max_new_tokens_per_turn", "max_total_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wall_s <= 0:
            raise ValueError(f"max_wall_s must be > 0, got {self.max_wall_s}")

    @property
    def turns(self) -> TurnLimits:
        """The limits the shared round driver enforces (turns, tokens per turn, response tokens, context)."""
        return TurnLimits(max_turns=self.max_turns, max_new_tokens_per_turn=self.max_new_tokens_per_turn,
                          max_response_tokens=self.max_total_tokens, max_context_tokens=self.max_context_tokens)


@dataclass(slots=True)
class Trajectory:
    """One sample's conversation and counters.

    text == decode(prompt + response ids) with special tokens, but for the current turn's ids (`partial_turn`).
    Plain data, so an unfinished trajectory can wait in a buffer (or a checkpoint) and be played on next step.
    """

    sample: Sample
    messages: list[Message]
    text: str
    wall_s: float = 0.0  # seconds spent being played (in `play_one`), over every step that played it
    partial_turn: list[int] = field(default_factory=list)  # ids of the current model turn (already in sample)
    turn_done: bool = False  # the current model turn is complete; its tools have not answered yet
    num_turns: int = 0
    num_tool_calls: int = 0  # calls answered, malformed included
    num_tool_errors: int = 0  # well-formed calls answered with an error (unknown tool, bad arguments, raised, ...)
    num_malformed_calls: int = 0
    truncated_by: str = ""  # the budget that ended it: turns, tool_calls, tokens, wall_s ("" = none)
    template_mismatch: bool = False
    tools_s: float = 0.0  # seconds this trajectory waited on its tools

    @property
    def final_answer(self) -> str:
        """The content of the last assistant message ('' before the first turn)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")


@dataclass(slots=True, kw_only=True)
class TrajectoryGroup:
    """The trajectories of one prompt (one GRPO group), finished or not: what the APRIL buffer and a checkpoint
    hold (rlplat.agents.april)."""

    group_id: int
    prompt_id: int
    trajectories: list[Trajectory]

    @property
    def group(self) -> Group:
        """The training view: the trajectories' samples (the objects themselves)."""
        return Group(group_id=self.group_id, prompt_id=self.prompt_id, samples=[t.sample for t in self.trajectories])

    @property
    def is_complete(self) -> bool:
        return all(t.sample.is_finished for t in self.trajectories)


@dataclass(slots=True)
class AgentBatch:
    """One step's trajectories, grouped by prompt, and their metrics ("agent/...", "time/tools_s")."""

    groups: list[Group]
    trajectories: list[Trajectory]
    metrics: dict[str, float] = field(default_factory=dict)


class AgentLoop:
    """Plays tool-calling trajectories for one tokenizer, tool set, call format and budget (module docstring).

    end_token_ids: the ids that end a model turn (default: the tokenizer's EOS, <|im_end|> for ChatML models).
    """

    def __init__(self, tokenizer: ChatTokenizer, tools: ToolSet, *, parser: ToolCallParser, budget: AgentBudget,
                 end_token_ids: Collection[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.tools = tools
        self.parser = parser
        self.budget = budget
        eos = tokenizer.eos_token_id
        default = set(eos) if isinstance(eos, list | tuple | set) else {eos} if eos is not None else set()
        self.end_token_ids = frozenset(default if end_token_ids is None else end_token_ids)
        self._schemas = tools.schemas() or None  # None: templates then render no tool section at all
        self._resumed: dict[int, float] = {}  # id(trajectory) -> when this play of it began (wall-time budget)

    # ---- one step ------------------------------------------------------------------------------------------
    async def play_groups(
        self,
        prompts: Sequence[Sequence[Message]],
        workers: Sequence[TurnWorker],
        *,
        num_samples_per_prompt: int,
        first_group_id: int,
        sampling: SamplingOptions,
        policy_version: int,
        prompt_ids: Sequence[int] | None = None,
        answers: Sequence[str] | None = None,
    ) -> AgentBatch:
        """Play `num_samples_per_prompt` trajectories of every prompt (a list of chat messages) to their end.

        Group k holds prompt k's trajectories, id first_group_id + k, prompt_id prompt_ids[k] (default k); its
        samples carry answers[k]. `sampling.max_new_tokens` is ignored (the budget caps each turn). Returns the
        groups (every sample validated) and the step's metrics.
        """
        groups = self.start_groups(prompts, num_samples_per_prompt=num_samples_per_prompt,
                                   first_group_id=first_group_id, prompt_ids=prompt_ids, answers=answers)
        trajectories = [t for g in groups for t in g.trajectories]
        metrics = await self.play(trajectories, workers, sampling, policy_version)
        return AgentBatch(groups=[g.group for g in groups], trajectories=trajectories, metrics=metrics)

    def start_groups(self, prompts: Sequence[Sequence[Message]], *, num_samples_per_prompt: int, first_group_id: int,
                     prompt_ids: Sequence[int] | None = None,
                     answers: Sequence[str] | None = None) -> list[TrajectoryGroup]:
        """New trajectories: group k holds `num_samples_per_prompt` of prompt k, id first_group_id + k, prompt_id
        prompt_ids[k] (default k); its samples carry answers[k]."""
        if prompt_ids is not None and len(prompt_ids) != len(prompts):
            raise ValueError(f"{len(prompt_ids)} prompt ids for {len(prompts)} prompts")
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
        groups = []
        for k, p in enumerate(prompts):
            prompt_id = k if prompt_ids is None else int(prompt_ids[k])
            groups.append(TrajectoryGroup(group_id=first_group_id + k, prompt_id=prompt_id, trajectories=[
                self.start(p, group_id=first_group_id + k, sample_index=i, prompt_id=prompt_id,
                           answer="" if answers is None else answers[k]) for i in range(num_samples_per_prompt)]))
        return groups

    def start(self, messages: Sequence[Message], *, group_id: int, sample_index: int, prompt_id: int,
              answer: str = "") -> Trajectory:
        """A new trajectory: the prompt rendered with the tools and the generation prompt. Keys whose value is
        None are dropped (Arrow fills keys that only some messages of a file carry; templates test `is defined`)."""
        conversation = [{k: v for k, v in m.items() if v is not None} for m in messages]
        text = self._render(conversation)
        ids = list(self.tokenizer.apply_chat_template(conversation, tools=self._schemas, add_generation_prompt=True,
                                                      tokenize=True, return_dict=False))
        traj = Trajectory(sample=Sample(group_id=group_id, sample_index=sample_index, prompt_id=prompt_id,
                                        prompt_token_ids=ids, answer=answer), messages=conversation, text=text)
        if self.budget.turns.tokens_left(traj.sample) < 1:
            raise ValueError(f"prompt {prompt_id} ({len(ids)} tokens with the tools' schemas) leaves no room for a "
                             f"model turn within the context of {self.budget.max_context_tokens} tokens")
        return traj

    async def play(self, trajectories: Sequence[Trajectory], workers: Sequence[TurnWorker],
                   sampling: SamplingOptions, policy_version: int) -> dict[str, float]:
        """Play every trajectory to its end concurrently (finished ones are left as they are; unfinished ones
        continue where they stopped); returns the metrics (`agent_metrics`) over all of them."""
        if not workers:
            raise ValueError("the agent loop needs at least one worker")
        await asyncio.gather(*(self.play_one(t, workers[t.sample.group_id % len(workers)], sampling, policy_version)
                               for t in trajectories))
        for t in trajectories:
            t.sample.validate()
        return agent_metrics(trajectories)

    # ---- one trajectory ------------------------------------------------------------------------------------
    async def play_one(self, traj: Trajectory, worker: TurnWorker, sampling: SamplingOptions, version: int,
                       keep_going: Callable[[], bool] = lambda: True) -> None:
        """Rounds (model turn, tools, tool turn) until a final answer, a budget, an aborted request, or
        `keep_going()` says stop (checked before each round: APRIL's step is over). An unfinished trajectory
        stays PENDING with what it has; playing it again (next step) continues it."""
        if traj.sample.is_finished:
            return
        self._resumed[id(traj)] = resumed = time.monotonic()
        try:
            while keep_going() and await play_round([traj], [worker], self, self.budget.turns, sampling, version):
                pass
        finally:
            traj.wall_s += time.monotonic() - resumed
            del self._resumed[id(traj)]

    async def respond(self, trajectories: list[Trajectory], turns: list[ModelTurn]) -> list[Reply]:
        """The `TurnEnv` of tool trajectories: each turn's calls answered (concurrently over trajectories)."""
        return list(await asyncio.gather(*(self._respond(t, turn) for t, turn in zip(trajectories, turns,
                                                                                        strict=True))))

    async def _respond(self, traj: Trajectory, turn: ModelTurn) -> Reply:
        """No calls: the final answer. Calls: run them and reply with the template's tool turn, unless a budget
        forbids it. The conversation changes only after the last await (see the module docstring)."""
        ids = turn.token_ids
        model_text = self._decode(ids)
        ended = bool(ids) and ids[-1] in self.end_token_ids
        assistant = {"role": "assistant", "content": self._decode(ids[:-1]) if ended else model_text}
        parsed = self.parser(assistant["content"])
        if not parsed.has_calls:
            return self._end(traj, assistant, model_text, FinishReason.STOP if ended else FinishReason.LENGTH)
        over = self._over_budget_before_tools(traj, parsed, turn.is_last)
        if over:
            return self._end(traj, assistant, model_text, FinishReason.LENGTH, over)
        results = await self._run_tools(traj, parsed)
        if results is None:
            return self._end(traj, assistant, model_text, FinishReason.LENGTH, "wall_s")
        return self._tool_turn(traj, assistant, model_text, results, turn.room)

    def _over_budget_before_tools(self, traj: Trajectory, parsed: ParsedTurn, is_last: bool) -> str:
        """The budget that forbids answering this turn's calls ('' if none): no model turn would follow, the
        calls would exceed the tool-call budget, or the wall time is spent."""
        if is_last:
            return "turns"
        if traj.num_tool_calls + len(parsed.calls) + len(parsed.errors) > self.budget.max_tool_calls:
            return "tool_calls"
        if self._wall_left(traj) <= 0:
            return "wall_s"
        return ""

    async def _run_tools(self, traj: Trajectory, parsed: ParsedTurn) -> list[ToolResult] | None:
        """Every call of the turn, concurrently; None when the wall-time budget ran out first."""
        t0 = time.monotonic()
        try:
            results = await asyncio.wait_for(self.tools.call_all(parsed), timeout=self._wall_left(traj))
        except TimeoutError:
            return None
        finally:
            traj.tools_s += time.monotonic() - t0
        malformed = {e.id for e in parsed.errors}
        traj.num_tool_calls += len(results)
        traj.num_malformed_calls += len(malformed)
        traj.num_tool_errors += sum(r.is_error and r.call_id not in malformed for r in results)
        return results

    def _tool_turn(self, traj: Trajectory, assistant: Message, model_text: str, results: list[ToolResult],
                   room: int) -> Reply:
        """The template's text after the model's turn as the reply (mask 0), or the end: 'template' (the rendering
        does not extend what was sampled: stop) or 'tokens' (more than `room` ids: length)."""
        messages = traj.messages + [assistant] + [r.message() for r in results]
        rendered = self._render(messages)
        before = traj.text + model_text
        if not rendered.startswith(before):
            traj.template_mismatch = True
            log.warning("agent: the chat template's rendering does not extend the sampled text of sample %d/%d; "
                        "ending it. Sampled tail %r, rendered %r", traj.sample.group_id, traj.sample.sample_index,
                        before[-200:], rendered[max(len(before) - 200, 0):len(before) + 200])
            return self._end(traj, assistant, model_text, FinishReason.STOP)
        delta = self.tokenizer.encode(rendered[len(before):], add_special_tokens=False)
        if len(delta) > room:  # no room for the tool turn and one model token
            return self._end(traj, assistant, model_text, FinishReason.LENGTH, "tokens")
        traj.messages, traj.text = messages, rendered
        return Reply(delta)

    @staticmethod
    def _end(traj: Trajectory, assistant: Message, model_text: str, reason: FinishReason,
             truncated_by: str = "") -> Reply:
        traj.messages.append(assistant)
        traj.text += model_text
        traj.truncated_by = truncated_by
        return Reply.end(reason, truncated_by)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _render(self, messages: list[Message]) -> str:
        return str(self.tokenizer.apply_chat_template(messages, tools=self._schemas, add_generation_prompt=True,
                                                      tokenize=False))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _wall_left(self, traj: Trajectory) -> float:
        """Seconds left of max_wall_s: time spent in earlier steps plus this one's (not time waiting between)."""
        now = time.monotonic()
        return self.budget.max_wall_s - traj.wall_s - (now - self._resumed.get(id(traj), now))


def agent_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Means per trajectory (turns, tool calls, tool use), counts over the step (errors, malformed calls,
    trajectories a budget ended, template mismatches), and time/tools_s: seconds trajectories waited on tools,
    summed over trajectories (they overlap, so this can exceed the step's wall time)."""
    n = max(len(trajectories), 1)
    return {
        "agent/turns_mean": sum(t.num_turns for t in trajectories) / n,
        "agent/tool_calls_mean": sum(t.num_tool_calls for t in trajectories) / n,
        "agent/tool_use_rate": sum(t.num_tool_calls > 0 for t in trajectories) / n,
        "agent/tool_errors": float(sum(t.num_tool_errors for t in trajectories)),
        "agent/malformed_calls": float(sum(t.num_malformed_calls for t in trajectories)),
        "agent/truncated_by_budget": float(sum(bool(t.truncated_by) for t in trajectories)),
        "agent/template_mismatches": float(sum(t.template_mismatch for t in trajectories)),
        "agent/num_trajectories": float(len(trajectories)),
        "time/tools_s": sum(t.tools_s for t in trajectories),
    }

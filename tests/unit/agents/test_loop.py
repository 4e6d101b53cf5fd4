"""The agent loop with a scripted worker and the tiny BPE chat model's tokenizer: token ids are the prompt, exactly
the ids the worker sampled (mask 1) and the template's delta (mask 0); the text equals the chat template's
rendering of the whole conversation; budgets end trajectories; malformed calls are answered and counted; tools
of one trajectory run while others generate."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import pytest

from rlplat.agents.loop import AgentBudget, AgentLoop, Trajectory
from rlplat.agents.tool_calls import parse_hermes
from rlplat.agents.tools import ToolSet, build_toolset, calculator_tool, tool_from_function
from rlplat.models import IM_END, build_bpe_tokenizer, default_corpus
from rlplat.sandbox import Sandbox, SandboxLimits
from rlplat.types import FinishReason, Sample, SamplingOptions

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>' + IM_END
ANSWER = "The answer is 5." + IM_END
PROMPT = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "What is 2+3?"}]
SAMPLING = SamplingOptions(max_new_tokens=1, temperature=1.0)
BUDGET = AgentBudget(max_turns=4, max_tool_calls=4, max_new_tokens_per_turn=128, max_total_tokens=600, max_wall_s=30)


@pytest.fixture(scope="module")
def tok() -> Any:
    """The tiny BPE chat model's tokenizer (`write_tiny_model(tokenizer="bpe")` saves this one; loading it back
    encodes identically, tests/unit/test_models_bpe.py), without building the model's weights."""
    return build_bpe_tokenizer(default_corpus())


class ScriptedWorker:
    """Answers the k-th request of sample i with script[i][k] (text, encoded; or ids as they are), log-prob -0.5.
    finish: stop when the turn ends with EOS, length when the cap cut it; `abort` = the k-th turns that come back
    pending. delays: seconds to wait before replying to (sample_index, k). Records every request."""

    def __init__(self, tok: Any, script: dict[int, Sequence[str | list[int]]],
                 delays: dict[tuple[int, int], float] | None = None, abort: Sequence[int] = ()) -> None:
        self.tok, self.script, self.delays, self.abort = tok, script, delays or {}, set(abort)
        self.turns: dict[tuple[int, int], int] = {}
        self.requests: list[tuple[int, int, list[int], int]] = []  # group, index, prompt ids, cap
        self.sampled: dict[tuple[int, int], list[list[int]]] = {}
        self.on_generate: list[Any] = []

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        for s in samples:
            key = (s.group_id, s.sample_index)
            k = self.turns.get(key, 0)
            self.turns[key] = k + 1
            self.requests.append((s.group_id, s.sample_index, list(s.prompt_token_ids), sampling.max_new_tokens))
            await asyncio.sleep(self.delays.get((s.sample_index, k), 0.0))
            for hook in self.on_generate:
                hook(s)
            turn = self.script[s.sample_index][k]
            ids = turn if isinstance(turn, list) else self.tok.encode(turn, add_special_tokens=False)
            ids = ids[:sampling.max_new_tokens]
            self.sampled.setdefault(key, []).append(ids)
            finish = FinishReason.STOP if ids and ids[-1] == self.tok.eos_token_id else FinishReason.LENGTH
            s.extend(ids, [-0.5] * len(ids), policy_version, FinishReason.PENDING if k in self.abort else finish)
        return samples


def _loop(tok: Any, tools: ToolSet | None = None, **budget: Any) -> AgentLoop:
    return AgentLoop(tok, tools or ToolSet(tools={"calculator": calculator_tool()}), parser=parse_hermes,
                     budget=dataclasses.replace(BUDGET, **budget))


def _play(loop: AgentLoop, worker: ScriptedWorker, num_samples: int = 1, prompts: Any = None) -> Any:
    return asyncio.run(loop.play_groups(prompts or [PROMPT], [worker], num_samples_per_prompt=num_samples,
                                        first_group_id=7, sampling=SAMPLING, policy_version=3))


def _runs(sample: Sample) -> list[tuple[int, list[int]]]:
    """The response as (mask, ids) runs."""
    runs: list[tuple[int, list[int]]] = []
    for tid, m in zip(sample.response_token_ids, sample.loss_mask, strict=True):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(tid)
        else:
            runs.append((m, [tid]))
    return runs


def _whole_text(tok: Any, traj: Trajectory) -> str:
    return tok.decode(traj.sample.prompt_token_ids + traj.sample.response_token_ids, skip_special_tokens=False)


def test_ids_are_prompt_then_sampled_ids_and_template_delta(tok: Any) -> None:
    worker = ScriptedWorker(tok, {0: [CALL, ANSWER]})
    loop = _loop(tok)
    batch = _play(loop, worker)
    (traj,) = batch.trajectories
    s = traj.sample
    schemas = loop.tools.schemas()
    assert s.prompt_token_ids == tok.apply_chat_template(PROMPT, tools=schemas, add_generation_prompt=True,
                                                         tokenize=True, return_dict=False)
    tool_turn = "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    sampled = worker.sampled[(7, 0)]
    assert _runs(s) == [(1, sampled[0]), (0, tok.encode(tool_turn, add_special_tokens=False)), (1, sampled[1])]
    assert s.logp_behaviour == [-0.5 if m else 0.0 for m in s.loss_mask]
    assert s.policy_versions == [3] * s.num_response_tokens
    assert s.finish_reason is FinishReason.STOP and s.is_finished
    # no re-tokenization: the ids' text is the template's rendering of the whole conversation (up to the "\n"
    # the template writes after the last <|im_end|>, which no model samples)
    rendered = tok.apply_chat_template(traj.messages, tools=schemas, tokenize=False)
    assert rendered == _whole_text(tok, traj) + "\n" and traj.text == _whole_text(tok, traj)
    assert [m["role"] for m in traj.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert traj.messages[3]["content"] == "5" and traj.final_answer == "The answer is 5."
    # the second request carries the whole context so far, and the cap what the budget leaves
    assert worker.requests[1][2] == s.prompt_token_ids + s.response_token_ids[:len(sampled[0]) + len(
        tok.encode(tool_turn, add_special_tokens=False))]
    assert batch.metrics["agent/turns_mean"] == 2 and batch.metrics["agent/tool_calls_mean"] == 1
    assert batch.metrics["agent/tool_errors"] == 0 and batch.metrics["agent/malformed_calls"] == 0
    assert batch.metrics["agent/truncated_by_budget"] == 0 and batch.metrics["agent/tool_use_rate"] == 1
    assert batch.metrics["time/tools_s"] >= 0


def test_sampled_ids_are_kept_even_when_not_the_canonical_encoding(tok: Any) -> None:
    # the engine may sample a split that encoding the text would never produce (one token per character)
    def by_char(text: str) -> list[int]:
        return [i for ch in text for i in tok.encode(ch, add_special_tokens=False)] + [tok.eos_token_id]

    call, answer = by_char(CALL.removesuffix(IM_END)), by_char("5")
    assert call != tok.encode(CALL, add_special_tokens=False)
    loop = _loop(tok)
    batch = _play(loop, ScriptedWorker(tok, {0: [call, answer]}))
    (traj,) = batch.trajectories
    runs = _runs(traj.sample)
    assert [m for m, _ in runs] == [1, 0, 1] and runs[0][1] == call and runs[2][1] == answer
    rendered = tok.apply_chat_template(traj.messages, tools=loop.tools.schemas(), tokenize=False)
    assert rendered == _whole_text(tok, traj) + "\n"


def test_malformed_unknown_and_failing_calls_are_answered_and_counted(tok: Any) -> None:
    def explode(x: int) -> int:
        """Fail."""
        raise RuntimeError("boom")

    tools = ToolSet(tools={"calculator": calculator_tool(), "explode": tool_from_function(explode)})
    turn = ('<tool_call>{"name": "calculator", "arguments": </tool_call>'
            '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "explode", "arguments": {"x": 1}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>' + IM_END)
    batch = _play(_loop(tok, tools, max_new_tokens_per_turn=400), ScriptedWorker(tok, {0: [turn, ANSWER]}))
    (traj,) = batch.trajectories
    replies = [m["content"] for m in traj.messages if m["role"] == "tool"]
    assert replies[0].startswith("error: tool call 0 is not valid JSON")
    assert replies[1].startswith("error: unknown tool 'nope'")
    assert replies[2] == "error: tool explode raised RuntimeError: boom"
    assert replies[3] == "42"
    assert batch.metrics["agent/malformed_calls"] == 1 and batch.metrics["agent/tool_errors"] == 2
    assert batch.metrics["agent/tool_calls_mean"] == 4
    assert traj.sample.finish_reason is FinishReason.STOP
    assert tok.apply_chat_template(traj.messages, tools=tools.schemas(), tokenize=False) == \
        _whole_text(tok, traj) + "\n"


def _slow_tool(seconds: float, log: list[float] | None = None) -> Any:
    async def slow(x: int) -> str:
        """Sleep, then echo.

        Args:
            x: echoed
        """
        if log is not None:
            log.append(1)
        await asyncio.sleep(seconds)
        if log is not None:
            log.pop()
        return str(x)

    return tool_from_function(slow, timeout_s=10)


SLOW_CALL = '<tool_call>{"name": "slow", "arguments": {"x": 1}}</tool_call>' + IM_END


@pytest.mark.parametrize(("script", "budget", "by", "num_turns"), [
    ([CALL] * 5, {"max_turns": 2}, "turns", 2),
    ([CALL, CALL, ANSWER], {"max_tool_calls": 1}, "tool_calls", 2),
    ([CALL, ANSWER], {"max_total_tokens": 80}, "tokens", 1),
    ([SLOW_CALL, ANSWER], {"max_wall_s": 0.3}, "wall_s", 1),
])
def test_budgets_end_trajectories(tok: Any, script: list[str], budget: dict[str, Any], by: str,
                                  num_turns: int) -> None:
    tools = ToolSet(tools={"calculator": calculator_tool(), "slow": _slow_tool(5.0)})
    t0 = time.monotonic()
    batch = _play(_loop(tok, tools, **budget), ScriptedWorker(tok, {0: script}))
    (traj,) = batch.trajectories
    s = traj.sample
    assert (traj.truncated_by, traj.num_turns, s.finish_reason) == (by, num_turns, FinishReason.LENGTH)
    assert batch.metrics["agent/truncated_by_budget"] == 1
    assert s.loss_mask[-1] == 1  # never ends on template tokens that no model token follows
    assert s.num_response_tokens <= budget.get("max_total_tokens", BUDGET.max_total_tokens)
    assert time.monotonic() - t0 < 3.0  # the 5 s tool was cut by the wall-time budget
    s.validate()


def test_per_turn_cap_cuts_a_final_answer(tok: Any) -> None:
    batch = _play(_loop(tok, max_new_tokens_per_turn=3), ScriptedWorker(tok, {0: [ANSWER]}))
    (traj,) = batch.trajectories
    assert traj.sample.num_response_tokens == 3 and traj.sample.finish_reason is FinishReason.LENGTH


def test_tools_run_while_other_trajectories_generate(tok: Any) -> None:
    in_flight: list[float] = []
    tools = ToolSet(tools={"slow": _slow_tool(0.4, in_flight)})
    seen_during_tools: list[int] = []
    # samples 0-3 call the slow tool; sample 4 generates its (late) answer while their tools run
    worker = ScriptedWorker(tok, {**{i: [SLOW_CALL, ANSWER] for i in range(4)}, 4: [ANSWER]}, delays={(4, 0): 0.2})
    worker.on_generate.append(lambda s: seen_during_tools.append(len(in_flight)) if s.sample_index == 4 else None)
    t0 = time.monotonic()
    batch = _play(_loop(tok, tools), worker, num_samples=5)
    wall = time.monotonic() - t0
    assert seen_during_tools == [4]  # all four tool calls were running when sample 4's turn came back
    assert wall < 1.2, wall  # four 0.4 s tools in sequence would take 1.6 s
    assert batch.metrics["time/tools_s"] >= 4 * 0.4 - 0.05
    assert batch.metrics["agent/tool_use_rate"] == pytest.approx(0.8)


def test_groups_ids_and_answers(tok: Any) -> None:
    worker = ScriptedWorker(tok, {i: [ANSWER] for i in range(3)})
    prompts = [PROMPT, [{"role": "user", "content": "Hi", "name": None}]]  # None: a key Arrow filled in
    loop = _loop(tok)
    batch = asyncio.run(loop.play_groups(prompts, [worker, worker], num_samples_per_prompt=3,
                                               first_group_id=10, sampling=SAMPLING, policy_version=0,
                                               prompt_ids=[100, 200], answers=["5", "hello"]))
    assert [(g.group_id, g.prompt_id, len(g.samples)) for g in batch.groups] == [(10, 100, 3), (11, 200, 3)]
    assert [s.answer for g in batch.groups for s in g.samples] == ["5"] * 3 + ["hello"] * 3
    assert [s.sample_index for s in batch.groups[1].samples] == [0, 1, 2]
    for g in batch.groups:
        g.validate()
        assert g.is_complete
    assert batch.trajectories[3].messages[0] == {"role": "user", "content": "Hi"}
    asyncio.run(loop.play(batch.trajectories, [worker], SAMPLING, 1))  # finished ones are left as they are
    assert len(worker.requests) == 6


def test_template_mismatch_ends_the_trajectory_without_a_crash(tok: Any) -> None:
    # the model ends its turn with <|endoftext|> (declared an end token) where the template writes <|im_end|>
    call = tok.encode(CALL.removesuffix(IM_END), add_special_tokens=False) + [tok.pad_token_id]
    loop = AgentLoop(tok, ToolSet(tools={"calculator": calculator_tool()}), parser=parse_hermes, budget=BUDGET,
                     end_token_ids={tok.eos_token_id, tok.pad_token_id})
    batch = _play(loop, ScriptedWorker(tok, {0: [call, ANSWER]}))
    (traj,) = batch.trajectories
    assert traj.template_mismatch and batch.metrics["agent/template_mismatches"] == 1
    assert traj.sample.response_token_ids == call and traj.sample.loss_mask == [1] * len(call)
    assert traj.text == _whole_text(tok, traj)


def test_an_aborted_turn_continues_when_played_again(tok: Any) -> None:
    call, answer = (tok.encode(x, add_special_tokens=False) for x in (CALL, ANSWER))
    worker = ScriptedWorker(tok, {0: [call[:10], call[10:], answer[:3], answer[3:]]}, abort=[0, 2])
    loop = _loop(tok)
    batch = _play(loop, worker)  # policy version 3
    (traj,) = batch.trajectories
    s = traj.sample
    assert s.finish_reason is FinishReason.PENDING and not batch.groups[0].is_complete
    assert (traj.partial_turn, traj.num_turns, s.response_token_ids) == (call[:10], 0, call[:10])
    asyncio.run(loop.play([traj], [worker], SAMPLING, 4))  # next step: the call completes, the answer is aborted
    assert s.finish_reason is FinishReason.PENDING and traj.num_turns == 1 and traj.partial_turn == answer[:3]
    assert worker.requests[1][2:] == (s.prompt_token_ids + call[:10], BUDGET.max_new_tokens_per_turn - 10)
    asyncio.run(loop.play([traj], [worker], SAMPLING, 5))
    runs = _runs(s)
    assert [m for m, _ in runs] == [1, 0, 1] and runs[0][1] == call and runs[2][1] == answer
    assert s.finish_reason is FinishReason.STOP and traj.num_turns == 2 and traj.partial_turn == []
    assert s.policy_versions[:len(call) + 1] == [3] * 10 + [4] * (len(call) - 10) + [4]  # the tool turn: step 4
    assert s.policy_versions[-len(answer):] == [4] * 3 + [5] * (len(answer) - 3)
    assert tok.apply_chat_template(traj.messages, tools=loop.tools.schemas(), tokenize=False) == \
        _whole_text(tok, traj) + "\n"
    assert traj.wall_s > 0
    s.validate()


def test_python_tool_in_the_sandbox_and_a_hostile_program(tok: Any) -> None:
    turn = ('<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>'
            '<tool_call>{"name": "python", "arguments": {"code": "while True:\\n    pass"}}</tool_call>' + IM_END)
    with Sandbox(max_concurrency=2, limits=SandboxLimits(timeout_s=1.0, cpu_s=1)) as sb:
        tools = build_toolset(["python", "calculator"], sandbox=sb)
        batch = _play(_loop(tok, tools, max_new_tokens_per_turn=400), ScriptedWorker(tok, {0: [turn, ANSWER]}))
    (traj,) = batch.trajectories
    assert traj.messages[3]["content"] == "exit status 0\nstdout:\n42\n"
    assert traj.messages[4]["content"].startswith("killed")  # the endless loop: killed, the trajectory goes on
    assert traj.sample.finish_reason is FinishReason.STOP and batch.metrics["agent/tool_errors"] == 0
    assert tok.apply_chat_template(traj.messages, tools=tools.schemas(), tokenize=False) == \
        _whole_text(tok, traj) + "\n"


def test_prompt_longer_than_the_context_is_an_error(tok: Any) -> None:
    with pytest.raises(ValueError, match="leaves no room"):
        _loop(tok, max_context_tokens=10).start(PROMPT, group_id=0, sample_index=0, prompt_id=0)


def test_template_renders_tools_and_tool_messages(tok: Any) -> None:
    schemas = [calculator_tool().schema()]
    messages = [*PROMPT, {"role": "assistant", "content": "",
                          "tool_calls": [{"type": "function", "function": {"name": "calculator",
                                                                             "arguments": {"expression": "2+3"}}}]},
                {"role": "tool", "name": "calculator", "content": "5"}, {"role": "tool", "content": "6"}]
    text = tok.apply_chat_template(messages, tools=schemas, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nUse the tools.\n\n# Tools\n<tools>\n{\"type\": \"function\"")
    assert text.count("<|im_start|>system") == 1
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n'
            '</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n6\n'
            '</tool_response><|im_end|>\n<|im_start|>assistant\n') in text
    assert parse_hermes('<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n</tool_call>'
                        ).calls[0].arguments == {"expression": "2+3"}
    # no tools, no tool messages: plain ChatML as before
    assert tok.apply_chat_template(PROMPT, tokenize=False) == \
        "<|im_start|>system\nUse the tools.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"


"""APRIL for tool-calling trajectories with scripted workers and the tiny BPE chat tokenizer: a step stops at N
complete groups and aborts the rest, whose trajectories continue next step (also after a JSON checkpoint round
trip) with their ids, masks, log-probs and both policy versions; a worker that fails mid-step leaves every
trajectory consistent (a turn whose tools were cut keeps `turn_done`) and a retry completes it exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from rlplat import checkpoint as ck
from rlplat.agents.april import AgentAprilManager
from rlplat.agents.loop import AgentLoop, TrajectoryGroup
from rlplat.agents.tool_calls import parse_hermes
from rlplat.agents.tools import ToolSet, calculator_tool
from rlplat.types import FinishReason, Sample
from tests.unit.agents.test_loop import ANSWER, BUDGET, CALL, PROMPT, SAMPLING, SLOW_CALL, _runs, _slow_tool, tok

__all__ = ["tok"]  # the tokenizer fixture


@dataclass(frozen=True)
class Hang:
    """A turn that generates nothing until the worker is aborted, then returns the first `n` ids of `text`."""

    text: str
    n: int


FAIL = "FAIL"  # a turn whose request fails (a dead actor)


class Worker:
    """Answers the k-th request of (group, sample) with script[(group, sample)][k] after delays.get(key, 0) s;
    log-prob -0.5; stop when the turn ends with EOS. Records requests and aborts."""

    def __init__(self, tok: Any, script: dict[tuple[int, int], Sequence[str | Hang]],
                 delays: dict[tuple[int, int], float] | None = None) -> None:
        self.tok, self.script, self.delays = tok, script, delays or {}
        self.turns: dict[tuple[int, int], int] = {}
        self.requests: list[tuple[int, int, list[int]]] = []
        self.num_aborts = 0
        self._aborted: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._aborted is None:
            self._aborted = asyncio.Event()
        return self._aborted

    async def generate(self, samples: list[Sample], sampling: Any, policy_version: int) -> list[Sample]:
        for s in samples:
            key = (s.group_id, s.sample_index)
            k = self.turns.get(key, 0)
            self.turns[key] = k + 1
            self.requests.append((*key, list(s.prompt_token_ids)))
            await asyncio.sleep(self.delays.get(key, 0.0))
            turn = self.script[key][k]
            if turn == FAIL:
                raise RuntimeError("the rollout actor died")
            if isinstance(turn, Hang):
                await self._event().wait()
                ids = self.tok.encode(turn.text, add_special_tokens=False)[:turn.n]
                s.extend(ids, [-0.5] * len(ids), policy_version, FinishReason.PENDING)
                continue
            ids = self.tok.encode(turn, add_special_tokens=False)[:sampling.max_new_tokens]
            finish = FinishReason.STOP if ids and ids[-1] == self.tok.eos_token_id else FinishReason.LENGTH
            s.extend(ids, [-0.5] * len(ids), policy_version, finish)
        return samples

    async def abort(self) -> int:
        self.num_aborts += 1
        self._event().set()
        return 1


def _loop(tok: Any, tools: ToolSet | None = None) -> AgentLoop:
    return AgentLoop(tok, tools or ToolSet(tools={"calculator": calculator_tool()}), parser=parse_hermes,
                     budget=BUDGET)


def _fresh(loop: AgentLoop, first_group_id: int, group_size: int = 2) -> Any:
    calls: list[int] = []

    def fresh(n: int) -> list[TrajectoryGroup]:
        calls.append(n)
        return loop.start_groups([PROMPT] * n, num_samples_per_prompt=group_size, first_group_id=first_group_id)

    fresh.calls = calls  # type: ignore[attr-defined]
    return fresh


def _collect(mgr: AgentAprilManager, worker: Worker, fresh: Any, version: int) -> Any:
    return asyncio.run(mgr.collect([worker], fresh, num_groups=1, sampling=SAMPLING, policy_version=version))


def test_unfinished_trajectories_continue_after_a_checkpoint(tok: Any) -> None:
    loop = _loop(tok)
    answer = tok.encode(ANSWER, add_special_tokens=False)
    call = tok.encode(CALL, add_special_tokens=False)
    # step 1 (version 1): group 10 answers at once; group 11's sample 0 calls the tool, then is cut 3 tokens into
    # its answer when group 10 completes the step
    w1 = Worker(tok, {(10, 0): [ANSWER], (10, 1): [ANSWER], (11, 0): [CALL, Hang(ANSWER, 3)], (11, 1): [ANSWER]},
                delays={(10, 0): 0.05, (10, 1): 0.05})
    mgr = AgentAprilManager(loop, over_provision=2.0)
    b1 = _collect(mgr, w1, _fresh(loop, 10), version=1)
    assert [g.group_id for g in b1.groups] == [10] and w1.num_aborts == 1
    (g11,) = mgr.buffer
    t = g11.trajectories[0]
    assert t.sample.finish_reason is FinishReason.PENDING and t.partial_turn == answer[:3] and not t.turn_done
    assert g11.trajectories[1].sample.is_finished
    assert b1.metrics["april/trajectories_buffered"] == 1 and b1.metrics["april/num_groups_interrupted"] == 1
    assert mgr.ledger.balanced and mgr.ledger.buffered == g11.group.num_response_tokens

    # checkpoint: JSON through the checkpoint codec, loaded into a fresh manager (a resumed run)
    saved = json.loads(json.dumps(ck.to_json(mgr.state())))
    restored = ck.from_json(saved)
    assert isinstance(restored[0], TrajectoryGroup) and restored[0].trajectories[0].messages == t.messages
    mgr2 = AgentAprilManager(loop, over_provision=2.0)
    mgr2.load_state(restored, mgr.ledger)

    # step 2 (version 2): the cut answer continues; the fresh group 20 is slower
    w2 = Worker(tok, {(11, 0): [tok.decode(answer[3:])], (20, 0): [ANSWER], (20, 1): [ANSWER]},
                delays={(20, 0): 0.2, (20, 1): 0.2})
    fresh2 = _fresh(loop, 20)
    b2 = _collect(mgr2, w2, fresh2, version=2)
    assert [g.group_id for g in b2.groups] == [11] and fresh2.calls == [1]
    s = b2.groups[0].samples[0]
    assert w2.requests[0][2] == s.prompt_token_ids + s.response_token_ids[:len(s.response_token_ids)
                                                                          - len(answer) + 3]
    runs = _runs(s)
    assert [m for m, _ in runs] == [1, 0, 1] and runs[0][1] == call and runs[2][1] == answer
    assert s.policy_versions[-len(answer):] == [1] * 3 + [2] * (len(answer) - 3)
    assert s.logp_behaviour == [-0.5 if m else 0.0 for m in s.loss_mask]
    assert s.finish_reason is FinishReason.STOP
    traj = b2.trajectories[0]
    assert traj.num_turns == 2 and traj.num_tool_calls == 1 and traj.final_answer == "The answer is 5."
    assert traj.text == tok.decode(s.prompt_token_ids + s.response_token_ids, skip_special_tokens=False)
    assert b2.metrics["april/trajectories_continued"] == 1 and b2.metrics["april/num_samples_multi_version"] == 1
    assert mgr2.ledger.balanced


def test_a_worker_failure_mid_step_keeps_trajectories_consistent(tok: Any) -> None:
    loop = _loop(tok, ToolSet(tools={"slow": _slow_tool(0.5)}))
    slow_call = tok.encode(SLOW_CALL, add_special_tokens=False)
    mgr = AgentAprilManager(loop, over_provision=1.0)
    # sample 0's model turn is done and its tool runs when sample 1's request fails
    bad = Worker(tok, {(10, 0): [SLOW_CALL], (10, 1): [FAIL]}, delays={(10, 1): 0.1})
    with pytest.raises(RuntimeError, match="actor died"):
        _collect(mgr, bad, _fresh(loop, 10), version=1)
    (g,) = mgr.buffer
    t0, t1 = g.trajectories
    assert t0.turn_done and t0.partial_turn == slow_call and t0.sample.response_token_ids == slow_call
    assert [m["role"] for m in t0.messages] == ["system", "user"] and t0.num_tool_calls == 0
    assert t1.sample.num_response_tokens == 0 and not t1.turn_done
    assert mgr.ledger.balanced and mgr.ledger.buffered == len(slow_call)

    good = Worker(tok, {(10, 0): [ANSWER], (10, 1): [ANSWER]})  # the retry: the tool runs again, no regeneration
    batch = _collect(mgr, good, _fresh(loop, 99), version=1)
    assert [g.group_id for g in batch.groups] == [10] and len(good.requests) == 2
    s = batch.groups[0].samples[0]
    runs = _runs(s)
    assert [m for m, _ in runs] == [1, 0, 1] and runs[0][1] == slow_call
    assert batch.trajectories[0].num_tool_calls == 1 and batch.trajectories[0].num_turns == 2
    assert mgr.ledger.balanced and mgr.ledger.trained == batch.groups[0].num_response_tokens


def test_complete_groups_in_the_buffer_serve_the_next_step_without_playing(tok: Any) -> None:
    loop = _loop(tok)
    w = Worker(tok, {(g, i): [ANSWER] for g in (10, 11) for i in (0, 1)})
    mgr = AgentAprilManager(loop, over_provision=2.0)
    b1 = _collect(mgr, w, _fresh(loop, 10), version=1)
    assert len(b1.groups) == 1 and len(mgr.buffer) == 1 and mgr.buffer[0].is_complete
    fresh = _fresh(loop, 20)
    b2 = _collect(mgr, w, fresh, version=2)
    assert fresh.calls == [] and len(w.requests) == 4 and b2.metrics["april/num_groups_from_buffer"] == 1
    assert {b1.groups[0].group_id, b2.groups[0].group_id} == {10, 11} and not mgr.buffer

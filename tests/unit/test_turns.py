"""The shared multi-turn round driver (rlplat.turns.play_round) with a fake worker and a fake env: what is appended
with which mask, log-prob and version, what the budgets leave each turn and reply, and the turn state an
interrupted round leaves (hand-computed token counts)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from rlplat.turns import ModelTurn, Reply, TurnLimits, play_round
from rlplat.types import FinishReason, Sample, SamplingOptions

EOS = 1
SAMPLING = SamplingOptions(max_new_tokens=999, temperature=1.0)


@dataclass
class Traj:
    sample: Sample
    num_turns: int = 0
    partial_turn: list[int] = field(default_factory=list)
    turn_done: bool = False


class Worker:
    """Samples [5, 6, EOS] cut at the cap (log-prob -0.5); `fail` raises instead."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.caps = fail, []

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        self.caps.append(sampling.max_new_tokens)
        if self.fail:
            raise RuntimeError("worker died")
        for s in samples:
            ids = [5, 6, EOS][:sampling.max_new_tokens]
            s.extend(ids, [-0.5] * len(ids), policy_version,
                     FinishReason.STOP if ids[-1] == EOS else FinishReason.LENGTH)
        return samples


class Env:
    """Replies [9, 9] to each turn and ends the trajectory (stop) at its third turn, or when the reply won't fit."""

    def __init__(self) -> None:
        self.turns: list[ModelTurn] = []

    async def respond(self, trajectories: list[Traj], turns: list[ModelTurn]) -> list[Reply]:
        self.turns += turns
        return [Reply.end(FinishReason.STOP) if t.num_turns == 3 else
                Reply.end(FinishReason.LENGTH, "tokens") if turn.room < 2 else Reply([9, 9])
                for t, turn in zip(trajectories, turns, strict=True)]


def _traj() -> Traj:
    return Traj(Sample(group_id=0, sample_index=0, prompt_id=0, prompt_token_ids=[2, 3]))


def _play(traj: Traj, worker: Worker, env: Env, limits: TurnLimits, version: int = 7) -> None:
    live = [traj]
    while live:
        live = asyncio.run(play_round(live, [worker], env, limits, SAMPLING, version))


def test_model_and_env_turns_interleave_with_their_masks() -> None:
    t, env = _traj(), Env()
    _play(t, Worker(), env, TurnLimits(max_turns=8, max_new_tokens_per_turn=4, max_response_tokens=100))
    s = t.sample
    assert s.response_token_ids == [5, 6, 1, 9, 9, 5, 6, 1, 9, 9, 5, 6, 1]
    assert s.loss_mask == [1, 1, 1, 0, 0] * 2 + [1, 1, 1]
    assert s.logp_behaviour == [-0.5 if m else 0.0 for m in s.loss_mask] and set(s.policy_versions) == {7}
    assert s.finish_reason is FinishReason.STOP and t.num_turns == 3 and t.partial_turn == [] and not t.turn_done
    assert [turn.room for turn in env.turns] == [96, 91, 86]  # 100 - tokens so far - one model token
    assert [turn.is_last for turn in env.turns] == [False] * 3


def test_budgets_cap_the_turn_and_the_reply() -> None:
    t, env, worker = _traj(), Env(), Worker()
    _play(t, worker, env, TurnLimits(max_turns=8, max_new_tokens_per_turn=4, max_response_tokens=7))
    # 3 model + 2 env tokens leave 2: the second turn is cut at 2, and no reply fits after it
    assert worker.caps == [4, 2] and t.sample.response_token_ids == [5, 6, 1, 9, 9, 5, 6]
    assert [turn.room for turn in env.turns] == [3, -1] and t.sample.finish_reason is FinishReason.LENGTH
    t, env = _traj(), Env()
    _play(t, Worker(), env, TurnLimits(max_turns=2, max_new_tokens_per_turn=4, max_response_tokens=100,
                                       max_context_tokens=9))
    # the context leaves 9 - 2 prompt tokens: the same cut; the second turn is the last one max_turns allows
    assert [turn.is_last for turn in env.turns] == [False, True]
    assert t.sample.response_token_ids == [5, 6, 1, 9, 9, 5, 6]


def test_a_failed_request_appends_nothing_and_a_done_turn_is_not_generated_again() -> None:
    t = _traj()
    limits = TurnLimits(max_turns=8, max_new_tokens_per_turn=4, max_response_tokens=100)
    with pytest.raises(RuntimeError, match="worker died"):
        asyncio.run(play_round([t], [Worker(fail=True)], Env(), limits, SAMPLING, 1))
    assert t.sample.num_response_tokens == 0 and t.num_turns == 0 and not t.turn_done
    t.sample.extend([5, 6, 1], [-0.5] * 3, 1, FinishReason.PENDING)  # a turn whose reply was interrupted
    t.partial_turn, t.turn_done, t.num_turns = [5, 6, 1], True, 1
    worker, env = Worker(), Env()
    live = asyncio.run(play_round([t], [worker], env, limits, SAMPLING, 2))
    assert worker.caps == [] and env.turns[0].token_ids == [5, 6, 1] and live == [t]
    assert t.sample.response_token_ids == [5, 6, 1, 9, 9] and t.sample.policy_versions == [1, 1, 1, 2, 2]
    assert not t.turn_done and t.partial_turn == []

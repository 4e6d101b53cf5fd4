"""The multi-turn interface shared by EnvPool episodes (rlplat.envs) and tool-calling trajectories (rlplat.agents).

A multi-turn sample's response interleaves model turns (loss mask 1: the ids the engine sampled, with their
behaviour log-probs and policy versions) and non-model turns (loss mask 0, log-prob 0.0): an env's next
observation, or the chat template's tool messages. One round of a trajectory (`play_round`):

    1. model turn: a request carrying the context so far (prompt + response) as its prompt, capped at
       min(max_new_tokens_per_turn, the response and context budgets); the sampled ids are appended as they are;
    2. `TurnEnv.respond`: given the trajectory and the model turn just sampled, the env answers with the next
       non-model turn's token ids, or ends the trajectory (a finish reason, and which budget ended it, if any);
    3. the reply's ids are appended with mask 0 and the policy version of the round.

`play_round` is the one place where turns are generated, appended and budgeted. It plays many trajectories at
once: requests are batched per worker and token cap (a group stays on one worker, group_id mod workers: its
prefix cache) and `respond` gets every trajectory whose turn is done in one call, so EnvPool steps all its envs
together; the agent loop calls it with one trajectory per asyncio task, so one trajectory's tools run while
others generate.

Interrupted rounds continue (APRIL and crash recovery): a request the engine aborted leaves the turn's ids so far
in `partial_turn` (the sample PENDING; the next request carries them and they count in the turn's cap). A turn
whose reply never came (the step stopped or a worker died while the env or the tools ran) is kept with
`turn_done` set: the next round asks for the reply without generating again. Both fields are plain data, so an
unfinished trajectory waits in a buffer or a checkpoint and is played on next step.

No Ray here: workers are anything with `async generate(samples, sampling, policy_version)` (a `RolloutEngine`,
a `RemoteRolloutWorker`, or a test fake).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from rlplat.types import (
    FinishReason,
    Group,
    Sample,
    SamplingOptions,
    TokenLedger,
    count_policy_versions,
    off_policy_token_fraction,
)


class TurnWorker(Protocol):
    """Generates one model turn for each sample: extends it in place, with per-token log-probs and version."""

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]: ...


class Codec(Protocol):
    """The model's tokenizer: text <-> token ids (no special tokens added; decode skips them)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class Turns(Protocol):
    """What `play_round` needs of a trajectory record (`Episode`, `Trajectory`): its sample and turn state."""

    sample: Sample
    num_turns: int  # model turns completed
    partial_turn: list[int]  # ids of the current model turn (already in the sample)
    turn_done: bool  # the current model turn is complete and waits for its reply


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnLimits:
    """Per-trajectory limits every multi-turn sample shares. Tokens count the response (model + non-model)."""

    max_turns: int  # model turns per trajectory
    max_new_tokens_per_turn: int  # one model turn ends at its end token or after this many tokens
    max_response_tokens: int  # model + non-model tokens after the prompt
    max_context_tokens: int | None = None  # the model's context: prompt + response never exceeds it

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_new_tokens_per_turn", "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def tokens_left(self, sample: Sample) -> int:
        """Response tokens the sample may still take (model and non-model), within the context too."""
        left = self.max_response_tokens - sample.num_response_tokens
        if self.max_context_tokens is not None:
            left = min(left, self.max_context_tokens - len(sample.prompt_token_ids) - sample.num_response_tokens)
        return left


@dataclass(frozen=True, slots=True)
class ModelTurn:
    """The model turn just sampled, as `respond` sees it."""

    token_ids: list[int]  # the turn's sampled ids, its end token included (if it reached one)
    room: int  # most ids the reply may have: one model token must still fit after it
    is_last: bool  # the turn budget allows no further model turn


@dataclass(frozen=True, slots=True)
class Reply:
    """The next non-model turn (`token_ids`, loss mask 0), or the end of the trajectory (`finish` set)."""

    token_ids: list[int]
    finish: FinishReason | None = None
    truncated_by: str = ""  # the budget that ended it ("" = none): turns, tokens, or the env's own (tool_calls, ...)

    @classmethod
    def end(cls, finish: FinishReason, truncated_by: str = "") -> Reply:
        return cls([], finish, truncated_by)


T = TypeVar("T", bound=Turns)


class TurnEnv(Protocol[T]):
    """The non-model side of a trajectory: an EnvPool text env, or the tools and chat template of an agent."""

    async def respond(self, trajectories: list[T], turns: list[ModelTurn]) -> list[Reply]:
        """One reply per trajectory, for the model turn each just sampled. A reply's ids never exceed turn.room
        (end the trajectory instead); an ending reply sets what the env records about the end (its reward)."""
        ...


async def play_round(live: Sequence[T], workers: Sequence[TurnWorker], env: TurnEnv[T], limits: TurnLimits,
                     sampling: SamplingOptions, version: int) -> list[T]:
    """One round of every live trajectory: a model turn each (unless one waits for its reply), then one
    `respond` for all of them, then their replies appended. Returns those that go on; a trajectory whose request
    the engine aborted is left PENDING and not returned. `sampling.max_new_tokens` is ignored (limits cap turns).
    """
    if not workers:
        raise ValueError("play_round needs at least one worker")
    await _model_turns([t for t in live if not t.turn_done], workers, limits, sampling, version)
    done = [t for t in live if t.turn_done]
    if not done:
        return []
    turns = [ModelTurn(t.partial_turn, limits.tokens_left(t.sample) - 1, t.num_turns >= limits.max_turns)
             for t in done]
    replies = await env.respond(done, turns)
    if len(replies) != len(done):
        raise RuntimeError(f"env answered {len(replies)} replies for {len(done)} turns")
    still_live = []
    for t, reply in zip(done, replies, strict=True):
        t.partial_turn, t.turn_done = [], False
        if reply.finish is not None:
            t.sample.finish_reason = reply.finish
            continue
        append_non_model_tokens(t.sample, reply.token_ids, version)
        still_live.append(t)
    return still_live


async def _model_turns(live: Sequence[Turns], workers: Sequence[TurnWorker], limits: TurnLimits,
                       sampling: SamplingOptions, version: int) -> None:
    """Generate one turn of every trajectory into its sample (mask 1). Nothing is appended unless every request
    came back (a worker that fails leaves every trajectory as it was). An aborted request leaves its ids in
    `partial_turn`; a turn that ends (end token, or the cap) sets `turn_done` and counts in num_turns."""
    calls: dict[tuple[int, int], list[tuple[Turns, Sample]]] = {}
    for t in live:
        s = t.sample
        cap = max(min(limits.max_new_tokens_per_turn - len(t.partial_turn), limits.tokens_left(s)), 0)
        request = Sample(group_id=s.group_id, sample_index=s.sample_index, prompt_id=s.prompt_id,
                         prompt_token_ids=s.prompt_token_ids + s.response_token_ids)
        calls.setdefault((s.group_id % len(workers), cap), []).append((t, request))
    batches = list(calls.items())
    outs = await asyncio.gather(*(workers[w].generate([r for _, r in pairs], replace(sampling, max_new_tokens=cap),
                                                      version) for (w, cap), pairs in batches))
    for ((_, cap), pairs), out in zip(batches, outs, strict=True):
        if len(out) != len(pairs):
            raise RuntimeError(f"worker returned {len(out)} samples for {len(pairs)} requests")
        by_key = {(r.group_id, r.sample_index): r for r in out}
        for t, request in pairs:
            got = by_key[(request.group_id, request.sample_index)]
            ids = got.response_token_ids[:cap]  # a worker must not exceed the cap; never let it break the budget
            t.sample.extend(ids, got.logp_behaviour[:len(ids)], got.policy_versions[:len(ids)], FinishReason.PENDING)
            t.partial_turn = t.partial_turn + ids
            if got.finish_reason is not FinishReason.PENDING:
                t.turn_done = True
                t.num_turns += 1


def append_non_model_tokens(sample: Sample, token_ids: list[int], version: int) -> None:
    """Env or tool tokens: loss mask 0, log-prob 0.0 (`Sample.extend` is for model tokens only)."""
    sample.response_token_ids.extend(token_ids)
    sample.logp_behaviour.extend([0.0] * len(token_ids))
    sample.policy_versions.extend([version] * len(token_ids))
    sample.loss_mask.extend([0] * len(token_ids))


# ------------------------------------------------------------------------------------------ APRIL over trajectories
class TurnGroup(Protocol):
    """A group of multi-turn trajectories (`EpisodeGroup`, `TrajectoryGroup`), finished or not."""

    @property
    def group(self) -> Group: ...

    @property
    def is_complete(self) -> bool: ...


G = TypeVar("G", bound=TurnGroup)


@dataclass(slots=True)
class AprilStep(Generic[G]):
    """One step's groups as `TurnGroupBuffer.begin` issues them; the manager adds fresh groups to `running` and
    moves groups to `complete` in the order they complete."""

    taken: list[G]  # from the buffer, in FIFO order
    complete: list[G]
    running: list[G]
    num_dropped: int  # stale groups dropped at the start of the step
    tokens_before: int  # response tokens the taken groups held


class TurnGroupBuffer(Generic[G]):
    """APRIL's buffer of multi-turn groups and its token ledger (ALGORITHMS.md section 1), shared by env episodes
    and tool trajectories. A step: `begin` drops groups older than `max_age_in_versions` (0 = never) and takes up
    to N' groups (FIFO); the manager plays them (and fresh ones) until N are complete; `finish` returns the first
    N complete groups and puts the rest back: complete extras first, then interrupted groups that came from the
    buffer (FIFO order kept), interrupted fresh groups at the back. `abandon` (a worker failed) puts every issued
    group back at the front as it stands, so the caller may retry the step. The ledger keeps
    generated == trained + buffered + dropped at every step boundary."""

    def __init__(self, max_age_in_versions: int = 0) -> None:
        if max_age_in_versions < 0:
            raise ValueError(f"max_age_in_versions must be >= 0, got {max_age_in_versions}")
        self.max_age_in_versions = max_age_in_versions
        self.groups: deque[G] = deque()
        self.ledger = TokenLedger()

    @property
    def num_tokens(self) -> int:
        return sum(g.group.num_response_tokens for g in self.groups)

    def state(self) -> list[G]:
        """The buffer (deep copy, serving order): what a checkpoint stores."""
        return copy.deepcopy(list(self.groups))

    def load_state(self, groups: list[G], ledger: TokenLedger | None = None) -> None:
        """Restore from `state()`. Without a saved `ledger`, its tokens count as generated and buffered."""
        for g in groups:
            g.group.validate()
        self.groups = deque(copy.deepcopy(groups))
        tokens = self.num_tokens
        self.ledger = (TokenLedger(generated=tokens, buffered=tokens) if ledger is None
                       else dataclasses.replace(ledger, buffered=tokens))
        self.ledger.check()

    def begin(self, num_issue: int, policy_version: int) -> AprilStep[G]:
        dropped = self._drop_stale(policy_version)
        taken = [self.groups.popleft() for _ in range(min(num_issue, len(self.groups)))]
        return AprilStep(taken=taken, complete=[g for g in taken if g.is_complete],
                         running=[g for g in taken if not g.is_complete], num_dropped=dropped,
                         tokens_before=sum(g.group.num_response_tokens for g in taken))

    def abandon(self, step: AprilStep[G]) -> None:
        self.groups.extendleft(reversed(step.complete + step.running))
        self._count_generated(step)
        self.ledger.buffered = self.num_tokens

    def finish(self, step: AprilStep[G], num_groups: int) -> tuple[list[G], list[G]]:
        """(the step's batch: the first num_groups complete groups, the complete extras put back)."""
        self._count_generated(step)
        batch, extra = step.complete[:num_groups], step.complete[num_groups:]
        taken = {id(g) for g in step.taken}
        self.groups.extendleft(reversed(extra + [g for g in step.running if id(g) in taken]))
        self.groups.extend(g for g in step.running if id(g) not in taken)
        self.ledger.trained += sum(g.group.num_response_tokens for g in batch)
        self.ledger.buffered = self.num_tokens
        self.ledger.check()
        return batch, extra

    def metrics(self, step: AprilStep[G], num_fresh: int, extra: list[G], policy_version: int,
                batch: list[Group]) -> dict[str, float]:
        return {"april/num_groups_from_buffer": float(len(step.taken)), "april/num_groups_fresh": float(num_fresh),
                "april/num_groups_issued": float(len(step.taken) + num_fresh),
                "april/num_groups_dropped": float(step.num_dropped),
                "april/num_groups_interrupted": float(len(step.running)),
                "april/num_groups_extra_complete": float(len(extra)), "april/groups_buffered": float(len(self.groups)),
                "april/num_samples_multi_version": float(count_policy_versions(batch)),
                "rollout/off_policy_token_fraction": off_policy_token_fraction(batch, policy_version)
                } | self.ledger.as_metrics()

    def _count_generated(self, step: AprilStep[G]) -> None:
        self.ledger.generated += sum(g.group.num_response_tokens for g in step.complete + step.running) \
            - step.tokens_before

    def _drop_stale(self, policy_version: int) -> int:
        if self.max_age_in_versions == 0:
            return 0
        min_version = policy_version - self.max_age_in_versions
        keep, dropped = deque(), []
        for g in self.groups:
            oldest = g.group.oldest_policy_version
            (dropped if oldest is not None and oldest < min_version else keep).append(g)
        self.groups = keep
        self.ledger.dropped += sum(g.group.num_response_tokens for g in dropped)
        self.ledger.buffered = self.num_tokens
        return len(dropped)


class TurnAprilManager(Generic[G]):
    """What the two multi-turn APRIL managers (env episodes: rlplat/envs/episode_april.py, tool trajectories:
    rlplat/agents/april.py) share: N' = ceil(over_provision * N) groups issued per step, and the buffer of unfinished
    groups with its token ledger, which a checkpoint stores (`state`) and a resumed run restores (`load_state`)."""

    def __init__(self, *, over_provision: float, max_age_in_versions: int) -> None:
        if over_provision < 1:
            raise ValueError(f"over_provision must be >= 1, got {over_provision}")
        self.over_provision = over_provision
        self.pending: TurnGroupBuffer[G] = TurnGroupBuffer(max_age_in_versions)

    @property
    def buffer(self) -> deque[G]:
        """The buffered groups in serving order (the objects themselves)."""
        return self.pending.groups

    @property
    def ledger(self) -> TokenLedger:
        return self.pending.ledger

    def num_groups_to_issue(self, num_groups: int) -> int:
        return num_groups_to_issue(num_groups, self.over_provision)

    def state(self) -> list[G]:
        """The buffer (deep copy, serving order): what a checkpoint stores."""
        return self.pending.state()

    def load_state(self, groups: list[G], ledger: TokenLedger | None = None) -> None:
        """Restore the buffer from `state()`. Without a saved `ledger`, its tokens count as generated and buffered."""
        self.pending.load_state(groups, ledger)


def num_groups_to_issue(num_groups: int, over_provision: float) -> int:
    """N' = ceil(over_provision * N), never below N (as `AprilManager.num_groups_to_issue`)."""
    return max(num_groups, math.ceil(over_provision * num_groups - 1e-9))

"""APRIL for tool-calling trajectories (ALGORITHMS.md section 1 applied to `rlplat.agents.loop`). Pure asyncio, no Ray.

Units are groups: the `group_size` trajectories of one prompt (`TrajectoryGroup`). Per step the trainer needs N
complete groups, and `AgentAprilManager.collect`:

1. drops buffered groups older than `max_age_in_versions` (0 = never) and takes up to N' = ceil(over_provision * N)
   groups from the buffer (FIFO; complete leftovers count at once, unfinished ones continue where they stopped);
2. fills the rest of the N' with fresh groups (`fresh(n)`), unless the buffer already completes the step;
3. plays every unfinished trajectory as its own task (`AgentLoop.play_one`); when the N-th group completes, no
   trajectory starts another round and every worker's in-flight requests are aborted (they return what they
   have: the sample stays PENDING with the turn's ids in `partial_turn`); a trajectory whose tools are running
   finishes its tool turn first (tools are short next to a step, and a cut tool turn would run again);
4. returns the first N complete groups in completion order; the rest go back (`rlplat.turns.TurnGroupBuffer`).

What continues next step: a trajectory's sample (ids, masks, log-probs and per-token policy versions, so a turn
cut by the abort shows both versions), its conversation and counters, `partial_turn`/`turn_done`. All plain
data: `state()` is a checkpoint's copy of the buffer (JSON through rlplat.checkpoint, no pickle).

If a worker fails mid-step (a Ray actor dies), every task is cancelled and waited for, and every issued group
goes back to the front of the buffer as it stands (a failed request appends nothing; a turn whose tools were
cut keeps `turn_done`), so the caller retries the step after the actor restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from rlplat.agents.loop import AgentBatch, AgentLoop, TrajectoryGroup, agent_metrics
from rlplat.turns import TurnAprilManager, TurnWorker
from rlplat.types import SamplingOptions


class AbortableWorker(TurnWorker, Protocol):
    async def abort(self) -> int:
        """Stop every in-flight request (each returns what it has, PENDING); returns how many were aborted."""
        ...


class AgentAprilManager(TurnAprilManager[TrajectoryGroup]):
    """Keeps N' groups of trajectories in play, stops at N complete ones, and buffers the rest (module docstring)."""

    def __init__(self, loop: AgentLoop, *, over_provision: float = 2.0, max_age_in_versions: int = 0) -> None:
        super().__init__(over_provision=over_provision, max_age_in_versions=max_age_in_versions)
        self.loop = loop

    async def collect(self, workers: Sequence[AbortableWorker], fresh: Callable[[int], list[TrajectoryGroup]], *,
                      num_groups: int, sampling: SamplingOptions, policy_version: int) -> AgentBatch:
        """This step's `num_groups` complete groups and agent + APRIL metrics. `fresh(n)`: n new groups (called at
        most once; the caller keeps their group ids unique across steps and attempts)."""
        if not workers:
            raise ValueError("collect needs at least one worker")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        n_issue = self.num_groups_to_issue(num_groups)
        step = self.pending.begin(n_issue, policy_version)
        num_fresh = n_issue - len(step.taken) if len(step.complete) < num_groups else 0
        num_continued = sum(not t.sample.is_finished for g in step.running for t in g.trajectories)
        try:
            if len(step.complete) < num_groups:
                step.running += fresh(num_fresh) if num_fresh else []
                await self._play(step.running, step.complete, num_groups, workers, sampling, policy_version)
        except BaseException:
            step.running[:] = [g for g in step.running if all(g is not c for c in step.complete)]
            self.pending.abandon(step)  # as they stand: the caller may retry the step
            raise
        step.running[:] = [g for g in step.running if all(g is not c for c in step.complete)]
        batch, extra = self.pending.finish(step, num_groups)
        groups = [g.group for g in batch]
        trajectories = [t for g in batch for t in g.trajectories]
        for t in trajectories:
            t.sample.validate()
        stats = {"april/trajectories_continued": float(num_continued),
                 "april/trajectories_buffered": float(sum(not t.sample.is_finished for g in self.buffer
                                                          for t in g.trajectories))}
        metrics = agent_metrics(trajectories) | stats | self.pending.metrics(step, num_fresh, extra, policy_version,
                                                                             groups)
        return AgentBatch(groups=groups, trajectories=trajectories, metrics=metrics)

    async def _play(self, running: list[TrajectoryGroup], complete: list[TrajectoryGroup], num_groups: int,
                    workers: Sequence[AbortableWorker], sampling: SamplingOptions, version: int) -> None:
        """Every unfinished trajectory as a task; groups join `complete` as they complete. On a failure every
        task is cancelled and awaited before the error propagates (no task touches a trajectory afterwards)."""
        stopped = False

        def keep_going() -> bool:
            return not stopped

        async def play(g: TrajectoryGroup, i: int) -> None:
            nonlocal stopped
            t = g.trajectories[i]
            await self.loop.play_one(t, workers[g.group_id % len(workers)], sampling, version, keep_going)
            if t.sample.is_finished and g.is_complete and all(g is not c for c in complete):
                complete.append(g)
                if len(complete) >= num_groups and not stopped:
                    stopped = True
                    await asyncio.gather(*(w.abort() for w in workers))

        tasks = [asyncio.ensure_future(play(g, i)) for g in running for i, t in enumerate(g.trajectories)
                 if not t.sample.is_finished]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

"""APRIL active partial rollouts over several rollout workers (ALGORITHMS.md section 1). Pure asyncio, no Ray.

Per step the trainer needs N complete groups. `AprilManager.collect`:

1. drops buffered groups older than `max_age_in_versions` (see `rlplat.rollout.april`);
2. issues N' = ceil(over_provision * N) groups: the partial buffer first (FIFO; complete leftovers from the last
   step count at once, unfinished ones are continued), then fresh groups from the caller's `fresh(k)`;
3. sends each group's unfinished samples as ONE request batch to the worker with the fewest in-flight samples
   (a group never spans two workers, so it finishes or is interrupted as a unit);
4. as soon as N groups are complete, aborts everything still running on every worker and waits for the
   interrupted requests to come back with their partial tokens;
5. returns the first N complete groups; complete groups beyond N go to the FRONT of the buffer (served first
   next step, never dropped) and interrupted groups to the buffer (those taken from it back to the front, fresh
   ones to the back), so FIFO order is kept.

Next step an interrupted sample continues from its token ids with the remaining budget on the new weights (the
engine does that), so its per-token `policy_versions` show both versions. Slime's semantics for N': the N'
groups are issued once per step and a group taken into the batch is not replaced.

A worker is anything with `async generate(samples, sampling, policy_version) -> samples` (the samples extended
in place or returned as copies) and `async abort() -> int`: `RolloutEngine` itself, the Ray adapter in
`rlplat.actors.rollout_manager`, or a fake in unit tests. over_provision=1 is synchronous full-batch rollout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rlplat.rollout.april import PartialBuffer
from rlplat.types import Group, Sample, SamplingOptions, TokenLedger, count_policy_versions, off_policy_token_fraction

_DRAIN_REABORT_S = 0.5  # while draining, abort again this often (a request may reach its engine after an abort)


class RolloutWorker(Protocol):
    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]: ...

    async def abort(self) -> int: ...


@dataclass(slots=True, kw_only=True)
class AprilStep:
    """What one `collect` returns: the complete groups for the learner and this step's metrics."""

    groups: list[Group]
    metrics: dict[str, float] = field(default_factory=dict)


class _WorkerClock:
    """In-flight samples and calls per worker, with busy time and sample-seconds integrated over the step."""

    def __init__(self, num_workers: int) -> None:
        self.samples = [0] * num_workers
        self.calls = [0] * num_workers
        self.busy_s = [0.0] * num_workers
        self.sample_s = [0.0] * num_workers
        self.start = self._t = time.perf_counter()

    def _advance(self) -> None:
        now = time.perf_counter()
        for i, calls in enumerate(self.calls):
            if calls:
                self.busy_s[i] += now - self._t
                self.sample_s[i] += self.samples[i] * (now - self._t)
        self._t = now

    def least_loaded(self) -> int:
        return min(range(len(self.samples)), key=lambda i: (self.samples[i], self.calls[i], i))

    def add(self, worker: int, num_samples: int) -> None:
        self._advance()
        self.calls[worker] += 1
        self.samples[worker] += num_samples

    def remove(self, worker: int, num_samples: int) -> None:
        self._advance()
        self.calls[worker] -= 1
        self.samples[worker] -= num_samples

    def metrics(self) -> dict[str, float]:
        self._advance()
        wall = max(self._t - self.start, 1e-9)
        n = len(self.samples)
        return {
            "april/engine_idle_share": sum(1.0 - min(b / wall, 1.0) for b in self.busy_s) / n,
            "april/mean_inflight_samples_per_engine": sum(self.sample_s) / (wall * n),
        }


@dataclass(slots=True)
class _Flight:
    group: Group
    worker: int
    num_samples: int
    tokens_before: int
    from_buffer: bool
    order: int  # issue order: interrupted groups go back to the buffer in it (FIFO)


class AprilManager:
    """Keeps N' groups in flight over `workers`, stops at N complete ones, and buffers the rest."""

    def __init__(self, workers: Sequence[RolloutWorker], *, over_provision: float = 2.0,
                 max_age_in_versions: int = 0) -> None:
        if not workers:
            raise ValueError("AprilManager needs at least one rollout worker")
        if over_provision < 1:
            raise ValueError(f"over_provision must be >= 1, got {over_provision}")
        if max_age_in_versions < 0:
            raise ValueError(f"max_age_in_versions must be >= 0, got {max_age_in_versions}")
        self.workers = list(workers)
        self.over_provision = over_provision
        self.max_age_in_versions = max_age_in_versions
        self.buffer = PartialBuffer()
        self.ledger = TokenLedger()
        self.num_groups_dropped = 0

    # ----------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> list[Group]:
        """The partial buffer (deep copy, serving order): what a checkpoint stores."""
        return self.buffer.state()

    def load_state(self, groups: list[Group], ledger: TokenLedger | None = None) -> None:
        """Restore the buffer. Without a saved `ledger`, the restored tokens count as generated and buffered."""
        self.buffer.load_state(groups)
        tokens = self.buffer.num_tokens
        if ledger is None:
            self.ledger = TokenLedger(generated=tokens, buffered=tokens)
        else:
            self.ledger = dataclasses.replace(ledger, buffered=tokens)
        self.ledger.check()

    def num_groups_to_issue(self, num_groups: int) -> int:
        """N' = ceil(over_provision * N) (never below N)."""
        return max(num_groups, math.ceil(self.over_provision * num_groups - 1e-9))

    # ----------------------------------------------------------------------------------------------- one step
    async def collect(self, num_groups: int, fresh: Callable[[int], list[Group]], sampling: SamplingOptions,
                      policy_version: int, *, budget_for: Callable[[Group], int] | None = None) -> AprilStep:
        """Return `num_groups` complete groups (fewer only if the buffer is empty and `fresh` runs dry).

        fresh(k): up to k new groups (no tokens yet). budget_for(group): that group's whole response budget
        (default `sampling.max_new_tokens`); it must give the same answer for a group every step.
        """
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        clock = _WorkerClock(len(self.workers))
        dropped = self._drop_stale(policy_version)
        n_issue = self.num_groups_to_issue(num_groups)
        taken = self.buffer.pop_front(n_issue)
        complete = [g for g in taken if g.is_complete]
        to_run = [g for g in taken if not g.is_complete]
        new: list[Group] = []
        if len(complete) < num_groups and len(taken) < n_issue:
            new = fresh(n_issue - len(taken))
            if len(new) > n_issue - len(taken):
                raise ValueError(f"fresh({n_issue - len(taken)}) returned {len(new)} groups")
            for g in new:
                if g.num_response_tokens or g.is_complete:
                    raise ValueError(f"fresh group {g.group_id} already has response tokens")
        stats = {"april/num_groups_from_buffer": float(len(taken)), "april/num_groups_fresh": float(len(new)),
                 "april/num_groups_issued": float(len(taken) + len(new)), "april/num_groups_dropped": float(dropped)}
        if len(complete) >= num_groups:  # enough leftovers: nothing to generate this step
            interrupted_old, interrupted_new, aborted, drain_s = to_run, [], 0, 0.0
        else:
            complete, interrupted_old, interrupted_new, aborted, drain_s = await self._run(
                to_run, new, complete, num_groups, sampling, policy_version, budget_for, clock)
        batch, extra = complete[:num_groups], complete[num_groups:]
        self.buffer.push_front(interrupted_old)
        self.buffer.push_back(interrupted_new)
        self.buffer.push_front(extra)
        self.ledger.trained += sum(g.num_response_tokens for g in batch)
        self.ledger.buffered = self.buffer.num_tokens
        self.ledger.check()
        stats |= {"april/num_groups_interrupted": float(len(interrupted_old) + len(interrupted_new)),
                  "april/num_groups_extra_complete": float(len(extra)), "april/num_requests_aborted": float(aborted),
                  "april/groups_buffered": float(len(self.buffer)), "april/drain_s": drain_s,
                  "april/num_samples_multi_version": float(count_policy_versions(batch)),
                  "rollout/off_policy_token_fraction": off_policy_token_fraction(batch, policy_version)}
        return AprilStep(groups=batch, metrics=stats | self.ledger.as_metrics() | clock.metrics())

    def _drop_stale(self, policy_version: int) -> int:
        if self.max_age_in_versions == 0:
            return 0
        dropped = self.buffer.drop_older_than(policy_version - self.max_age_in_versions)
        self.ledger.dropped += sum(g.num_response_tokens for g in dropped)
        self.ledger.buffered = self.buffer.num_tokens
        self.num_groups_dropped += len(dropped)
        return len(dropped)

    async def _run(self, from_buffer: list[Group], new: list[Group], complete: list[Group], num_groups: int,
                   sampling: SamplingOptions, version: int, budget_for: Callable[[Group], int] | None,
                   clock: _WorkerClock) -> tuple[list[Group], list[Group], list[Group], int, float]:
        """Generate until `num_groups` are complete, then abort and drain. Returns (complete, interrupted groups
        that came from the buffer, interrupted fresh groups, requests aborted, drain seconds)."""
        flights: dict[asyncio.Future[list[Sample]], _Flight] = {}

        def launch(group: Group, from_buf: bool, order: int) -> None:
            pending = [s for s in group.samples if not s.is_finished]
            opts = sampling if budget_for is None else dataclasses.replace(sampling, max_new_tokens=budget_for(group))
            w = clock.least_loaded()
            clock.add(w, len(pending))
            task = asyncio.ensure_future(self.workers[w].generate(pending, opts, version))
            flights[task] = _Flight(group, w, len(pending), group.num_response_tokens, from_buf, order)

        for i, g in enumerate(from_buffer + new):
            launch(g, i < len(from_buffer), i)
        interrupted: list[_Flight] = []
        aborting, aborted, t_abort, t_last_abort = False, 0, 0.0, 0.0
        try:
            while flights:
                done, _ = await asyncio.wait(flights, timeout=_DRAIN_REABORT_S if aborting else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                if aborting and time.perf_counter() - t_last_abort >= _DRAIN_REABORT_S:
                    aborted += await self._abort_all()  # requests that reached an engine after the last abort
                    t_last_abort = time.perf_counter()
                for task in done:
                    f = flights[task]
                    returned = task.result()  # a worker error propagates with the group still in `flights`
                    del flights[task]
                    clock.remove(f.worker, f.num_samples)
                    _merge(f.group, returned)
                    self.ledger.generated += f.group.num_response_tokens - f.tokens_before
                    if f.group.is_complete:
                        complete.append(f.group)
                    elif aborting:
                        interrupted.append(f)
                    elif f.group.num_response_tokens > f.tokens_before:  # came back early: keep going
                        launch(f.group, f.from_buffer, f.order)
                    else:
                        raise RuntimeError(f"worker {f.worker} returned group {f.group.group_id} unfinished "
                                           "without new tokens and without an abort")
                if not aborting and len(complete) >= num_groups and flights:
                    aborting, t_abort = True, time.perf_counter()
                    aborted += await self._abort_all()
                    t_last_abort = time.perf_counter()
        except BaseException:
            await self._fail(flights, complete, interrupted)
            raise
        drain_s = time.perf_counter() - t_abort if aborting else 0.0
        interrupted.sort(key=lambda f: f.order)
        return (complete, [f.group for f in interrupted if f.from_buffer],
                [f.group for f in interrupted if not f.from_buffer], aborted, drain_s)

    async def _abort_all(self) -> int:
        return sum(await asyncio.gather(*(w.abort() for w in self.workers)))

    async def _fail(self, flights: dict[asyncio.Future[list[Sample]], _Flight], complete: list[Group],
                    interrupted: list[_Flight]) -> None:
        """On an error, stop the engines and put every group of this step back in the buffer, so none is lost."""
        try:
            await self._abort_all()
        finally:
            for task in flights:
                task.cancel()
            await asyncio.gather(*flights, return_exceptions=True)
            for f in flights.values():  # tokens a worker appended in place before failing still count
                self.ledger.generated += f.group.num_response_tokens - f.tokens_before
            self.buffer.push_front(complete + [f.group for f in interrupted] + [f.group for f in flights.values()])
            self.ledger.buffered = self.buffer.num_tokens


def _merge(group: Group, returned: list[Sample]) -> None:
    """Put the worker's copies of the group's samples back into the group (a no-op for in-place workers)."""
    by_index = {}
    for s in returned:
        if s.group_id != group.group_id:
            raise RuntimeError(f"worker returned a sample of group {s.group_id} for group {group.group_id}")
        by_index[s.sample_index] = s
    group.samples = [by_index.get(s.sample_index, s) for s in group.samples]

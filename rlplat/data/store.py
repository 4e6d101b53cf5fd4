"""ExperienceStore: a bounded, staleness-aware store of whole groups, built on TransferQueue 0.1.11.

Producers (rollout/env/reward) `put` finished groups; the learner reads whole groups with `get_batch`.

Storage. Every sample of a group is one TransferQueue row in this store's partition, with one column per field of
`Sample` (codec.py derives them from the dataclass). TransferQueue holds the data (a controller and SimpleStorage
units, Ray actors started by transferqueue.py's TransferQueueDeployment);
this object keeps the group-level bookkeeping TransferQueue cannot express (docs/transferqueue_notes.md):
which rows form which group, each group's oldest policy version, the capacity count and the counters.

Back-pressure. At most `capacity_in_groups` groups are resident in TransferQueue at any time, counting groups
being written and groups being read. `put` blocks while the store is full, up to `timeout_s` (then
TimeoutError; nothing of that call is stored); `try_put` never blocks and returns False when full. A put is
all-or-nothing, so one call may not carry more than `capacity_in_groups` groups. AsyncFlow sizes this bound
as (max_staleness + 1) x groups per learner step; more only holds data that is likely to expire.

Staleness. A group's staleness is learner_version - its oldest token's policy version (staleness.py). With
`max_staleness = k`, `get_batch(n, learner_version=L)` returns n whole groups, each with staleness <= k, oldest
policy version first (ties: put order). Groups that are stale are never returned: they are deleted from
TransferQueue and counted in `store/groups_dropped_stale`, at read time and already at put time when they are
stale against the newest learner version the store has seen. k = 0 returns on-policy groups only.
`on_stale` says who is expected to keep that count at zero:
  "drop": producers run free (bounded only by capacity); dropping stale groups is the normal way they go.
  "wait": producers check `staleness.may_produce(producer_version, learner_version, max_staleness)` before
          starting a group and wait for a weight sync when it is False (the async `Producer` does). A group can
          still go stale in flight (the learner stepped while it was generated); it is then dropped as above and a
          warning is logged, since it means wasted rollout.

Snapshot. `snapshot()` returns every unconsumed group (not those being written or already handed to the
learner) as plain `Group` records for a checkpoint; `restore(groups)` puts them back (no capacity wait, no
staleness filter: they are checked when read). Take the snapshot at a checkpoint barrier, with producers and
consumer paused, so that no group is in between.

Shutdown. `close()` wakes every blocked `put`/`get_batch` with StoreClosedError, then stops the TransferQueue
client, storage units and controller (or, when the deployment was passed in and is shared, deletes only this
store's partition); unconsumed groups are lost unless snapshotted first. It is idempotent; the store is also a
context manager. The caller initialises Ray (`ray.init`) before creating a store and shuts it down after
`close()`. TransferQueue's controller and each storage unit ask Ray for num_cpus=1 each.

Thread safety: all public methods may be called from several threads at once (several producers, one
consumer). TransferQueue's client runs its own event loop thread; this module imports no Ray itself.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from transfer_queue.client import TransferQueueClient
from transfer_queue.metadata import BatchMeta

from rlplat.data import codec
from rlplat.data import staleness as st
from rlplat.data.transferqueue import TransferQueueDeployment
from rlplat.types import Group, Sample

logger = logging.getLogger(__name__)

OnStale = Literal["drop", "wait"]

_STATUS_RETRIES = 50  # num_rows_in_transferqueue: tries while a concurrent put grows the controller (see there)


class StoreClosedError(RuntimeError):
    """Raised by calls on a closed store, and by calls that were blocked when it was closed."""


@dataclass(slots=True)
class _Entry:
    """Bookkeeping of one resident group: its TransferQueue rows and its ordering key."""

    seq: int  # put order, unique within the store
    oldest_version: int
    num_samples: int
    prompt_id: int  # Group.prompt_id (the samples' own prompt_id travel in TransferQueue)
    meta: BatchMeta  # the group's TransferQueue rows, in sample order

    @property
    def key(self) -> tuple[int, int]:
        return (self.oldest_version, self.seq)


@dataclass(slots=True)
class _Counters:
    groups_put: int = 0
    groups_restored: int = 0
    groups_consumed: int = 0
    groups_dropped_stale: int = 0
    producer_wait_s: float = 0.0
    consumer_wait_s: float = 0.0
    staleness_hist: Counter[int] = field(default_factory=Counter)


class ExperienceStore:
    """Bounded store of whole groups with policy-version staleness control (see the module docstring)."""

    def __init__(self, *, capacity_in_groups: int, max_staleness: int, on_stale: OnStale = "drop",
                 transferqueue: TransferQueueDeployment | None = None, num_storage_units: int = 2,
                 start_timeout_s: float = 120.0) -> None:
        """transferqueue: a deployment to share (closing the store then only deletes its own rows); None
        starts one with `num_storage_units` storage units, owned and stopped by `close()`."""
        if capacity_in_groups < 1:
            raise ValueError(f"capacity_in_groups must be >= 1, got {capacity_in_groups}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 (0 = on-policy), got {max_staleness}")
        if on_stale not in ("drop", "wait"):
            raise ValueError(f"on_stale must be 'drop' or 'wait', got {on_stale!r}")
        self.capacity_in_groups = capacity_in_groups
        self.max_staleness = max_staleness
        self.on_stale: OnStale = on_stale
        self._owns_tq = transferqueue is None
        self._tq = transferqueue or TransferQueueDeployment(num_storage_units=num_storage_units,
                                                            start_timeout_s=start_timeout_s)
        self._partition = f"experience_{uuid.uuid4().hex[:8]}"
        self._cv = threading.Condition()
        self._ready: list[_Entry] = []  # readable groups, sorted by (oldest_version, seq)
        self._num_ready_samples = 0
        self._slots_used = 0  # groups resident in TQ, incl. being written or read; <= capacity_in_groups
        self._next_seq = 0
        self._newest_learner_version: int | None = None
        self._counters = _Counters()
        self._closed = False

    # ----------------------------------------------------------------------------------------------- producers
    def put(self, groups: Sequence[Group], *, timeout_s: float | None = None) -> None:
        """Store finished groups, blocking while the store is full (timeout_s None = wait forever).

        All or nothing: on TimeoutError none of `groups` was stored. Groups already stale against the newest
        learner version seen are dropped and counted instead of stored.
        """
        self._put(groups, timeout_s=timeout_s, blocking=True)

    def try_put(self, groups: Sequence[Group]) -> bool:
        """Like `put` but never blocks: False (nothing stored) when there is no room for all of `groups` now."""
        return self._put(groups, timeout_s=0.0, blocking=False)

    def _put(self, groups: Sequence[Group], *, timeout_s: float | None, blocking: bool) -> bool:
        groups = list(groups)
        _check_groups(groups)
        if len(groups) > self.capacity_in_groups:
            raise ValueError(f"put of {len(groups)} groups can never fit capacity_in_groups="
                             f"{self.capacity_in_groups}; split the call")
        if not groups:
            return True
        fresh = self._reserve(groups, timeout_s=timeout_s, blocking=blocking)
        if fresh is None:
            return False
        if fresh:
            self._write(fresh, restored=False)
        return True

    def _reserve(self, groups: list[Group], *, timeout_s: float | None, blocking: bool) -> list[Group] | None:
        """Wait for room, then drop groups that are already stale and reserve slots for the rest.

        Returns the groups to write, or None when non-blocking and there is no room. Stale filtering happens
        when room is found, so a put that times out changes nothing.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        t0 = time.monotonic()
        fresh: list[Group] = []
        with self._cv:
            try:
                while True:
                    self._check_open()
                    fresh = [g for g in groups if not self._stale_now(g)]
                    if self._slots_used + len(fresh) <= self.capacity_in_groups:
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if not blocking:
                        return None
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"put of {len(fresh)} group(s) timed out after {timeout_s:.3g} s: the store is full "
                            f"({self._slots_used}/{self.capacity_in_groups} groups resident); the learner is not "
                            "consuming fast enough")
                    self._cv.wait(remaining)
            finally:
                self._counters.producer_wait_s += time.monotonic() - t0
            self._slots_used += len(fresh)
            self._record_dropped(len(groups) - len(fresh), where="put")
            self._counters.groups_put += len(groups) - len(fresh)  # the stored ones count once readable
            return fresh

    def _stale_now(self, group: Group) -> bool:
        version = group.oldest_policy_version
        assert version is not None  # checked by _check_groups
        return self._is_stale(version, self._newest_learner_version)

    def _write(self, groups: list[Group], *, restored: bool) -> None:
        """Write reserved groups to TransferQueue and make them readable (releases the slots on failure)."""
        try:
            meta = self._client().put(data=codec.encode([s for g in groups for s in g.samples]),
                                      partition_id=self._partition)
        except BaseException:
            self._release(len(groups))
            raise
        with self._cv:
            closed = self._closed
            start = 0
            for group in ([] if closed else groups):
                n = len(group.samples)
                version = group.oldest_policy_version
                assert version is not None
                entry = _Entry(seq=self._next_seq, oldest_version=version, num_samples=n, prompt_id=group.prompt_id,
                               meta=meta.select_samples(list(range(start, start + n))))
                self._next_seq += 1
                start += n
                self._insert(entry)
            if not closed:
                if restored:
                    self._counters.groups_restored += len(groups)
                else:
                    self._counters.groups_put += len(groups)
            self._cv.notify_all()
        if closed:  # close() ran while we wrote: leave no rows behind in a shared deployment
            try:
                self._drop_rows(meta)
            finally:
                self._release(len(groups))
            raise StoreClosedError("the experience store was closed during put")

    # ----------------------------------------------------------------------------------------------- consumer
    def get_batch(self, num_groups: int, *, learner_version: int, timeout_s: float | None = None) -> list[Group]:
        """Take `num_groups` whole groups with staleness <= max_staleness, oldest policy version first.

        Blocks until enough fresh groups are there (timeout_s None = wait forever; TimeoutError otherwise,
        taking nothing). Stale groups met on the way are deleted and counted in store/groups_dropped_stale.
        """
        if not 1 <= num_groups <= self.capacity_in_groups:
            raise ValueError(f"num_groups must be in [1, capacity_in_groups={self.capacity_in_groups}], "
                             f"got {num_groups}")
        t0 = time.monotonic()
        try:
            taken = self._take_fresh(num_groups, learner_version, timeout_s)
        finally:
            with self._cv:
                self._counters.consumer_wait_s += time.monotonic() - t0
        try:
            groups = self._read(taken)
        except BaseException:
            with self._cv:  # put them back: nothing was consumed
                for entry in taken:
                    self._insert(entry)
            raise
        self._delete(taken)
        with self._cv:
            self._counters.groups_consumed += len(taken)
            self._counters.staleness_hist.update(learner_version - e.oldest_version for e in taken)
        return groups

    def _take_fresh(self, num_groups: int, learner_version: int, timeout_s: float | None) -> list[_Entry]:
        """Wait until num_groups fresh groups are ready and take them out of _ready.

        Stale groups found meanwhile are deleted before waiting on, so that their slots go back to producers.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            stale: list[_Entry] = []
            try:
                with self._cv:
                    self._check_open()
                    if self._newest_learner_version is None or learner_version > self._newest_learner_version:
                        self._newest_learner_version = learner_version
                    stale = self._pop_stale(learner_version)
                    self._record_dropped(len(stale), where="get_batch")
                    if len(self._ready) >= num_groups:
                        return self._take(num_groups, learner_version)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"get_batch({num_groups}) timed out after {timeout_s:.3g} s with {len(self._ready)} "
                            "fresh group(s) ready; producers are not keeping up")
                    if not stale:
                        self._cv.wait(remaining)
            finally:
                self._delete(stale)

    def _pop_stale(self, learner_version: int) -> list[_Entry]:
        """Remove stale groups from _ready: sorted by oldest version, they are a prefix of it."""
        n = 0
        while n < len(self._ready) and self._is_stale(self._ready[n].oldest_version, learner_version):
            n += 1
        stale, self._ready = self._ready[:n], self._ready[n:]
        self._num_ready_samples -= sum(e.num_samples for e in stale)
        return stale

    def _is_stale(self, version: int, learner_version: int | None) -> bool:
        # A version newer than the learner's is not stale; _take rejects it as a caller error.
        return (learner_version is not None and version <= learner_version
                and st.is_stale(version, learner_version, self.max_staleness))

    def _take(self, num_groups: int, learner_version: int) -> list[_Entry]:
        taken = self._ready[:num_groups]
        newest = max(e.oldest_version for e in taken)
        if newest > learner_version:
            raise ValueError(f"a stored group has policy version {newest}, newer than learner_version "
                             f"{learner_version}: pass the learner's current version")
        del self._ready[:num_groups]
        self._num_ready_samples -= sum(e.num_samples for e in taken)
        return taken

    def _insert(self, entry: _Entry) -> None:
        bisect.insort(self._ready, entry, key=lambda e: e.key)
        self._num_ready_samples += entry.num_samples

    def _record_dropped(self, num_groups: int, *, where: str) -> None:
        if num_groups == 0:
            return
        self._counters.groups_dropped_stale += num_groups
        if self.on_stale == "wait":
            logger.warning("%d group(s) went stale before %s (max_staleness=%d) and were dropped: producers "
                           "started them before a weight sync they should have waited for",
                           num_groups, where, self.max_staleness)

    # ------------------------------------------------------------------------------------ snapshot and restore
    def snapshot(self) -> list[Group]:
        """Copies of every unconsumed group, in read order (the store keeps them). For checkpoints."""
        with self._cv:  # held during the read so that no get_batch takes a group half-way
            self._check_open()
            return self._read(list(self._ready)) if self._ready else []

    def restore(self, groups: Sequence[Group]) -> None:
        """Put back groups from `snapshot()` without waiting and without staleness filtering.

        Raises ValueError when they do not fit in the free capacity.
        """
        groups = list(groups)
        _check_groups(groups)
        with self._cv:
            self._check_open()
            if self._slots_used + len(groups) > self.capacity_in_groups:
                raise ValueError(f"restoring {len(groups)} groups into a store with "
                                 f"{self.capacity_in_groups - self._slots_used} free slots")
            self._slots_used += len(groups)
        if groups:
            self._write(groups, restored=True)

    # --------------------------------------------------------------------------------------------- TQ plumbing
    def _read(self, entries: list[_Entry]) -> list[Group]:
        data = self._client().get_data(BatchMeta.concat([e.meta for e in entries]))
        return _regroup(codec.decode(data), entries)

    def _delete(self, entries: list[_Entry]) -> None:
        """Delete groups' rows from TransferQueue and free their slots."""
        if not entries:
            return
        try:
            self._drop_rows(BatchMeta.concat([e.meta for e in entries]))
        finally:
            self._release(len(entries))

    def _drop_rows(self, meta: BatchMeta) -> None:
        if self._tq.client is None:  # the deployment is closed: the rows went with its actors
            return
        try:
            self._tq.client.clear_samples(meta)
        except Exception:
            if not self._closed:
                raise
            logger.debug("rows of a closed store were already cleared", exc_info=True)

    def _release(self, num_slots: int) -> None:
        with self._cv:
            self._slots_used -= num_slots
            assert self._slots_used >= 0
            self._cv.notify_all()

    def _client(self) -> TransferQueueClient:
        if self._closed or self._tq.client is None:
            raise StoreClosedError("the experience store (or its TransferQueue deployment) is closed")
        return self._tq.client

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the experience store is closed")

    # ----------------------------------------------------------------------------------------- metrics, close
    def stats(self) -> dict[str, float]:
        """Counters since creation, as "store/<name>" metrics; staleness_count/<s> counts consumed groups."""
        with self._cv:
            c = self._counters
            out = {
                "store/queue_depth_groups": float(len(self._ready)),
                "store/queue_depth_samples": float(self._num_ready_samples),
                "store/resident_groups": float(self._slots_used),
                "store/capacity_in_groups": float(self.capacity_in_groups),
                "store/groups_put": float(c.groups_put),
                "store/groups_restored": float(c.groups_restored),
                "store/groups_consumed": float(c.groups_consumed),
                "store/groups_dropped_stale": float(c.groups_dropped_stale),
                "store/producer_wait_s": c.producer_wait_s,
                "store/consumer_wait_s": c.consumer_wait_s,
            }
            hist = c.staleness_hist
            for s in sorted(hist):
                out[f"store/staleness_count/{s}"] = float(hist[s])
            total = sum(hist.values())
            out["store/staleness_mean"] = sum(s * n for s, n in hist.items()) / total if total else 0.0
            out["store/staleness_max"] = float(max(hist)) if hist else 0.0
            return out

    def num_rows_in_transferqueue(self) -> int:
        """Sample rows TransferQueue's controller holds for this store (asks the controller; for diagnostics).

        TransferQueue 0.1.11 races here: while another thread's put has taken global indexes but not yet grown the
        controller's status tensor, the controller answers with an IndexError. That state lasts until the put's
        write lands, so the question is asked again, up to `_STATUS_RETRIES` times."""
        def ask() -> int:
            _, status = self._client().get_production_status(data_fields=["response_token_ids"],
                                                             partition_id=self._partition)
            return 0 if status is None else int((status == 1).sum())  # [rows, 1] int8, 1 = written

        for _ in range(_STATUS_RETRIES - 1):
            try:
                return ask()
            except RuntimeError as err:
                if "out of bounds" not in str(err):
                    raise
                time.sleep(0.01)
        return ask()  # the last try: its error, whatever it is, reaches the caller

    def close(self) -> None:
        """Wake blocked callers with StoreClosedError, then stop the owned TransferQueue deployment, or delete
        this store's rows from a shared one. Unconsumed groups are lost (snapshot first). Idempotent."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        if self._owns_tq:
            self._tq.close()
        elif self._tq.client is not None and self._slots_used > 0:  # TQ drops a partition once it is empty
            self._tq.client.clear_partition(self._partition)

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_groups(groups: list[Group]) -> None:
    for g in groups:
        g.validate()
        if not g.samples:
            raise ValueError(f"group {g.group_id} has no samples")
        if not g.is_complete:
            raise ValueError(f"group {g.group_id} has unfinished samples; only finished groups go to the store "
                             "(unfinished ones stay in the partial-rollout buffer)")
        if g.oldest_policy_version is None:
            raise ValueError(f"group {g.group_id} has no generated tokens, so no policy version")


def _regroup(samples: list[Sample], entries: list[_Entry]) -> list[Group]:
    """Rows read back (samples of each entry's group, consecutive, in entry order) -> Groups."""
    groups, start = [], 0
    for e in entries:
        members = samples[start:start + e.num_samples]
        groups.append(Group(group_id=members[0].group_id, prompt_id=e.prompt_id, samples=members))
        start += e.num_samples
    assert start == len(samples), f"{len(samples)} rows read for {start} samples"
    return groups

"""The asynchronous producer: rollout + reward in a background thread, feeding the ExperienceStore.

The learner (consumer, the driver's main thread) trains batch P at policy version P. So that batch P has
staleness <= k, the producer starts generating batch P only while P <= learner_version + k ("wait": the rule is
`staleness.may_produce`), which for k = 0 is exactly synchronous, on-policy training. With on_stale="drop" the
producer runs free (bounded only by the store's capacity) and the store drops groups that are too old when they
are read.

Metrics: each produced batch's metrics (timings, reward terms, APRIL) are kept under the ids of its groups, and a
consumed batch gets the metrics of the produced batch most of its groups came from, so they stay matched when the
store drops stale groups or a checkpoint restores groups produced by an earlier process (those have none).

Shutdown: `stop()` sets a flag, calls `interrupt` (the driver aborts in-flight generation), and joins the
thread. An exception in the producer thread is re-raised in the consumer by the next `next_batch`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from rlplat.data.staleness import may_produce
from rlplat.types import Group

ProduceFn = Callable[[int, int], tuple[list[Group], dict[str, float]]]  # (batch_index, policy_version) -> ...


class Store(Protocol):
    def put(self, groups: list[Group], *, timeout_s: float | None = None) -> None: ...
    def get_batch(self, num_groups: int, *, learner_version: int, timeout_s: float | None = None) -> list[Group]: ...
    def stats(self) -> dict[str, float]: ...


class Producer:
    def __init__(self, produce: ProduceFn, store: Store, *, num_groups_per_batch: int, max_staleness: int,
                 wait_for_learner: bool, interrupt: Callable[[], None] = lambda: None, first_batch: int = 0) -> None:
        self.produce = produce
        self.store = store
        self.num_groups = num_groups_per_batch
        self.max_staleness = max_staleness
        self.wait_for_learner = wait_for_learner
        self.interrupt = interrupt
        self.learner_version = first_batch
        self.batches_produced = first_batch
        self._paused = False
        self._producing = False
        self.producer_wait_s = 0.0
        self._batch_metrics: dict[int, dict[str, float]] = {}  # produced batch index -> its metrics
        self._group_batch: dict[int, int] = {}  # group id -> index of the produced batch it came from
        self._cond = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rlplat-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _may_start(self, batch_index: int) -> bool:
        """`staleness.may_produce`: batch P is generated with the learner's current weights and trained at version P
        (or now, if the learner is already past P), so it may start iff that staleness is within max_staleness."""
        if not self.wait_for_learner:
            return True
        trained_at = max(batch_index, self.learner_version)
        return may_produce(self.learner_version, trained_at, self.max_staleness)

    def _run(self) -> None:
        try:
            while True:
                t0 = time.perf_counter()
                with self._cond:
                    while not self._stop and (self._paused or not self._may_start(self.batches_produced)):
                        self._cond.wait(timeout=1.0)
                    if self._stop:
                        return
                    index, version = self.batches_produced, self.learner_version
                    self._producing = True
                self.producer_wait_s += time.perf_counter() - t0
                groups, metrics = self.produce(index, version)
                if self._stop:
                    return
                t1 = time.perf_counter()
                while not self._stop:  # back-pressure: the store blocks while full
                    try:
                        self.store.put(groups, timeout_s=1.0)
                        break
                    except TimeoutError:
                        continue
                self.producer_wait_s += time.perf_counter() - t1
                with self._cond:
                    self._batch_metrics[index] = metrics | {"async/producer_batch_version": float(version)}
                    self._group_batch |= {g.group_id: index for g in groups}
                    self.batches_produced += 1
                    self._producing = False
                    self._cond.notify_all()
        except BaseException as e:  # surfaced in the consumer thread by next_batch()
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def next_batch(self, *, timeout_s: float = 3600.0) -> tuple[list[Group], dict[str, float]]:
        """The learner's next batch (whole groups within the staleness bound) and its producer-side metrics."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._raise_if_failed()
            try:
                groups = self.store.get_batch(self.num_groups, learner_version=self.learner_version, timeout_s=1.0)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no batch from the rollout producer within {timeout_s:.0f} s") from None
        with self._cond:
            metrics = self._metrics_for(groups)
        return groups, metrics | {"async/producer_wait_s": self.producer_wait_s}

    def _metrics_for(self, groups: list[Group]) -> dict[str, float]:
        """The metrics of the produced batch most of `groups` came from ({} for groups restored from a checkpoint).
        The store hands out groups oldest first, so groups of earlier batches not handed out by now were dropped
        as stale: their entries are forgotten here, which keeps both maps bounded."""
        origins = [self._group_batch.pop(g.group_id) for g in groups if g.group_id in self._group_batch]
        if not origins:
            return {}
        chosen = Counter(origins).most_common(1)[0][0]
        metrics = self._batch_metrics.get(chosen, {})
        oldest = min(origins)
        self._group_batch = {gid: b for gid, b in self._group_batch.items() if b >= oldest}
        self._batch_metrics = {b: m for b, m in self._batch_metrics.items() if b in set(self._group_batch.values())}
        return metrics

    def pause(self) -> None:
        """Let the batch in progress finish and start no new one (for a consistent checkpoint)."""
        with self._cond:
            self._paused = True
            while self._producing and self._error is None and not self._stop:
                self._cond.wait(timeout=1.0)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def set_learner_version(self, version: int) -> None:
        with self._cond:
            self.learner_version = version
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self.interrupt()
        self._thread.join(timeout=120)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"rollout producer failed: {type(self._error).__name__}: {self._error}") from self._error

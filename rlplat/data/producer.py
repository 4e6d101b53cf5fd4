"""The asynchronous producer: rollout + reward in a background thread, feeding the ExperienceStore.

The learner (consumer, the controller's main thread) trains batch P at policy version P. So that batch P has
staleness <= k, the producer starts generating batch P only while P <= learner_version + k ("wait"), which for
k = 0 is exactly synchronous, on-policy training. With on_stale="drop" the producer runs free (bounded only by
the store's capacity) and the store drops groups that are too old when they are read.

Shutdown: `stop()` sets a flag, calls `interrupt` (the controller aborts in-flight generation), and joins the
thread. An exception in the producer thread is re-raised in the consumer by the next `next_batch`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

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
        self._metrics: deque[dict[str, float]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rlplat-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _may_start(self, batch_index: int) -> bool:
        return not self.wait_for_learner or batch_index <= self.learner_version + self.max_staleness

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
                    self._metrics.append(metrics | {"async/producer_batch_version": float(version)})
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
            metrics = self._metrics.popleft() if self._metrics else {}
        return groups, metrics | {"async/producer_wait_s": self.producer_wait_s}

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

"""The producer thread's staleness rule, with an in-memory store (no Ray): batch P is generated at a policy
version >= P - k, so training batch P at version P never sees staleness above k; k = 0 is synchronous."""

from __future__ import annotations

import queue
import random
import threading
import time

import pytest

from rlplat.data.producer import Producer
from rlplat.types import FinishReason, Group, Sample


class ListStore:
    def __init__(self, capacity: int) -> None:
        self.q: queue.Queue[list[Group]] = queue.Queue(maxsize=capacity)

    def put(self, groups, *, timeout_s=None):
        try:
            self.q.put(groups, timeout=timeout_s)
        except queue.Full:
            raise TimeoutError from None

    def get_batch(self, num_groups, *, learner_version, timeout_s=None):
        try:
            return self.q.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError from None

    def stats(self):
        return {"store/queue_depth_groups": float(self.q.qsize())}


def _group(index: int, version: int) -> Group:
    s = Sample(group_id=index, sample_index=0, prompt_id=0, prompt_token_ids=[1])
    s.extend([2], [0.0], version, FinishReason.STOP)
    return Group(group_id=index, prompt_id=0, samples=[s])


def _run(k: int, steps: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    lock = threading.Lock()

    def produce(index: int, version: int):
        time.sleep(rng.random() * 0.01)
        return [_group(index, version)], {}

    producer = Producer(produce, ListStore(capacity=k + 1), num_groups_per_batch=1, max_staleness=k,
                        wait_for_learner=True)
    producer.start()
    lags = []
    for learner_version in range(steps):
        groups, _ = producer.next_batch(timeout_s=10)
        with lock:
            lags.append(learner_version - groups[0].oldest_policy_version)
        time.sleep(rng.random() * 0.01)  # training
        producer.set_learner_version(learner_version + 1)
    producer.stop()
    return lags


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_staleness_never_exceeds_k(k: int, seed: int) -> None:
    lags = _run(k, steps=25, seed=seed)
    assert max(lags) <= k and min(lags) >= 0


def test_k0_is_on_policy() -> None:
    assert set(_run(0, steps=20, seed=3)) == {0}


def test_k1_overlaps_rollout_with_training() -> None:
    assert 1 in _run(1, steps=20, seed=4)


@pytest.mark.parametrize(("learner", "batch", "k", "expected"), [
    (0, 0, 0, True), (0, 1, 0, False), (3, 3, 0, True), (3, 4, 1, True), (3, 5, 1, False), (3, 6, 3, True),
    (5, 2, 0, True),  # the learner is past the batch (groups restored from a checkpoint): it trains now
])
def test_may_start_is_the_staleness_rule(learner: int, batch: int, k: int, expected: bool) -> None:
    """Batch P, generated at the learner's version L and trained at P, may start iff P <= L + k (hand cases)."""
    producer = Producer(lambda i, v: ([], {}), ListStore(1), num_groups_per_batch=1, max_staleness=k,
                        wait_for_learner=True)
    producer.set_learner_version(learner)
    assert producer._may_start(batch) is expected
    free = Producer(lambda i, v: ([], {}), ListStore(1), num_groups_per_batch=1, max_staleness=k,
                    wait_for_learner=False)
    assert free._may_start(batch + 10) is True  # on_stale="drop": producers run free


def test_producer_error_surfaces_in_consumer() -> None:
    def produce(index: int, version: int):
        raise ValueError("reward function 'bad' raised")

    producer = Producer(produce, ListStore(2), num_groups_per_batch=1, max_staleness=0, wait_for_learner=True)
    producer.start()
    with pytest.raises(RuntimeError, match="rollout producer failed: ValueError: reward function 'bad'"):
        producer.next_batch(timeout_s=5)
    producer.stop()


class DroppingStore(ListStore):
    """Hands out one group per batch and drops (never returns) every group of batch index 1."""

    def get_batch(self, num_groups, *, learner_version, timeout_s=None):
        while True:
            groups = super().get_batch(num_groups, learner_version=learner_version, timeout_s=timeout_s)
            if groups[0].group_id // 100 != 1:
                return groups


def test_metrics_travel_with_their_groups_across_drops_and_restores() -> None:
    def produce(index: int, version: int):
        return [_group(100 * index, version)], {"rollout/batch_index": float(index)}

    store = DroppingStore(capacity=8)
    store.put([_group(999_000, 0)])  # restored from a checkpoint: produced by an earlier process
    producer = Producer(produce, store, num_groups_per_batch=1, max_staleness=8, wait_for_learner=True)
    producer.start()
    seen = []
    for version in range(4):
        groups, metrics = producer.next_batch(timeout_s=10)
        seen.append((groups[0].group_id, metrics.get("rollout/batch_index")))
        producer.set_learner_version(version + 1)
    producer.stop()
    # FIFO pairing would have given the restored group batch 0's metrics and shifted every later batch by one.
    assert seen == [(999_000, None), (0, 0.0), (200, 2.0), (300, 3.0)]
    assert set(producer._batch_metrics) <= {3, 4, 5, 6, 7, 8, 9, 10, 11, 12}  # old entries are forgotten

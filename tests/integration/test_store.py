"""ExperienceStore on real Ray + real TransferQueue 0.1.11.

The session's Ray (tests/conftest.py `ray_session`: num_cpus=8, since TQ's controller and storage units ask for
one logical CPU each) and one TransferQueue deployment shared by this module serve every test; each test makes
its own store (its own TQ partition). Only the shutdown test starts a store that owns its actors.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import ray

from rlplat.data.staleness import may_produce
from rlplat.data.store import ExperienceStore, StoreClosedError
from rlplat.data.transferqueue import TransferQueueDeployment
from rlplat.types import FinishReason, Group, Sample


@pytest.fixture(scope="module")
def tq(ray_session: object) -> Iterator[TransferQueueDeployment]:
    with TransferQueueDeployment(num_storage_units=2) as deployment:
        yield deployment


def make_group(group_id: int, versions: list[int] | int, *, num_samples: int = 4, num_tokens: int = 8,
               rng: random.Random | None = None) -> Group:
    """A finished group; `versions` gives each sample's per-token versions cycle (an int = all tokens)."""
    rng = rng or random.Random(group_id)
    cycle = [versions] if isinstance(versions, int) else versions
    samples = []
    for i in range(num_samples):
        n = num_tokens + rng.randint(0, 3)
        samples.append(Sample(
            group_id=group_id, sample_index=i, prompt_id=1000 + group_id,
            prompt_token_ids=[rng.randrange(100) for _ in range(rng.randint(1, 6))], answer=f"answer {group_id}",
            response_token_ids=[rng.randrange(100) for _ in range(n)],
            logp_behaviour=[-rng.random() for _ in range(n)],
            policy_versions=sorted(cycle[t % len(cycle)] for t in range(n)),
            loss_mask=[rng.randint(0, 1) for _ in range(n)],
            finish_reason=rng.choice([FinishReason.STOP, FinishReason.LENGTH]),
            reward=None if i == 0 else rng.random()))
    return Group(group_id=group_id, prompt_id=1000 + group_id, samples=samples)


def test_whole_groups_oldest_version_first_exact_round_trip(tq: TransferQueueDeployment) -> None:
    with ExperienceStore(capacity_in_groups=8, max_staleness=3, transferqueue=tq) as store:
        groups = [
            make_group(0, 3, num_samples=1),
            make_group(1, 1, num_samples=5),
            make_group(2, 2, num_samples=3, num_tokens=0),  # some samples may have empty responses
            make_group(3, [1, 2, 3], num_samples=2),  # partial rollout over three versions: as old as 1
        ]
        store.put(groups)
        assert store.num_rows_in_transferqueue() == sum(len(g.samples) for g in groups)
        assert store.stats()["store/queue_depth_samples"] == 11

        batch = store.get_batch(4, learner_version=3)

        assert [g.group_id for g in batch] == [1, 3, 2, 0]  # oldest version first, then put order
        assert batch == [groups[1], groups[3], groups[2], groups[0]]  # every field, every sample, exactly
        assert store.num_rows_in_transferqueue() == 0
        stats = store.stats()
        assert stats["store/groups_consumed"] == 4
        assert stats["store/staleness_count/2"] == 2 and stats["store/staleness_count/0"] == 1


def test_max_staleness_zero_gives_only_on_policy_groups(tq: TransferQueueDeployment) -> None:
    with ExperienceStore(capacity_in_groups=8, max_staleness=0, transferqueue=tq) as store:
        store.put([make_group(0, 2), make_group(1, 3), make_group(2, [2, 3]), make_group(3, 3), make_group(4, 1)])

        batch = store.get_batch(2, learner_version=3)

        assert [g.group_id for g in batch] == [1, 3]
        assert all(v == 3 for g in batch for s in g.samples for v in s.policy_versions)
        stats = store.stats()
        assert stats["store/groups_dropped_stale"] == 3
        assert stats["store/queue_depth_groups"] == 0 and stats["store/resident_groups"] == 0
        # Once the learner is at 3, a late version-2 group is dropped at put time and never written.
        store.put([make_group(5, 2)])
        assert store.stats()["store/groups_dropped_stale"] == 4 and store.num_rows_in_transferqueue() == 0


def test_put_blocks_when_full_and_times_out_clearly(tq: TransferQueueDeployment) -> None:
    with ExperienceStore(capacity_in_groups=2, max_staleness=1, transferqueue=tq) as store:
        store.put([make_group(0, 0), make_group(1, 0)])
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="store is full"):
            store.put([make_group(2, 0)], timeout_s=0.3)
        assert 0.3 <= time.monotonic() - t0 < 3.0
        assert store.try_put([make_group(2, 0)]) is False
        assert store.stats()["store/queue_depth_groups"] == 2
        with pytest.raises(ValueError, match="never fit"):
            store.put([make_group(i, 0) for i in range(3)])

        blocked = threading.Thread(target=store.put, args=([make_group(3, 0)],), kwargs={"timeout_s": 20})
        blocked.start()
        time.sleep(0.2)
        assert blocked.is_alive()  # still waiting for room
        assert [g.group_id for g in store.get_batch(1, learner_version=0)] == [0]
        blocked.join(timeout=20)
        assert not blocked.is_alive()
        assert [g.group_id for g in store.get_batch(2, learner_version=0)] == [1, 3]
        assert store.stats()["store/producer_wait_s"] > 0.3

        with pytest.raises(TimeoutError, match="producers are not keeping up"):
            store.get_batch(1, learner_version=0, timeout_s=0.2)


def test_memory_stays_bounded_under_a_slow_consumer(tq: TransferQueueDeployment) -> None:
    capacity, samples_per_group = 4, 4
    with ExperienceStore(capacity_in_groups=capacity, max_staleness=100, transferqueue=tq) as store:
        def produce(offset: int) -> None:
            for i in range(15):
                store.put([make_group(offset + i, 0, num_samples=samples_per_group)], timeout_s=30)

        producers = [threading.Thread(target=produce, args=(1000 * p,)) for p in range(2)]
        for t in producers:
            t.start()
        peak_resident, peak_rows = 0.0, 0
        consumed = 0
        while consumed < 30:
            time.sleep(0.03)  # a slow learner
            stats = store.stats()
            peak_resident = max(peak_resident, stats["store/resident_groups"], stats["store/queue_depth_groups"])
            peak_rows = max(peak_rows, store.num_rows_in_transferqueue())
            consumed += len(store.get_batch(2, learner_version=0, timeout_s=30))
        for t in producers:
            t.join(timeout=30)

        assert peak_resident <= capacity
        assert peak_rows <= capacity * samples_per_group
        assert peak_resident == capacity  # the bound was actually reached, so producers did block
        assert store.stats()["store/producer_wait_s"] > 0


@pytest.mark.parametrize(("max_staleness", "on_stale"), [(0, "drop"), (2, "drop"), (1, "wait")])
def test_staleness_bound_never_exceeded_under_random_timings(tq: TransferQueueDeployment, max_staleness: int,
                                                              on_stale: str) -> None:
    """Producers with lagging weights and partial rollouts vs. a learner that steps at random times."""
    num_steps, groups_per_step = 12, 2
    learner = {"version": 0}
    stop = threading.Event()
    errors: list[BaseException] = []
    store = ExperienceStore(capacity_in_groups=6, max_staleness=max_staleness,
                            on_stale=on_stale, transferqueue=tq)  # type: ignore[arg-type]

    def producer(seed: int) -> None:
        rng = random.Random(seed)
        weights, group_id = 0, seed * 100_000
        try:
            while not stop.is_set():
                current = learner["version"]
                if rng.random() < 0.3 or (on_stale == "wait" and not may_produce(weights, current, max_staleness)):
                    weights = current  # weight sync
                if on_stale == "wait" and not may_produce(weights, current, max_staleness):
                    continue
                time.sleep(rng.uniform(0, 0.01))  # generation time
                # A partial rollout may carry tokens from up to two older versions.
                versions = sorted({max(0, weights - rng.choice([0, 0, 1, 2])), weights})
                try:
                    store.put([make_group(group_id, versions, num_samples=2, num_tokens=4, rng=rng)], timeout_s=0.2)
                except TimeoutError:
                    continue
                group_id += 1
        except StoreClosedError:
            pass
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)

    producers = [threading.Thread(target=producer, args=(seed,)) for seed in (1, 2)]
    for t in producers:
        t.start()
    rng = random.Random(0)
    seen: list[int] = []
    try:
        for _ in range(num_steps):
            version = learner["version"]
            batch = store.get_batch(groups_per_step, learner_version=version, timeout_s=20)
            assert len(batch) == groups_per_step
            for g in batch:
                oldest = g.oldest_policy_version
                assert oldest is not None and 0 <= version - oldest <= max_staleness
                assert [s.sample_index for s in g.samples] == [0, 1]  # whole groups only
                seen.append(version - oldest)
            time.sleep(rng.uniform(0, 0.02))  # optimizer step
            learner["version"] = version + 1
    finally:
        stop.set()
        for t in producers:
            t.join(timeout=10)
    assert not errors
    stats = store.stats()
    assert max(seen) <= max_staleness and stats["store/staleness_max"] <= max_staleness
    assert stats["store/groups_dropped_stale"] > 0  # the stale path was exercised
    assert sum(v for k, v in stats.items() if k.startswith("store/staleness_count/")) == num_steps * groups_per_step
    # Every group put is consumed, dropped as stale or still resident.
    assert stats["store/groups_put"] == (stats["store/groups_consumed"] + stats["store/groups_dropped_stale"]
                                         + stats["store/queue_depth_groups"])
    assert stats["store/resident_groups"] == stats["store/queue_depth_groups"] <= 6
    store.close()


def test_snapshot_and_restore_round_trip(tq: TransferQueueDeployment) -> None:
    groups = [make_group(i, [i, i + 1], num_samples=3) for i in range(5)]
    with ExperienceStore(capacity_in_groups=6, max_staleness=5, transferqueue=tq) as store:
        store.put(groups)
        assert store.get_batch(1, learner_version=5) == [groups[0]]
        snapshot = store.snapshot()
        assert snapshot == groups[1:]  # same groups, token ids, log-probs, versions, rewards, in read order
        assert store.stats()["store/queue_depth_groups"] == 4  # snapshot does not consume

    with ExperienceStore(capacity_in_groups=6, max_staleness=5, transferqueue=tq) as restored:
        with pytest.raises(ValueError, match="free slots"):
            restored.restore(snapshot + groups[:3])
        restored.restore(snapshot)
        assert restored.stats()["store/groups_restored"] == 4
        assert restored.get_batch(4, learner_version=5) == groups[1:]


def _wait_for_free_cpus(predicate: Callable[[float], bool], timeout_s: float = 20.0) -> float:
    """Ray's resource view lags actor starts and exits a little: poll it."""
    deadline = time.monotonic() + timeout_s
    while not predicate(free := ray.available_resources().get("CPU", 0.0)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return free


def test_close_wakes_blocked_callers_and_stops_its_actors(ray_session: object) -> None:
    cpus_before = ray.available_resources().get("CPU", 0.0)
    store = ExperienceStore(capacity_in_groups=2, max_staleness=0, num_storage_units=1)
    # Its own controller and storage unit hold one logical CPU each.
    assert _wait_for_free_cpus(lambda free: free <= cpus_before - 2) <= cpus_before - 2
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            store.get_batch(1, learner_version=0, timeout_s=30)
        except BaseException as e:
            outcome.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.2)
    store.close()
    consumer.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreClosedError)
    with pytest.raises(StoreClosedError):
        store.put([make_group(0, 0)])
    store.close()  # idempotent
    assert _wait_for_free_cpus(lambda free: free >= cpus_before) >= cpus_before  # its actors are gone

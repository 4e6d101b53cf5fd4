"""Sleep mode in `RolloutEngine` (rollout.sleep_level) on a fake of vLLM's AsyncLLM: what is called in which order,
and what an engine refuses. vLLM's sleep mode itself needs CUDA; `tests/e2e` has no GPU, BENCHMARKS.md has the run."""

from __future__ import annotations

import asyncio

import pytest

from rlplat.rollout.engine import EngineOptions, RolloutEngine
from rlplat.rollout.sleep import ALL_TAGS, merge_engine_metrics
from rlplat.types import Sample, SamplingOptions


class FakeAsyncLLM:
    """Records the sleep-mode calls RolloutEngine makes on vLLM's AsyncLLM."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True

    async def sleep(self, level: int) -> None:
        self.calls.append(f"sleep({level})")

    async def wake_up(self, tags: list[str]) -> None:
        self.calls.append(f"wake_up({','.join(tags)})")

    async def collective_rpc(self, method: str, args: tuple = ()) -> list[object]:
        self.calls.append(f"rpc({method})")
        return [None]

    async def generate(self, prompt, params, request_id):  # finishes at once, with no tokens
        self.calls.append("generate")
        return
        yield


def engine() -> tuple[RolloutEngine, FakeAsyncLLM]:
    e = RolloutEngine(EngineOptions(model_path="unused", max_model_len=64, enable_sleep_mode=True))
    e.engine = fake = FakeAsyncLLM()  # type: ignore[assignment]
    return e, fake


def test_one_step_sleeps_then_wakes_weights_for_the_sync_then_the_kv_cache() -> None:
    e, fake = engine()

    async def step() -> dict[str, float]:
        slept = await e.sleep(2)
        woken = await e.wake_up(("weights",))
        await e.receive_weights("receive_ipc", (b"handles",), version=1)
        return slept | woken | await e.wake_up(("kv_cache",))

    metrics = asyncio.run(step())
    assert fake.calls == ["reset_prefix_cache", "sleep(2)", "wake_up(weights)", "rpc(receive_ipc)",
                          "reset_prefix_cache", "wake_up(kv_cache)", "reset_prefix_cache"]
    assert {"time/sleep_s", "time/wake_weights_s", "time/wake_kv_cache_s"} <= set(metrics)
    assert e.asleep == set() and e.loaded_version == 1 and not e.weights_discarded


def test_waking_what_is_awake_calls_nothing_and_sleeping_twice_sleeps_once() -> None:
    e, fake = engine()
    assert asyncio.run(e.wake_up(ALL_TAGS)) == {}
    asyncio.run(e.sleep(1))
    assert asyncio.run(e.sleep(1)) == {}
    assert fake.calls == ["reset_prefix_cache", "sleep(1)"] and e.asleep == set(ALL_TAGS)


def test_an_engine_with_requests_in_flight_refuses_to_sleep() -> None:
    e, fake = engine()
    e._inflight.add("s0")
    with pytest.raises(RuntimeError, match="1 requests are in flight"):
        asyncio.run(e.sleep(1))
    assert fake.calls == []


def test_a_weight_load_wakes_sleeping_weights_first() -> None:
    e, fake = engine()  # e.g. a restarted engine's reload while the others still sleep
    asyncio.run(e.sleep(1))
    asyncio.run(e.load_weights(b"", version=3))
    assert fake.calls[2:4] == ["wake_up(weights)", "rpc(load_weights_from_bytes)"] and e.asleep == {"kv_cache"}


def test_generation_wakes_a_level_1_engine_but_not_a_level_2_one_without_new_weights() -> None:
    sample = Sample(group_id=0, sample_index=0, prompt_id=0, prompt_token_ids=[1, 2])
    sampling = SamplingOptions(max_new_tokens=4, temperature=1.0)
    e, fake = engine()
    asyncio.run(e.sleep(1))
    asyncio.run(e.generate([sample], sampling, policy_version=0))
    assert fake.calls[2:4] == ["wake_up(weights,kv_cache)", "reset_prefix_cache"] and e.asleep == set()
    e, fake = engine()
    asyncio.run(e.sleep(2))
    with pytest.raises(RuntimeError, match="slept at level 2"):
        asyncio.run(e.generate([sample], sampling, policy_version=0))
    assert "generate" not in fake.calls


def test_engine_metrics_add_freed_memory_and_keep_the_slowest_time() -> None:
    merged = merge_engine_metrics([{"sleep/freed_gib": 30.0, "time/sleep_s": 0.2},
                                   {"sleep/freed_gib": 28.5, "time/sleep_s": 0.5}, {}])
    assert merged == {"sleep/freed_gib": 58.5, "time/sleep_s": 0.5}
    assert merge_engine_metrics([]) == {}

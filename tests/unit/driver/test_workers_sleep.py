"""The sleep-mode schedule of one step in `Workers` (rollout.sleep_level), on fake actor handles and no Ray:
generate -> sleep -> train -> release the learner's cached memory -> wake weights -> sync weights -> wake kv_cache."""

from __future__ import annotations

from typing import Any

import pytest

from rlplat.driver import workers as workers_module
from rlplat.driver.workers import Workers

ENGINE_RESULTS = {"sleep": {"sleep/freed_gib": 30.0, "time/sleep_s": 0.1},
                  "wake_up": {"time/wake_weights_s": 0.2}}


class FakeHandle:
    """A Ray actor handle whose `.method.remote(*args)` records the call in a shared log and returns at once."""

    def __init__(self, name: str, log: list[str], results: dict[str, Any]) -> None:
        self.name, self.log, self.results = name, log, results

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                shown = ",".join(str(a) for a in args if not isinstance(a, bytes | dict))
                handle.log.append(f"{handle.name}.{method}({shown})")
                return handle.results.get(method)
        return Method


@pytest.fixture
def log(monkeypatch) -> list[str]:
    monkeypatch.setattr(workers_module, "call", lambda refs, phase, timeout_s, key="": refs)  # values, not refs
    return []


def make_workers(log: list[str], sleep_level: int, weight_sync: str = "ipc") -> Workers:
    learner = FakeHandle("learner", log, {"train_step": {"loss/policy": 0.5}, "ipc_payload": b"h",
                                          "weights_bytes": b"w"})
    engines = [FakeHandle(f"engine{i}", log, ENGINE_RESULTS) for i in range(2)]
    return Workers(rollout=engines, learner=learner, weight_sync=weight_sync, sleep_level=sleep_level)


def test_engines_sleep_through_the_train_step_and_wake_around_the_sync(log: list[str]) -> None:
    w = make_workers(log, sleep_level=2)
    metrics = w.train(batch=None)  # type: ignore[arg-type]
    w.sync(1)
    assert log == ["engine0.sleep(2)", "engine1.sleep(2)", "learner.train_step(None)",
                   "learner.release_cached_memory()",
                   "engine0.wake_up(('weights',))", "engine1.wake_up(('weights',))",
                   "learner.ipc_payload()", "engine0.receive_weights(receive_ipc,1)",
                   "engine1.receive_weights(receive_ipc,1)", "learner.release_ipc()",
                   "engine0.wake_up(('kv_cache',))", "engine1.wake_up(('kv_cache',))"]
    assert metrics == {"loss/policy": 0.5, "sleep/freed_gib": 60.0, "time/sleep_s": 0.1}
    assert w.sync_metrics["time/wake_weights_s"] == 0.2 and w.sync_metrics["time/wake_s"] == 0.2


def test_without_sleep_mode_nothing_sleeps_or_wakes(log: list[str]) -> None:
    w = make_workers(log, sleep_level=0, weight_sync="bytes")
    assert w.train(batch=None) == {"loss/policy": 0.5}  # type: ignore[arg-type]
    w.sync(1)
    assert not [entry for entry in log if "sleep" in entry or "wake" in entry or "release_cached" in entry]
    assert w.sync_metrics == {}

"""A hang is a clear failure: an engine or learner process that stops answering (SIGSTOP) ends the run within about
its deadline (cluster.call_timeout_s, or cluster.start_timeout_s for the engine start), with a message naming the
phase and the key, and the last checkpoint stays intact. Real Ray, real vLLM (CPU), the tiny model.

Each test wraps one `Workers` method so that the process is stopped just before that phase's remote call: the stop
is real, the wrapper only times it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rlplat import checkpoint as ck
from rlplat.config import load_config
from rlplat.driver import experience, loop, run_state, workers
from tests.conftest import ROOT, smoke_overrides

DEADLINE_S = 8.0
# After the deadline: abort and shutdown of the stopped actor (QUICK_CALL_TIMEOUT_S = 5 s each), MLflow, Ray's
# bookkeeping. A fixed cost, not a multiple of the deadline: with cluster.call_timeout_s 30 a hang ends in ~30 + this.
SLACK_S = 35.0


def _pid(handle) -> int:
    """The process id of an actor, asked of the actor itself (before it is stopped)."""
    import ray

    return ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=60)


class Stopper:
    """SIGSTOPs processes, records when, and lets them go again at the end (so Ray can finish killing them)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.t_stop: float | None = None

    def stop(self, *handles) -> None:
        self.stop_pids([_pid(h) for h in handles])

    def stop_pids(self, pids: list[int]) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            self.pids.append(pid)
        self.t_stop = time.monotonic()

    def release(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _run(ray_session, tiny_model_dir: Path, out: Path, stopper: Stopper, *extra: str) -> tuple[BaseException, float]:
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", [
        *smoke_overrides(tiny_model_dir, out), f"cluster.call_timeout_s={DEADLINE_S}", "experiment.num_steps=3",
        *extra])
    try:
        with pytest.raises(BaseException) as failure:
            loop.train(cfg, progress=False)
        assert stopper.t_stop is not None, f"the phase under test never ran: {failure.value!r}"
        return failure.value, time.monotonic() - stopper.t_stop
    finally:
        stopper.release()


def _check(error: BaseException, elapsed_s: float, phase: str, key: str = "cluster.call_timeout_s") -> None:
    message = str(error)
    assert isinstance(error, TimeoutError) or phase in message, repr(error)
    assert phase in message and key in message, message
    assert elapsed_s < DEADLINE_S + SLACK_S, f"the run took {elapsed_s:.1f} s after the stop to fail"


def _wrap(monkeypatch, cls, name: str, before) -> None:
    original = getattr(cls, name)

    def wrapped(self, *args, **kwargs):
        before(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapped)


def test_engine_start_on_an_oversubscribed_cluster(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Every CPU of the Ray cluster is taken: the engines can never be scheduled, so they never start."""
    from ray.util.placement_group import placement_group, remove_placement_group

    hog = placement_group([{"CPU": int(ray_session.available_resources()["CPU"])}])
    ray_session.get(hog.ready(), timeout=60)
    stopper = Stopper()
    stopper.t_stop = time.monotonic()
    try:
        error, elapsed = _run(ray_session, tiny_model_dir, tmp_path, stopper,
                              f"cluster.start_timeout_s={DEADLINE_S}")
    finally:
        remove_placement_group(hog)
    _check(error, elapsed, "engine start", "cluster.start_timeout_s")


@pytest.mark.parametrize("partial", [False, True], ids=["full-batch", "april"])
def test_generation(ray_session, tiny_model_dir: Path, tmp_path: Path, monkeypatch, partial: bool) -> None:
    stopper = Stopper()
    cls = experience.PromptApril if partial else experience.PromptBatches
    _wrap(monkeypatch, cls, "collect", lambda self: stopper.stop(*self.workers.rollout))
    error, elapsed = _run(ray_session, tiny_model_dir, tmp_path, stopper, f"rollout.partial.enabled={partial}")
    _check(error, elapsed, "generation")


def test_train_step(ray_session, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    stopper = Stopper()
    _wrap(monkeypatch, workers.Workers, "train", lambda self: stopper.stop(self.learner))
    error, elapsed = _run(ray_session, tiny_model_dir, tmp_path, stopper)
    _check(error, elapsed, "train step")


def test_weight_sync(ray_session, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    stopper = Stopper()
    _wrap(monkeypatch, workers.Workers, "sync", lambda self: stopper.stop(*self.rollout))
    error, elapsed = _run(ray_session, tiny_model_dir, tmp_path, stopper)
    _check(error, elapsed, "weight sync")


def test_checkpoint_save_keeps_the_last_checkpoint(ray_session, tiny_model_dir: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    stopper = Stopper()
    saves = []

    def before(self) -> None:
        saves.append(1)
        if len(saves) == 2:  # step 2's save: step 1's checkpoint is complete by then
            stopper.stop(self.learner)

    _wrap(monkeypatch, workers.Workers, "save_learner_state", before)
    error, elapsed = _run(ray_session, tiny_model_dir, tmp_path, stopper, "checkpoint.every_steps=1")
    _check(error, elapsed, "checkpoint save")
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", [*smoke_overrides(tiny_model_dir, tmp_path),
                                                         "experiment.num_steps=3", "checkpoint.every_steps=1"])
    assert ck.latest(ck.checkpoint_root(tmp_path)).name == "step_000001"
    resumed = run_state.find_checkpoint(cfg, required=True)
    assert resumed is not None and resumed[1].step == 1

"""RolloutActor: one vLLM engine per actor (async actor: generation, abort and weight loads interleave).

Ray restarts a killed RolloutActor (`max_restarts`); the new process starts its engine on the first call and
reports `loaded_version() is None`, so the driver knows to push the current weights before it serves. An engine
whose core process died (a native crash, an OOM kill) cannot serve again: the actor then ends its own process (and
what is left of the engine's), so that Ray restarts it and the driver's recovery takes the same path as for a
killed actor.
With `log_file`, vLLM logs everything there and prints only unexpected warnings (rlplat/rollout/vllm_logs.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from pathlib import Path

import ray

from rlplat.rollout import shm
from rlplat.rollout.engine import EngineOptions, RolloutEngine, is_engine_dead
from rlplat.rollout.vllm_logs import route_vllm_logs
from rlplat.types import Sample, SamplingOptions

log = logging.getLogger("rlplat")


def exit_when_engine_dies(method):
    """An actor method that ends the actor's process when vLLM reports its engine core dead (EngineDeadError):
    the caller then sees the actor die, as after any other crash, and Ray starts a fresh one."""
    @functools.wraps(method)
    async def guarded(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except Exception as e:
            if not is_engine_dead(e):
                raise
            log.error("the vLLM engine core of this rollout actor died; ending the actor so Ray restarts it")
            end_process_tree()
    return guarded


def end_process_tree() -> None:
    """SIGKILL this process's descendants (the engine's leftover workers), then exit at once."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(1)


@ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)
class RolloutActor:
    def __init__(self, options: EngineOptions, log_file: str = "") -> None:
        if log_file:
            route_vllm_logs(Path(log_file), options.model_path)
        self.engine = RolloutEngine(options)
        self._starting: asyncio.Task | None = None
        # vLLM's /dev/shm segments, released after shutdown or by the next actor on this log file (rollout/shm.py)
        self._shm_ledger = Path(f"{log_file}.shm.json") if log_file else None

    async def start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await self._starting

    async def _start(self) -> None:
        if self._shm_ledger:
            shm.release(self._shm_ledger)  # what a killed predecessor left
        await self.engine.start()
        if self._shm_ledger:
            shm.record(self._shm_ledger, shm.child_segments())

    async def loaded_version(self) -> int | None:
        """The policy version of the engine's weights; None for a fresh (or restarted) actor."""
        await self.start()
        return self.engine.loaded_version

    @exit_when_engine_dies
    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        await self.start()
        return await self.engine.generate(samples, sampling, policy_version)

    @exit_when_engine_dies
    async def abort(self) -> int:
        if self.engine.engine is None:
            return 0
        return await self.engine.abort()

    @exit_when_engine_dies
    async def load_weights(self, payload: bytes, version: int | None = None) -> None:
        await self.start()
        await self.engine.load_weights(payload, version)

    @exit_when_engine_dies
    async def receive_weights(self, method: str, payload: object, version: int | None = None) -> None:
        """Weights through `placement.weight_sync` broadcast or ipc (rlplat/rollout/weight_sync.py): the extension
        method gets `payload` (tensor names/shapes, or IPC handles). A top-level argument, so Ray resolves it."""
        await self.start()
        await self.engine.receive_weights(method, (payload,), version)

    @exit_when_engine_dies
    async def score(self, token_ids: list[int]) -> list[float]:
        await self.start()
        return await self.engine.score(token_ids)

    @exit_when_engine_dies
    async def rpc(self, method: str, *args: object) -> object:
        await self.start()
        return await self.engine.rpc(method, *args)

    @exit_when_engine_dies
    async def sleep(self, level: int) -> dict[str, float]:
        """rollout.sleep_level: free the engine's GPU memory while the learner trains (rlplat/rollout/sleep.py)."""
        await self.start()
        return await self.engine.sleep(level)

    @exit_when_engine_dies
    async def wake_up(self, tags: tuple[str, ...]) -> dict[str, float]:
        await self.start()
        return await self.engine.wake_up(tags)

    def shutdown(self) -> None:
        if self._shm_ledger:
            shm.release(self._shm_ledger, mapped_too=True)  # first: the stop may outlast the driver's patience
        self.engine.shutdown()

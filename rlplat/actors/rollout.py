"""RolloutActor: one vLLM engine per actor (async actor: generation, abort and weight loads interleave)."""

from __future__ import annotations

import ray

from rlplat.rollout.engine import EngineOptions, RolloutEngine, SamplingOptions
from rlplat.types import Sample


@ray.remote(num_cpus=1)
class RolloutActor:
    def __init__(self, options: EngineOptions) -> None:
        self.engine = RolloutEngine(options)

    async def start(self) -> None:
        await self.engine.start()

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        return await self.engine.generate(samples, sampling, policy_version)

    async def abort(self) -> int:
        return await self.engine.abort()

    async def load_weights(self, payload: bytes, version: int | None = None) -> None:
        await self.engine.load_weights(payload, version)

    async def score(self, token_ids: list[int]) -> list[float]:
        return await self.engine.score(token_ids)

    async def rpc(self, method: str, *args: object) -> object:
        return await self.engine.rpc(method, *args)

    def shutdown(self) -> None:
        self.engine.shutdown()

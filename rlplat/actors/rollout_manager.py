"""APRIL over Ray rollout actors, driven from the controller process.

All the logic is `rlplat.rollout.april_manager.AprilManager` (pure asyncio, unit-tested with fake workers); this
module only adapts `RolloutActor` handles to its worker protocol and gives the synchronous controller a blocking
`collect`. It lives in the driver, not in an actor of its own, so that the fresh-prompt callback (the driver's
prompt cursor) and the partial buffer (checkpoint state) stay where the controller can reach them, and groups
cross a process boundary only to and from the rollout actors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from rlplat.config import PartialRolloutConfig
from rlplat.rollout.april_manager import AprilManager, AprilStep
from rlplat.types import Group, Sample, SamplingOptions, TokenLedger


class RemoteRolloutWorker:
    """A `RolloutActor` handle seen as an APRIL worker: each call is one visible `.remote()`, awaited."""

    def __init__(self, handle: object) -> None:
        self.handle = handle

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        return await self.handle.generate.remote(samples, sampling, policy_version)  # type: ignore[attr-defined]

    async def abort(self) -> int:
        return await self.handle.abort.remote()  # type: ignore[attr-defined]


class RolloutManager:
    """APRIL across `handles` (RolloutActor). `collect` blocks until this step's N complete groups are ready."""

    def __init__(self, handles: Sequence[object], cfg: PartialRolloutConfig) -> None:
        self.april = AprilManager([RemoteRolloutWorker(h) for h in handles], over_provision=cfg.over_provision,
                                  max_age_in_versions=cfg.max_age_in_versions)

    def collect(self, num_groups: int, fresh: Callable[[int], list[Group]], sampling: SamplingOptions,
                policy_version: int, *, budget_for: Callable[[Group], int] | None = None) -> AprilStep:
        return asyncio.run(self.april.collect(num_groups, fresh, sampling, policy_version, budget_for=budget_for))

    def state(self) -> list[Group]:
        """The partial buffer, for checkpoints (deep copy, serving order)."""
        return self.april.state()

    def ledger(self) -> TokenLedger:
        return self.april.ledger

    def load_state(self, groups: list[Group], ledger: TokenLedger | None = None) -> None:
        self.april.load_state(groups, ledger)

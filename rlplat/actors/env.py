"""EnvActor: an EnvPool text env in its own Ray actor (`env.in_actor`), and `RemoteTextEnv`, the `TextEnv` the agent
loop drives it through. Each reset/step/release is one Ray round trip; the pool, its threads and its memory live
on whichever node Ray places the actor (for pools too heavy for the driver's node, e.g. many Atari envs)."""

from __future__ import annotations

from collections.abc import Sequence

import ray

from rlplat.config import EnvConfig
from rlplat.envs.registry import make_episode_env
from rlplat.envs.text_env import StepResult, TextEnv, TextEnvSpec


@ray.remote(num_cpus=1)
class EnvActor:
    def __init__(self, cfg: EnvConfig, num_envs: int, batch_size: int | None = None) -> None:
        self.env = make_episode_env(cfg, num_envs, batch_size=batch_size)

    def describe(self) -> tuple[int, TextEnvSpec]:
        return self.env.num_envs, self.env.spec

    def reset(self, seeds: list[int]) -> list[str]:
        return self.env.reset(seeds)

    def step(self, env_ids: list[int], action_texts: list[str]) -> list[StepResult]:
        return self.env.step(env_ids, action_texts)

    def release(self, env_ids: list[int]) -> None:
        self.env.release(env_ids)

    def close(self) -> None:
        self.env.close()


class RemoteTextEnv:
    """A `TextEnv` whose pool lives in an EnvActor. Not thread-safe, like every TextEnv: one caller drives it."""

    def __init__(self, actor, timeout_s: float = 600.0) -> None:
        self.actor, self.timeout_s = actor, timeout_s
        self.num_envs, self.spec = self._get(actor.describe.remote())

    def _get(self, ref):
        return ray.get(ref, timeout=self.timeout_s)

    def reset(self, seeds: Sequence[int]) -> list[str]:
        return self._get(self.actor.reset.remote([int(s) for s in seeds]))

    def step(self, env_ids: Sequence[int], action_texts: Sequence[str]) -> list[StepResult]:
        return self._get(self.actor.step.remote(list(env_ids), list(action_texts)))

    def release(self, env_ids: Sequence[int]) -> None:
        self._get(self.actor.release.remote(list(env_ids)))

    def close(self) -> None:
        try:
            self._get(self.actor.close.remote())
        finally:
            ray.kill(self.actor)


def make_env(cfg: EnvConfig, num_envs: int, *, batch_size: int | None = None, timeout_s: float = 600.0) -> TextEnv:
    """The spec's text env: in this process, or (env.in_actor) in an EnvActor behind a RemoteTextEnv."""
    if not cfg.in_actor:
        return make_episode_env(cfg, num_envs, batch_size=batch_size)
    return RemoteTextEnv(EnvActor.remote(cfg, num_envs, batch_size), timeout_s)

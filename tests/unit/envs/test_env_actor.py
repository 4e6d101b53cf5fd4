"""An EnvActor plays exactly like the driver's pool: same observations, rewards and done flags for the same seeds
and actions (real EnvPool, real Ray, no engine)."""

from __future__ import annotations

from rlplat.actors.env import RemoteTextEnv, make_env
from rlplat.config import EnvConfig


def test_env_in_an_actor_plays_like_the_local_pool(ray_session) -> None:
    cfg = EnvConfig(task_id="CartPole-v1", renderer="compact", replace_whitespace="")
    local = make_env(cfg, 4, batch_size=1)  # batch_size 1: any subset of envs may step (APRIL's pool)
    remote = make_env(EnvConfig(task_id="CartPole-v1", renderer="compact", replace_whitespace="", in_actor=True), 4,
                      batch_size=1)
    assert isinstance(remote, RemoteTextEnv) and not isinstance(local, RemoteTextEnv)
    try:
        assert remote.num_envs == 4 and remote.spec == local.spec
        seeds = [3, 3, 7, 9]
        assert remote.reset(seeds) == local.reset(seeds)
        for turn in range(6):
            ids = [0, 1, 2, 3] if turn % 2 == 0 else [2, 0]
            actions = ["l" if (turn + i) % 3 else "r" for i in ids]
            assert remote.step(ids, actions) == local.step(ids, actions)
        remote.release([1])
        local.release([1])
    finally:
        local.close()
        remote.close()

"""The one env factory: `make_text_env` builds an `EnvPoolTextEnv` for a task id with its renderer, and
`make_episode_env` builds the one the spec's `env:` section describes. Task ids and renderers are checked here
only, naming close matches."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Literal

import envpool

from rlplat.config import EnvConfig
from rlplat.envs.renderers import COMPACT_RENDERERS, RENDERERS, Renderer
from rlplat.envs.text_env import EnvPoolTextEnv

RendererKind = Literal["default", "compact"]  # env.renderer: RENDERERS or COMPACT_RENDERERS


def make_text_env(
    task_id: str,
    num_envs: int,
    *,
    renderer: RendererKind = "default",
    batch_size: int | None = None,
    seed: int = 0,
    max_episode_steps: int | None = None,
    invalid_action_penalty: float = -1.0,
    num_threads: int | None = None,
) -> EnvPoolTextEnv:
    """An EnvPool text env for `task_id` with its `renderer` kind (see `EnvPoolTextEnv` for the other arguments).

    Raises ValueError, naming close matches, for a task id EnvPool does not know or one without a renderer.
    """
    known = envpool.list_all_envs()
    if task_id not in known:
        raise ValueError(f"unknown EnvPool task id {task_id!r}{_suggest(task_id, known)}")
    return EnvPoolTextEnv(
        task_id,
        num_envs,
        renderer=_renderer(task_id, renderer)(),
        batch_size=batch_size,
        seed=seed,
        max_episode_steps=max_episode_steps,
        invalid_action_penalty=invalid_action_penalty,
        num_threads=num_threads,
    )


def make_episode_env(cfg: EnvConfig, num_envs: int, *, batch_size: int | None = None) -> EnvPoolTextEnv:
    """The text env of `cfg.task_id` with `cfg.renderer`, by default in EnvPool's sync mode (every live episode
    steps at once; batch_size=1 lets any subset step, as APRIL's replay needs). Raises ValueError, naming close
    matches, for a task id EnvPool does not know or without a renderer."""
    return make_text_env(cfg.task_id, num_envs, renderer=cfg.renderer, seed=cfg.seed, batch_size=batch_size,
                         max_episode_steps=cfg.max_episode_steps, invalid_action_penalty=cfg.invalid_action_penalty,
                         num_threads=cfg.num_threads)


def supported_task_ids() -> list[str]:
    """Task ids that have a (default) renderer, sorted."""
    return sorted(RENDERERS)


def _renderer(task_id: str, kind: RendererKind) -> Callable[[], Renderer]:
    if kind == "default":
        if task_id not in RENDERERS:
            raise ValueError(f"no text renderer for {task_id!r}{_suggest(task_id, list(RENDERERS))}; "
                             f"tasks with renderers: {', '.join(supported_task_ids())}")
        return RENDERERS[task_id]
    if kind == "compact":
        if task_id not in COMPACT_RENDERERS:
            raise ValueError(f"no compact renderer for {task_id!r}{_suggest(task_id, list(COMPACT_RENDERERS))}; "
                             f"tasks with one: {', '.join(sorted(COMPACT_RENDERERS))} (or use renderer: default)")
        return COMPACT_RENDERERS[task_id]
    raise ValueError(f"unknown renderer kind {kind!r} (default, compact)")


def _suggest(task_id: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(task_id, candidates, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""

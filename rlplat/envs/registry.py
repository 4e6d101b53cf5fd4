"""`make_text_env`: build an `EnvPoolTextEnv` for a task id, with its renderer from `RENDERERS`."""

from __future__ import annotations

import difflib

import envpool

from rlplat.envs.renderers import RENDERERS
from rlplat.envs.text_env import EnvPoolTextEnv


def make_text_env(
    task_id: str,
    num_envs: int,
    *,
    batch_size: int | None = None,
    seed: int = 0,
    max_episode_steps: int | None = None,
    invalid_action_penalty: float = -1.0,
    num_threads: int | None = None,
) -> EnvPoolTextEnv:
    """An EnvPool text env for `task_id` (see `EnvPoolTextEnv` for the arguments).

    Raises ValueError, naming close matches, for a task id EnvPool does not know or one without a renderer.
    """
    known = envpool.list_all_envs()
    if task_id not in known:
        raise ValueError(f"unknown EnvPool task id {task_id!r}{_suggest(task_id, known)}")
    if task_id not in RENDERERS:
        raise ValueError(
            f"no text renderer for {task_id!r}{_suggest(task_id, list(RENDERERS))}; "
            f"tasks with renderers: {', '.join(supported_task_ids())}"
        )
    return EnvPoolTextEnv(
        task_id,
        num_envs,
        renderer=RENDERERS[task_id](),
        batch_size=batch_size,
        seed=seed,
        max_episode_steps=max_episode_steps,
        invalid_action_penalty=invalid_action_penalty,
        num_threads=num_threads,
    )


def supported_task_ids() -> list[str]:
    """Task ids that have a renderer, sorted."""
    return sorted(RENDERERS)


def _suggest(task_id: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(task_id, candidates, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""

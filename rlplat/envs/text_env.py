"""Text environments for multi-turn episodes played by a language model, and an EnvPool-backed implementation.

A `TextEnv` holds `num_envs` episodes. `reset(seeds)` starts one episode per env and returns the first
observations as text; `step(env_ids, action_texts)` plays the model's replies in some of them and returns one
`StepResult` each. An env whose episode ended (done=True) takes no more actions until the next reset(); so does
one whose episode the caller gave up on (`release`, e.g. when a token budget ended it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import envpool
import gymnasium
import numpy as np

from rlplat.envs.renderers import Renderer


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one env returns for one action."""

    env_id: int  # in [0, num_envs)
    observation: str  # rendered observation after the action; when done, the episode's terminal observation
    reward: float  # env reward, plus the invalid-action penalty when invalid_action
    done: bool  # episode over (terminated or truncated): the env takes no action until reset()
    invalid_action: bool  # the reply did not parse: the renderer's default action was played
    truncated: bool = False  # done because the step limit was reached, not because the episode terminated


@dataclass(frozen=True, slots=True)
class TextEnvSpec:
    """Fixed facts about a text env that a prompt or a trainer may need."""

    task_id: str
    action_help: str  # one line for the prompt, e.g. "Answer with left or right: ..."
    max_episode_steps: int  # steps after which an episode is truncated
    invalid_action_penalty: float  # added to the reward of a step whose reply did not parse


class TextEnv(Protocol):
    """A batch of `num_envs` text episodes. Not thread-safe: one caller drives it."""

    num_envs: int
    spec: TextEnvSpec

    def reset(self, seeds: Sequence[int]) -> list[str]:
        """Start a new episode in every env, env i from seeds[i]; envs given the same seed start identically."""
        ...

    def step(self, env_ids: Sequence[int], action_texts: Sequence[str]) -> list[StepResult]:
        """Play action_texts[k] in env env_ids[k]; returns the results in the order of env_ids."""
        ...

    def release(self, env_ids: Sequence[int]) -> None:
        """End the live episodes of env_ids without stepping them: those envs take no action until reset()."""
        ...

    def close(self) -> None: ...


# Where each env stands, from this layer's point of view.
_FREE = 0  # no live episode (never reset, or its done result has been produced): may run filler steps
_READY = 1  # live episode, waiting for the caller's action
_SENT = 2  # the caller's action is in EnvPool, result not received yet
_FILLER = 3  # a filler action is in EnvPool; its result will be dropped


class EnvPoolTextEnv:
    """A `TextEnv` over one EnvPool pool, driven with EnvPool's async `send(actions, env_id)` / `recv()`.

    Seeds: EnvPool fixes every env's RNG seed when the pool is created (`seed=` takes an int, giving env i
    `seed + i`, or a sequence, one seed per env) and cannot reseed an env later: `reset(seed=...)` is ignored and
    each auto-reset continues the env's RNG stream. So `reset(seeds)` builds a new pool with `seed=list(seeds)`
    (a few ms; ~0.1 s for Sokoban, which loads its level file) unless the current pool was built with exactly
    these seeds and never reset. `reset()` without seeds uses `seed + r * num_envs + i` for the r-th reset.

    Async: with batch_size < num_envs, EnvPool's recv() returns as soon as `batch_size` envs have stepped, so
    envs the caller has answered are stepped while it still generates for the others. EnvPool's recv() blocks
    until exactly `batch_size` results exist, so whenever fewer than `batch_size` envs are in flight this class
    pads with filler steps (the default action) in envs with no live episode and drops their results. Fillers
    are what keep the last running episodes moving once most envs have finished. With batch_size == num_envs
    (EnvPool's sync mode) EnvPool mixes up env ids unless one send() covers the whole batch, so there actions
    are queued and sent together, with the fillers, when results are received.

    Auto-reset: EnvPool (1.x, "next step" mode) returns the terminal observation with done=True, and resets the
    env on the next action sent to it, returning reward 0 and the new episode's first observation. Here the done
    result is the last one the caller gets for that episode; the env then only ever runs fillers, so no
    post-reset observation can reach the finished episode. Some EnvPool tasks ignore `max_episode_steps`
    (Jumanji Game2048), so the limit is also applied here from `info["elapsed_step"]` (done, truncated=True).

    `step()` sends and then receives until every requested env is back; other results that arrive meanwhile
    (from `step_async`) are kept for `recv_ready()`. `step()` refuses up front (ValueError) a call it could not
    finish: when the envs in flight would not make whole batches and too few envs are free to pad them.
    """

    def __init__(
        self,
        task_id: str,
        num_envs: int,
        *,
        renderer: Renderer,
        batch_size: int | None = None,
        seed: int = 0,
        max_episode_steps: int | None = None,
        invalid_action_penalty: float = -1.0,
        num_threads: int | None = None,
    ) -> None:
        """num_threads: EnvPool worker threads; None = min(batch_size, CPU count) (EnvPool's own default is
        batch_size, which oversubscribes small machines)."""
        batch_size = num_envs if batch_size is None else batch_size
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 1 <= batch_size <= num_envs or num_envs % batch_size != 0:
            raise ValueError(f"batch_size must be in [1, num_envs] and divide num_envs={num_envs}, got {batch_size}")
        self.num_envs = num_envs
        self.batch_size = batch_size
        self._task_id = task_id
        self._renderer = renderer
        self._penalty = float(invalid_action_penalty)
        self._seed = seed
        self._make_kwargs: dict[str, Any] = {
            "num_envs": num_envs,
            "batch_size": batch_size,
            "num_threads": num_threads if num_threads is not None else min(batch_size, os.cpu_count() or 1),
            **_asset_kwargs(task_id),
        }
        if max_episode_steps is not None:
            self._make_kwargs["max_episode_steps"] = max_episode_steps
        self._pool_seeds: list[int] | None = [seed + i for i in range(num_envs)]  # None once the pool was reset
        self._pool = self._make_pool(self._pool_seeds)
        _check_action_space(self._pool, renderer, task_id)
        self.spec = TextEnvSpec(
            task_id=task_id,
            action_help=renderer.action_help,
            max_episode_steps=int(self._pool.config["max_episode_steps"]),
            invalid_action_penalty=self._penalty,
        )
        self._state = [_FREE] * num_envs
        self._invalid = [False] * num_envs  # whether the action in flight for env i came from an unparseable reply
        self._buffered: dict[int, StepResult] = {}  # received results of step_async actions, not yet returned
        self._queued_ids: list[int] = []  # actions not yet handed to EnvPool (sync mode only, see class doc)
        self._queued_actions: list[int] = []
        self._num_in_flight = 0  # caller actions + fillers, queued or inside EnvPool
        self._num_sent = 0  # caller actions, queued or inside EnvPool
        self._num_resets = 0
        self.num_steps = 0  # caller actions played since construction
        self.num_invalid_actions = 0  # of which unparseable
        self.num_filler_steps = 0  # padding steps, results dropped

    def reset(self, seeds: Sequence[int] | None = None) -> list[str]:
        """Start an episode in every env (env i from seeds[i]) and return the first observations in env order.

        Envs given equal seeds start from identical states. Any action still in flight is abandoned.
        """
        if seeds is None:
            seeds = [self._seed + self._num_resets * self.num_envs + i for i in range(self.num_envs)]
        seed_list = [int(s) for s in seeds]
        if len(seed_list) != self.num_envs:
            raise ValueError(f"reset() needs one seed per env ({self.num_envs}), got {len(seed_list)}")
        if seed_list != self._pool_seeds:  # a pool that was reset has moved its envs' RNG streams on
            self._pool.close()
            self._pool = self._make_pool(seed_list)
        self._pool_seeds = None
        self._num_resets += 1
        self._pool.async_reset()
        texts = [""] * self.num_envs
        for _ in range(self.num_envs // self.batch_size):
            obs, _, _, _, info = self._pool.recv()
            for k, env_id in enumerate(info["env_id"].tolist()):
                texts[env_id] = self._renderer.render(_take(obs, k), _InfoRow(info, k))
        self._state = [_READY] * self.num_envs
        self._buffered.clear()
        self._queued_ids, self._queued_actions = [], []
        self._num_in_flight = self._num_sent = 0
        return texts

    def step(self, env_ids: Sequence[int], action_texts: Sequence[str]) -> list[StepResult]:
        """Play action_texts[k] in env env_ids[k] and wait for all of them; results in the order of env_ids."""
        ids = self._check_send(env_ids, action_texts)
        if not ids:
            return []
        in_flight_after = self._num_in_flight + len(ids)
        pad = -in_flight_after % self.batch_size
        num_free = self._state.count(_FREE)
        if pad > num_free:
            raise ValueError(
                f"step() of {len(ids)} envs cannot finish: {in_flight_after} envs would be in flight, EnvPool "
                f"returns batches of {self.batch_size}, and only {num_free} envs are free to pad with. Step more "
                "envs at once (a multiple of batch_size), or use step_async()/recv_ready()."
            )
        self._send(ids, action_texts)
        wanted = set(ids)
        got: dict[int, StepResult] = {}
        while len(got) < len(ids):
            for result in self._recv_batch():
                if result.env_id in wanted:
                    got[result.env_id] = result
                else:
                    self._buffered[result.env_id] = result
        return [got[i] for i in ids]

    def step_async(self, env_ids: Sequence[int], action_texts: Sequence[str]) -> None:
        """Send actions without waiting; collect their results with recv_ready()."""
        self._send(self._check_send(env_ids, action_texts), action_texts)

    def recv_ready(self) -> list[StepResult]:
        """Results of step_async actions that are ready (at least one, blocking for it); [] if none is in flight.

        Blocks for one EnvPool batch at a time. Raises ValueError if fewer than batch_size envs are in flight and
        too few envs are free to pad with (send actions for more envs first).
        """
        if self._buffered:
            results = list(self._buffered.values())
            self._buffered.clear()
            return results
        while self._num_sent > 0:
            results = self._recv_batch()
            if results:
                return results
        return []

    def release(self, env_ids: Sequence[int]) -> None:
        """Give up the live episodes of env_ids (waiting for an action): their envs become free, so they may run
        filler steps. Without this an episode a budget ended while its env was not done would stall sync mode:
        EnvPool would wait for an action that never comes."""
        ids = [int(i) for i in env_ids]
        for i in ids:
            if not 0 <= i < self.num_envs:
                raise ValueError(f"env id {i} out of range [0, {self.num_envs})")
            if self._state[i] != _READY or i in self._buffered:
                raise ValueError(f"env {i} has no episode waiting for an action")
        for i in ids:
            self._state[i] = _FREE

    def metrics(self) -> dict[str, float]:
        """Counters since construction, as "<group>/<name>" metrics."""
        return {
            "env/steps": float(self.num_steps),
            "env/invalid_actions": float(self.num_invalid_actions),
            "env/invalid_action_rate": self.num_invalid_actions / max(self.num_steps, 1),
            "env/filler_steps": float(self.num_filler_steps),
        }

    def close(self) -> None:
        self._pool.close()

    def _make_pool(self, seeds: list[int]) -> Any:
        # gymnasium warns about float64 Box bounds in EnvPool's specs; the spaces are built lazily, so build them here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            pool = envpool.make_gymnasium(self._task_id, seed=seeds, **self._make_kwargs)
            _ = pool.observation_space, pool.action_space
        return pool

    def _check_send(self, env_ids: Sequence[int], action_texts: Sequence[str]) -> list[int]:
        ids = [int(i) for i in env_ids]
        if len(ids) != len(action_texts):
            raise ValueError(f"got {len(ids)} env ids but {len(action_texts)} action texts")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate env ids in {ids}")
        for i in ids:
            if not 0 <= i < self.num_envs:
                raise ValueError(f"env id {i} out of range [0, {self.num_envs})")
            if i in self._buffered:
                raise ValueError(f"env {i} has a result not yet collected by recv_ready()")
            if self._state[i] != _READY:
                reason = "its action is in flight" if self._state[i] == _SENT else "it has no live episode; reset()"
                raise ValueError(f"env {i} is not waiting for an action: {reason}")
        return ids

    def _send(self, ids: list[int], action_texts: Sequence[str]) -> None:
        for env_id, text in zip(ids, action_texts, strict=True):
            action = self._renderer.parse_action(text)
            invalid = action is None
            self._invalid[env_id] = invalid
            self.num_invalid_actions += invalid
            self._queued_ids.append(env_id)
            self._queued_actions.append(self._renderer.default_action if action is None else action)
            self._state[env_id] = _SENT
        self._num_in_flight += len(ids)
        self._num_sent += len(ids)
        self.num_steps += len(ids)
        if self.batch_size < self.num_envs:
            self._flush()

    def _flush(self) -> None:
        if self._queued_ids:
            self._pool.send(np.asarray(self._queued_actions, np.int32), np.asarray(self._queued_ids, np.int32))
            self._queued_ids, self._queued_actions = [], []

    def _recv_batch(self) -> list[StepResult]:
        """Receive one EnvPool batch; return the results of caller actions in it, dropping fillers."""
        self._pad_with_fillers()
        self._flush()
        obs, reward, terminated, truncated, info = self._pool.recv()
        elapsed = info["elapsed_step"].tolist()
        env_ids = info["env_id"].tolist()
        results = []
        for k, env_id in enumerate(env_ids):
            self._num_in_flight -= 1
            if self._state[env_id] == _FILLER:
                self._state[env_id] = _FREE
                continue
            assert self._state[env_id] == _SENT, f"env {env_id} returned while not in flight"
            self._num_sent -= 1
            cut = bool(truncated[k]) or (not terminated[k] and elapsed[k] >= self.spec.max_episode_steps)
            done = bool(terminated[k]) or cut
            invalid = self._invalid[env_id]
            results.append(
                StepResult(
                    env_id=env_id,
                    observation=self._renderer.render(_take(obs, k), _InfoRow(info, k)),
                    reward=float(reward[k]) + (self._penalty if invalid else 0.0),
                    done=done,
                    invalid_action=invalid,
                    truncated=cut,
                )
            )
            self._state[env_id] = _FREE if done else _READY
        return results

    def _pad_with_fillers(self) -> None:
        missing = self.batch_size - self._num_in_flight
        if missing <= 0:
            return
        free = [i for i, state in enumerate(self._state) if state == _FREE][:missing]
        if len(free) < missing:
            raise ValueError(
                f"EnvPool returns batches of {self.batch_size} but only {self._num_in_flight} envs are in flight and "
                f"{len(free)} are free to pad with: send actions for more envs first"
            )
        for i in free:
            self._state[i] = _FILLER
        self._queued_ids += free
        self._queued_actions += [self._renderer.default_action] * missing
        self._num_in_flight += missing
        self.num_filler_steps += missing


def _take(tree: Any, k: int) -> Any:
    """Row k of a batch: arrays are indexed, (nested) dicts are indexed leaf by leaf."""
    if type(tree) is dict:  # EnvPool returns plain dicts; an ABC isinstance check costs more than a CartPole render
        return {key: _take(value, k) for key, value in tree.items()}
    return tree[k]


class _InfoRow(Mapping[str, Any]):
    """Row k of EnvPool's batched info dict, indexed only when a renderer reads a key (most never do)."""

    __slots__ = ("_batch", "_k")

    def __init__(self, batch: dict[str, Any], k: int) -> None:
        self._batch, self._k = batch, k

    def __getitem__(self, key: str) -> Any:
        return _take(self._batch[key], self._k)

    def __iter__(self) -> Iterator[str]:
        return iter(self._batch)

    def __len__(self) -> int:
        return len(self._batch)


def _asset_kwargs(task_id: str) -> dict[str, Any]:
    """EnvPool 1.2.5 looks for Jumanji data under envpool_assets/, which lacks jumanji/: Sokoban then silently
    plays one built-in level for every seed and Sudoku fails to load. The data ships in the envpool package
    itself, so point Jumanji tasks there when the configured asset root lacks it."""
    from envpool.jumanji.registration import jumanji_env_ids
    from envpool.registration import base_path

    package_dir = os.path.dirname(os.path.abspath(envpool.__file__))
    if task_id.removeprefix("Jumanji/") not in jumanji_env_ids:
        return {}
    if os.path.isdir(os.path.join(base_path, "jumanji", "assets")):
        return {}
    if not os.path.isdir(os.path.join(package_dir, "jumanji", "assets")):
        return {}
    return {"base_path": package_dir}


def _check_action_space(pool: Any, renderer: Renderer, task_id: str) -> None:
    space = pool.action_space
    if not isinstance(space, gymnasium.spaces.Discrete):
        raise ValueError(f"{task_id} has action space {space}; text envs support Discrete action spaces only")
    if not 0 <= renderer.default_action < int(space.n):
        raise ValueError(f"renderer default_action {renderer.default_action} is outside {task_id}'s {space}")

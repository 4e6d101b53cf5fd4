"""Text environments over real EnvPool pools (CPU, a few seconds)."""

from __future__ import annotations

import doctest
import re

import pytest

from rlplat.envs import renderers
from rlplat.envs.registry import make_text_env, supported_task_ids
from rlplat.envs.renderers import (
    RENDERERS,
    CartPoleRenderer,
    Game2048Renderer,
    MiniGridRenderer,
    Renderer,
    SokobanRenderer,
)
from rlplat.envs.text_env import EnvPoolTextEnv, StepResult, TextEnv

RANDOM_START_TASKS = ["CartPole-v1", "MiniGrid-DoorKey-5x5-v0", "Game2048-v1", "Sokoban-v0"]


def _pole_state(text: str) -> tuple[float, float]:
    """(cart position, pole angle) from a CartPole observation text."""
    position = float(re.search(r"cart position: (\S+)", text).group(1))  # type: ignore[union-attr]
    angle = float(re.search(r"pole angle: (\S+) rad", text).group(1))  # type: ignore[union-attr]
    return position, angle


def _play_to_end(env: EnvPoolTextEnv, action_text: str, max_turns: int = 1000) -> dict[int, list[StepResult]]:
    """Step every live env with the same reply until all episodes are done; results per env."""
    history: dict[int, list[StepResult]] = {i: [] for i in range(env.num_envs)}
    live = list(range(env.num_envs))
    for _ in range(max_turns):
        if not live:
            return history
        for result in env.step(live, [action_text] * len(live)):
            history[result.env_id].append(result)
        live = [i for i in live if not history[i][-1].done]
    raise AssertionError("episodes did not finish")


def test_cartpole_always_left_terminates_with_terminal_observation() -> None:
    env = make_text_env("CartPole-v1", 4, seed=3)
    first = env.reset([1, 2, 3, 4])
    assert all(abs(v) <= 0.05 for text in first for v in _pole_state(text))
    history = _play_to_end(env, "left")
    for results in history.values():
        assert [r.done for r in results] == [False] * (len(results) - 1) + [True]
        assert all(r.reward == 1.0 and not r.invalid_action for r in results)
        # The done step shows the pole fallen, not the auto-reset start of the next episode.
        position, angle = _pole_state(results[-1].observation)
        assert abs(angle) > 0.2095 or abs(position) > 2.4
        assert not results[-1].truncated
    with pytest.raises(ValueError, match="no live episode"):
        env.step([0], ["left"])
    env.close()


def test_minigrid_scripted_path_reaches_goal() -> None:
    env = make_text_env("MiniGrid-Empty-5x5-v0", 2)
    env.reset([0, 0])  # the agent starts at (1, 1) facing east; the goal is at (3, 3)
    results = [env.step([0, 1], [a, a])[0] for a in ["forward", "Forward.", "turn right", "forward", "FORWARD"]]
    assert [r.done for r in results] == [False, False, False, False, True]
    assert results[-1].reward == pytest.approx(1 - 0.9 * 5 / 100)  # MiniGrid: 1 - 0.9 * steps / max_steps
    env.close()


@pytest.mark.parametrize(("task_id", "reply"), [("Game2048-v1", "up"), ("Sokoban-v0", "left")])
def test_jumanji_episodes_truncate_at_step_limit(task_id: str, reply: str) -> None:
    env = make_text_env(task_id, 2, max_episode_steps=5)
    assert env.spec.max_episode_steps == 5
    env.reset([7, 8])
    history = _play_to_end(env, reply)
    for results in history.values():  # neither game can end within 5 moves of one direction
        assert [(r.done, r.truncated) for r in results] == [(False, False)] * 4 + [(True, True)]
    env.close()


@pytest.mark.parametrize("task_id", RANDOM_START_TASKS)
def test_same_seed_same_start_different_seed_different_start(task_id: str) -> None:
    env = make_text_env(task_id, 4, batch_size=2)
    texts = env.reset([11, 11, 12, 12])
    assert texts[0] == texts[1] and texts[2] == texts[3]
    assert texts[0] != texts[2]
    env.step([0, 1, 2, 3], ["left"] * 4)  # move the envs' RNG streams on
    assert env.reset([11, 11, 12, 12]) == texts  # reset with the same seeds replays the same starts
    assert env.reset() != env.reset()  # seedless resets draw fresh seeds
    env.close()


def test_invalid_action_is_penalised_counted_and_plays_default() -> None:
    env = make_text_env("CartPole-v1", 2, invalid_action_penalty=-0.5)
    env.reset([5, 5])
    bad, good = env.step([0, 1], ["jump!", "left"])  # CartPole's default action is 0 = left
    assert bad.invalid_action and not good.invalid_action
    assert bad.reward == pytest.approx(1.0 - 0.5) and good.reward == 1.0
    assert bad.observation == good.observation and not bad.done
    env.step([0, 1], ["", "right"])
    assert env.num_invalid_actions == 2 and env.num_steps == 4
    assert env.metrics()["env/invalid_action_rate"] == pytest.approx(0.5)
    env.close()


def test_async_batches_return_every_env_and_match_sync() -> None:
    replies = ["left", "right", "right", "left", "nonsense", "left", "right", "left"]
    sync = make_text_env("CartPole-v1", 8)
    asynchronous = make_text_env("CartPole-v1", 8, batch_size=2)
    seeds = [0, 1, 2, 3, 4, 5, 6, 7]
    assert sync.reset(seeds) == asynchronous.reset(seeds)

    expected = sync.step(range(8), replies)
    got = asynchronous.step(range(8), replies)
    assert [r.env_id for r in got] == list(range(8))
    assert got == expected

    asynchronous.step_async([5, 2, 7], [replies[i] for i in (5, 2, 7)])
    asynchronous.step_async([0, 1, 3, 4, 6], [replies[i] for i in (0, 1, 3, 4, 6)])
    received: list[StepResult] = []
    while len(received) < 8:
        batch = asynchronous.recv_ready()
        assert batch
        received += batch
    assert asynchronous.recv_ready() == []
    expected = sync.step(range(8), replies)
    assert sorted(received, key=lambda r: r.env_id) == expected

    # In EnvPool's sync mode split sends must reach EnvPool as one call; the env queues them.
    sync.step_async([6, 1], [replies[i] for i in (6, 1)])
    sync.step_async([0, 2, 3, 4, 5, 7], [replies[i] for i in (0, 2, 3, 4, 5, 7)])
    from_sync = sorted(sync.recv_ready(), key=lambda r: r.env_id)
    assert from_sync == sorted(asynchronous.step(range(8), replies), key=lambda r: r.env_id)
    sync.close()
    asynchronous.close()


def test_async_runs_every_episode_to_the_end_with_fillers() -> None:
    env = make_text_env("CartPole-v1", 8, batch_size=4)
    env.reset(list(range(8)))
    history = _play_to_end(env, "right")  # live envs shrink to 7, 6, ...: fillers pad the batches
    assert all(results[-1].done for results in history.values())
    assert env.num_filler_steps > 0
    env.close()


def test_step_that_cannot_fill_a_batch_is_refused_before_sending() -> None:
    env = make_text_env("CartPole-v1", 4, batch_size=2)
    env.reset([0, 1, 2, 3])
    with pytest.raises(ValueError, match="cannot finish"):
        env.step([0], ["left"])  # 1 env in flight, batches of 2, no free env to pad with
    assert len(env.step([0, 1], ["left", "left"])) == 2  # nothing was sent: env 0 still takes an action
    with pytest.raises(ValueError, match="duplicate"):
        env.step([2, 2], ["left", "left"])
    with pytest.raises(ValueError, match="out of range"):
        env.step([4], ["left"])
    env.close()


def test_constructor_and_reset_validate_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_text_env("CartPole-v1", 6, batch_size=4)
    env: TextEnv = make_text_env("CartPole-v1", 2)  # (pyright checks EnvPoolTextEnv against the protocol)
    with pytest.raises(ValueError, match="one seed per env"):
        env.reset([1, 2, 3])
    env.close()


@pytest.mark.parametrize("task_id", supported_task_ids())
def test_every_supported_task_renders_and_steps(task_id: str) -> None:
    env = make_text_env(task_id, 2)
    renderer = RENDERERS[task_id]()
    texts = env.reset([0, 1])
    assert all(text.strip() for text in texts)
    valid_reply = "right"  # a keyword of every renderer
    for result in env.step([0, 1], [valid_reply, valid_reply]):
        assert result.observation.strip() and not result.invalid_action
    assert renderer.action_help and "\n" not in renderer.action_help
    env.close()


def test_minigrid_render_matches_hand_drawn_view() -> None:
    env = make_text_env("MiniGrid-Empty-5x5-v0", 1)
    (text,) = env.reset([0])
    lines = text.splitlines()
    assert lines[0] == "mission: get to the green goal square"
    assert "facing up the page, which is east" in lines[1]
    assert lines[2:9] == ["#######"] * 4 + ["###..G#", "###...#", "###A..#"]
    assert "green goal 2 ahead, 2 right" in text and lines[-1] == "carrying: nothing"
    env.close()


def test_sokoban_and_2048_render_consistent_boards() -> None:
    sokoban = make_text_env("Sokoban-v0", 1)
    (text,) = sokoban.reset([3])
    grid = text.splitlines()[:10]
    assert all(len(row) == 10 for row in grid)
    cells = "".join(grid)
    assert cells.count("@") + cells.count("+") == 1
    assert cells.count("$") + cells.count("*") == cells.count(".") + cells.count("*") + cells.count("+")
    sokoban.close()
    game = make_text_env("Game2048-v1", 1)
    (text,) = game.reset([3])
    tiles = [int(t) for t in re.findall(r"\d+", text.split("legal")[0])]
    assert tiles and all(t in (2, 4) for t in tiles)
    assert text.splitlines()[-1].startswith("legal moves: ")
    game.close()


PARSE_TABLES: list[tuple[Renderer, str, int | None]] = [
    (CartPoleRenderer(), "left", 0),
    (CartPoleRenderer(), "RIGHT", 1),
    (CartPoleRenderer(), "I will push the cart to the Right.", 1),
    (CartPoleRenderer(), "right, no wait, left", 1),  # the first keyword wins
    (CartPoleRenderer(), "**Left**", 0),
    (CartPoleRenderer(), "Action:left", 0),
    (CartPoleRenderer(), "leftover rights", None),  # whole words only
    (CartPoleRenderer(), "", None),
    (CartPoleRenderer(), "up", None),
    (CartPoleRenderer(), "1", None),
    (CartPoleRenderer(), "\n\nLeft\n", 0),
    (CartPoleRenderer(), "\U0001f642 right \U0001f642", 1),
    (CartPoleRenderer(), "x" * 10_000 + " right", 1),
    (CartPoleRenderer(), "\x00\x01", None),
    (MiniGridRenderer(), "forward", 2),
    (MiniGridRenderer(), "Turn LEFT", 0),
    (MiniGridRenderer(), "turn right then forward", 1),
    (MiniGridRenderer(), "pick up the key", 3),
    (MiniGridRenderer(), "pickup", 3),
    (MiniGridRenderer(), "drop it", 4),
    (MiniGridRenderer(), "toggle the door", 5),
    (MiniGridRenderer(), "done", None),  # the no-op action is not offered
    (MiniGridRenderer(), "move ahead", None),
    (Game2048Renderer(), "up", 0),
    (Game2048Renderer(), "Right", 1),
    (Game2048Renderer(), "slide DOWN", 2),
    (Game2048Renderer(), "left, then up", 3),
    (Game2048Renderer(), "upward", None),
    (Game2048Renderer(), "north", None),
    (SokobanRenderer(), "move up", 0),
    (SokobanRenderer(), "right", 1),
    (SokobanRenderer(), "Down.", 2),
    (SokobanRenderer(), "LEFT", 3),
    (SokobanRenderer(), "\u00fcber links", None),
]


@pytest.mark.parametrize(("renderer", "text", "action"), PARSE_TABLES)
def test_parse_table(renderer: Renderer, text: str, action: int | None) -> None:
    assert renderer.parse_action(text) == action


def test_unknown_task_id_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown EnvPool task id 'CartPole-v2'; did you mean 'CartPole-v1'"):
        make_text_env("CartPole-v2", 2)
    with pytest.raises(ValueError, match="MiniGrid-DoorKey-5x5-v0"):
        make_text_env("Minigrid-Doorkey-5x5", 2)
    with pytest.raises(ValueError, match="no text renderer for 'Pong-v5'"):
        make_text_env("Pong-v5", 2)


def test_renderer_doctests() -> None:  # KeywordParser and the compact CartPole renderer
    results = doctest.testmod(renderers)
    assert results.failed == 0 and results.attempted >= 2

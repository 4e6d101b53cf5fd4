"""Renderers turn one env's EnvPool observation into text, and a model's reply back into an action id.

Parsing rule, shared by every renderer here (`KeywordParser`):
- the reply is searched case-insensitively for the renderer's keywords, matched as whole words (regex `\\b`
  boundaries, so "leftover" is not "left", but "**Left**." and "Action:left" are);
- the keyword that starts earliest in the reply wins; the rest of the reply is ignored. So "not left, go right"
  plays left: the prompt should ask for the action word alone;
- no keyword at all gives None. The text env then plays the renderer's `default_action`, adds its
  invalid-action penalty to the step reward and sets `StepResult.invalid_action`.

Moves that parse but that the game forbids (a 2048 slide that moves no tile, walking into a wall) are not
invalid actions: the env applies its own rules, which for these games means nothing happens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np


class Renderer(Protocol):
    """Text face of one task. `obs` and `info` hold ONE env's entries (no batch dimension)."""

    default_action: int  # played when the reply does not parse
    action_help: str  # one line for the prompt, e.g. "Answer with left or right: ..."

    def render(self, obs: np.ndarray | dict[str, Any], info: Mapping[str, Any]) -> str: ...

    def parse_action(self, text: str) -> int | None: ...


class KeywordParser:
    """Maps the earliest whole-word keyword in a text to its action id (case-insensitive); None if there is none.

    >>> parse = KeywordParser({"left": 0, "right": 1, "pick up": 3})
    >>> parse("I push RIGHT."), parse("Right, no: left"), parse("pick   up the key"), parse("leftover")
    (1, 1, 3, None)
    """

    def __init__(self, keywords: Mapping[str, int]) -> None:
        self._actions = {" ".join(k.lower().split()): a for k, a in keywords.items()}
        # Longest first, so that of two keywords starting at the same place the longer one matches.
        alternatives = sorted(self._actions, key=len, reverse=True)
        body = "|".join(r"\s+".join(re.escape(w) for w in k.split()) for k in alternatives)
        self._pattern = re.compile(rf"\b({body})\b", re.IGNORECASE)

    def __call__(self, text: str) -> int | None:
        match = self._pattern.search(text)
        if match is None:
            return None
        return self._actions[" ".join(match.group(1).lower().split())]


class CartPoleRenderer:
    """CartPole-v0/v1: the four state numbers with their names. Actions: 0 = push left, 1 = push right.

    The episode ends when |pole angle| > 0.2095 rad or |cart position| > 2.4, or at the step limit.
    """

    default_action: int = 0
    action_help: str = "Answer with left or right: the direction to push the cart."

    def __init__(self) -> None:
        self._parse = KeywordParser({"left": 0, "right": 1})

    def render(self, obs: np.ndarray | dict[str, Any], info: Mapping[str, Any]) -> str:
        x, x_dot, theta, theta_dot = np.asarray(obs).tolist()
        return (
            f"cart position: {x:+.3f}\n"
            f"cart velocity: {x_dot:+.3f}\n"
            f"pole angle: {theta:+.3f} rad\n"
            f"pole angular velocity: {theta_dot:+.3f} rad/s"
        )

    def parse_action(self, text: str) -> int | None:
        return self._parse(text)


# MiniGrid's cell encoding (object, colour, state), as in Farama's minigrid OBJECT_TO_IDX / COLOR_TO_IDX.
_MINIGRID_CHARS = {0: "?", 1: ".", 2: "#", 3: "_", 4: "D", 5: "K", 6: "O", 7: "B", 8: "G", 9: "~", 10: "A"}
_MINIGRID_NAMES = {4: "door", 5: "key", 6: "ball", 7: "box", 8: "goal"}
_MINIGRID_COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
_MINIGRID_DOOR_STATES = ("open", "closed", "locked")
_MINIGRID_DIRECTIONS = ("east", "south", "west", "north")
_MINIGRID_LEGEND = "? unseen, . empty, # wall, _ floor, D door (/ open, L locked), K key, O ball, B box, G goal, ~ lava"


class MiniGridRenderer:
    """MiniGrid tasks: the agent's 7x7 egocentric view as characters, plus mission, objects and what it carries.

    EnvPool's `image` is [x, y, (object, colour, state)]; the agent stands at x=3, y=6 (bottom middle) and looks
    up the page, so "ahead" is up and "right" is right. Actions: 0 left (turn), 1 right (turn), 2 forward,
    3 pickup, 4 drop, 5 toggle (open/close a door). Action 6 ("done") is a no-op in these tasks: it is not offered
    to the model and is the default for unparseable replies.
    """

    default_action: int = 6
    action_help: str = (
        "Answer with one of: left, right, forward, pickup, drop, toggle (left/right turn in place; toggle opens doors)."
    )

    def __init__(self) -> None:
        self._parse = KeywordParser(
            {"left": 0, "right": 1, "forward": 2, "pickup": 3, "pick up": 3, "drop": 4, "toggle": 5}
        )

    def render(self, obs: np.ndarray | dict[str, Any], info: Mapping[str, Any]) -> str:
        assert isinstance(obs, dict), "MiniGrid observations are dicts"
        image: list[list[list[int]]] = np.asarray(obs["image"]).tolist()  # [x][y][object, colour, state]
        mission = np.asarray(obs["mission"], dtype=np.uint8).tobytes().split(b"\0", 1)[0].decode("ascii", "replace")
        width, height = len(image), len(image[0])
        agent_x, agent_y = width // 2, height - 1
        rows, objects = [], []
        for y in range(height):
            row = ""
            for x in range(width):
                cell = image[x][y]
                if (x, y) == (agent_x, agent_y):
                    row += "A"
                    continue
                row += _minigrid_char(cell)
                if cell[0] in _MINIGRID_NAMES:
                    objects.append(_minigrid_object(cell, ahead=agent_y - y, right=x - agent_x))
            rows.append(row)
        carried = image[agent_x][agent_y]  # MiniGrid encodes the carried object in the agent's own cell
        carrying = _minigrid_describe(carried) if carried[0] in _MINIGRID_NAMES else "nothing"
        direction = _MINIGRID_DIRECTIONS[int(np.asarray(obs["direction"])) % 4]
        return (
            f"mission: {mission}\n"
            f"view (you are A at the bottom middle, facing up the page, which is {direction}):\n"
            + "\n".join(rows)
            + f"\nlegend: {_MINIGRID_LEGEND}\n"
            f"objects in view: {'; '.join(objects) if objects else 'none'}\n"
            f"carrying: {carrying}"
        )

    def parse_action(self, text: str) -> int | None:
        return self._parse(text)


def _minigrid_char(cell: list[int]) -> str:
    obj, state = cell[0], cell[2]
    if obj == 4:  # door: open / closed / locked
        return "/DL"[state] if 0 <= state < 3 else "D"
    return _MINIGRID_CHARS.get(obj, "?")


def _minigrid_describe(cell: list[int]) -> str:
    obj, color, state = cell
    color_name = _MINIGRID_COLORS[color] if 0 <= color < len(_MINIGRID_COLORS) else "unknown"
    if obj == 4 and 0 <= state < 3:
        return f"{color_name} door ({_MINIGRID_DOOR_STATES[state]})"
    return f"{color_name} {_MINIGRID_NAMES[obj]}"


def _minigrid_object(cell: list[int], *, ahead: int, right: int) -> str:
    """E.g. "yellow key 2 ahead, 1 left" (cells counted from the agent's own)."""
    where = [f"{ahead} ahead"] if ahead else []
    if right:
        where.append(f"{right} right" if right > 0 else f"{-right} left")
    return f"{_minigrid_describe(cell)} {', '.join(where)}"


_DIRECTION_KEYWORDS = {"up": 0, "right": 1, "down": 2, "left": 3}  # Jumanji's order for 2048 and Sokoban
_DIRECTION_NAMES = ("up", "right", "down", "left")


class Game2048Renderer:
    """Jumanji Game2048-v1: the 4x4 board with tile values (EnvPool gives log2 exponents, 0 = empty) and the legal
    moves from `action_mask`. Actions: 0 up, 1 right, 2 down, 3 left (slide direction)."""

    default_action: int = 0
    action_help: str = "Answer with up, down, left or right: the direction to slide the tiles."

    def __init__(self) -> None:
        self._parse = KeywordParser(_DIRECTION_KEYWORDS)

    def render(self, obs: np.ndarray | dict[str, Any], info: Mapping[str, Any]) -> str:
        assert isinstance(obs, dict), "Game2048 observations are dicts"
        board = np.asarray(obs["board"]).tolist()
        cells = [[str(1 << e) if e > 0 else "." for e in row] for row in board]
        width = max(len(c) for row in cells for c in row)
        rows = ["  ".join(c.rjust(width) for c in row) for row in cells]
        legal = [name for name, ok in zip(_DIRECTION_NAMES, np.asarray(obs["action_mask"]).tolist(), strict=True) if ok]
        return "board (. = empty):\n" + "\n".join(rows) + f"\nlegal moves: {', '.join(legal) if legal else 'none'}"

    def parse_action(self, text: str) -> int | None:
        return self._parse(text)


class SokobanRenderer:
    """Jumanji Sokoban-v0 in the usual text notation. EnvPool's `grid` is [row, col, 2]: channel 0 holds the
    movable things (3 agent, 4 box), channel 1 the fixed ones (1 wall, 2 target). Actions: 0 up, 1 right,
    2 down, 3 left. Rewards (Jumanji): -0.1 a step, +1 per box pushed onto a target, -1 off, +10 when solved."""

    default_action: int = 0
    action_help: str = "Answer with up, down, left or right: the direction to move (walking into a box pushes it)."

    def __init__(self) -> None:
        self._parse = KeywordParser(_DIRECTION_KEYWORDS)

    def render(self, obs: np.ndarray | dict[str, Any], info: Mapping[str, Any]) -> str:
        assert isinstance(obs, dict), "Sokoban observations are dicts"
        grid = np.asarray(obs["grid"])
        movable, fixed = grid[..., 0], grid[..., 1]
        chars = np.full(movable.shape, "_", dtype="<U1")
        chars[fixed == 1] = "#"
        chars[fixed == 2] = "."
        on_target = fixed == 2
        chars[(movable == 4) & ~on_target] = "$"
        chars[(movable == 4) & on_target] = "*"
        chars[(movable == 3) & ~on_target] = "@"
        chars[(movable == 3) & on_target] = "+"
        num_boxes = int((movable == 4).sum())
        num_placed = int(((movable == 4) & on_target).sum())
        rows = "\n".join("".join(row) for row in chars.tolist())
        return (
            f"{rows}\n"
            "legend: # wall, _ floor, . target, $ box, * box on target, @ you, + you on target\n"
            f"boxes on targets: {num_placed}/{num_boxes}"
        )

    def parse_action(self, text: str) -> int | None:
        return self._parse(text)


# ------------------------------------------------------------------------------------------------ compact renderers
class CompactCartPoleRenderer:
    """CartPole in 4 characters, for models with a tiny context: the pole angle in units of 0.02 rad and the pole
    angular velocity in units of 0.2 rad/s, each rounded and clipped to a signed digit: "+3-1" is
    angle ~ +0.06 rad, angular velocity ~ -0.2 rad/s. The cart's position and velocity are left out: they matter
    only after ~100 balanced steps, beyond what a 128-token context holds. Actions: l / left = 0, r / right = 1
    (whole words, case-insensitive, as `KeywordParser`).

    >>> r = CompactCartPoleRenderer()
    >>> r.render(np.array([0.5, 0.1, 0.061, -0.23]), {})
    '+3-1'
    >>> r.parse_action("R"), r.parse_action("left"), r.parse_action("x")
    (1, 0, None)
    """

    default_action: int = 0
    action_help: str = "l or r"

    def __init__(self) -> None:
        self._parse = KeywordParser({"left": 0, "right": 1, "l": 0, "r": 1})

    def render(self, obs: Any, info: Any) -> str:
        _, _, theta, theta_dot = np.asarray(obs).tolist()
        return f"{_signed_digit(theta / 0.02)}{_signed_digit(theta_dot / 0.2)}"

    def parse_action(self, text: str) -> int | None:
        return self._parse(text)


def _signed_digit(x: float) -> str:
    return f"{max(-9, min(9, round(x))):+d}"


# MiniGrid tasks checked to use the standard 7x7 view and 7 actions (tests render every one).
_MINIGRID_TASKS = (
    "MiniGrid-Empty-5x5-v0",
    "MiniGrid-Empty-6x6-v0",
    "MiniGrid-Empty-8x8-v0",
    "MiniGrid-Empty-16x16-v0",
    "MiniGrid-Empty-Random-5x5-v0",
    "MiniGrid-Empty-Random-6x6-v0",
    "MiniGrid-DoorKey-5x5-v0",
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-DoorKey-8x8-v0",
    "MiniGrid-DoorKey-16x16-v0",
    "MiniGrid-FourRooms-v0",
    "MiniGrid-LavaGapS5-v0",
    "MiniGrid-LavaGapS6-v0",
    "MiniGrid-LavaGapS7-v0",
    "MiniGrid-SimpleCrossingS9N1-v0",
    "MiniGrid-LavaCrossingS9N1-v0",
    "MiniGrid-Unlock-v0",
)

RENDERERS: dict[str, Callable[[], Renderer]] = {
    "CartPole-v0": CartPoleRenderer,
    "CartPole-v1": CartPoleRenderer,
    **{task_id: MiniGridRenderer for task_id in _MINIGRID_TASKS},
    "Game2048-v1": Game2048Renderer,
    "Jumanji/Game2048-v1": Game2048Renderer,
    "Sokoban-v0": SokobanRenderer,
    "Jumanji/Sokoban-v0": SokobanRenderer,
}

# `env.renderer: compact`: few-token observations for models with a tiny context.
COMPACT_RENDERERS: dict[str, Callable[[], Renderer]] = {
    "CartPole-v0": CompactCartPoleRenderer,
    "CartPole-v1": CompactCartPoleRenderer,
}

"""Synthetic prompt/answer tasks generated in code, with seeded train and eval splits.

The tasks are digit puzzles a tiny char-level model can learn on CPU in minutes:
  copy:    "cp:1234="  -> "1234"
  reverse: "rev:1234=" -> "4321"
  add:     "add:12+34=" -> "46"   (num_digits per operand)
Prompts contain no whitespace (see rlplat.models.CHARSET).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    prompt_id: int
    prompt: str
    answer: str


def _make(task: str, rng: random.Random, num_digits: int) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(num_digits))
    if task == "copy":
        return f"cp:{digits}=", digits
    if task == "reverse":
        return f"rev:{digits}=", digits[::-1]
    if task == "add":
        a, b = int(digits), rng.randrange(10**num_digits)
        return f"add:{a}+{b}=", str(a + b)
    raise ValueError(f"unknown task {task!r} (valid: {', '.join(TASKS)})")


TASKS = ("copy", "reverse", "add")


def make_split(task: str, *, num_digits: int, num_prompts: int, seed: int, split: str) -> list[Problem]:
    """Deterministic problems for `split` ("train" or "eval"); the eval split excludes train prompts."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    train_rng = random.Random(f"{task}:{num_digits}:{seed}:train")
    if split == "train":
        return [Problem(i, *_make(task, train_rng, num_digits)) for i in range(num_prompts)]
    # Eval: fresh problems whose prompts do not occur in a train split of the same size.
    train = {p.prompt for p in make_split(task, num_digits=num_digits, num_prompts=num_prompts, seed=seed,
                                          split="train")}
    rng = random.Random(f"{task}:{num_digits}:{seed}:eval")
    out: list[Problem] = []
    for _ in range(num_prompts * 100):
        prompt, answer = _make(task, rng, num_digits)
        if prompt not in train:
            out.append(Problem(len(out), prompt, answer))
        if len(out) == num_prompts:
            break
    return out


class PromptCursor:
    """Serves train problems in epochs, reshuffled per epoch with a seeded RNG; its position is checkpointable."""

    def __init__(self, problems: list[Problem], seed: int) -> None:
        if not problems:
            raise ValueError("no problems to serve")
        self.problems = problems
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Problem]:
        out = []
        for _ in range(n):
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffled(self.epoch)
            out.append(self.problems[self._order[self.position]])
            self.position += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffled(self.epoch)

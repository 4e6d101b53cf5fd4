"""Offline task generators: seeded train/test splits written as jsonl or parquet, nothing downloaded.

Each task makes plain dict records, the same rows a user's own file holds; `write_splits` writes OUT/train.<fmt>
and OUT/test.<fmt>, and `rlplat.data.datasets.load_rows` reads them back. Test rows never repeat a train
problem. The tasks:
- countdown (TinyZero, arXiv 2501.12948 style): `prompt` (one user message asking for an equation in
  <answer></answer> tags), `nums`, `target`, `solution` (one equation that works), `response` (that equation in
  tags, for an SFT warm start). Every problem is solvable with all of its numbers. Reward: `countdown`.
- arithmetic: GSM8K-like `question` / `answer`: a short word problem and a worked answer ending in `#### N`.
  Reward: `math_verify` (reads the number after `####`). Load with prompt_key: question.
- digits: the built-in copy/reverse/add tasks of rlplat.envs.tasks (`prompt`, `answer`). data/ does not import
  its sibling envs/, so the caller (cli, driver) passes the problems of `make_split` to `records_from_problems`;
  the records are written as files (`rlplat data digits`) or kept in memory through
  `rlplat.data.datasets.rows_from_records`, behind the same interface. Reward: `digit_accuracy` or `exact_match`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, Protocol

Record = dict[str, Any]
FORMATS = ("jsonl", "parquet")

COUNTDOWN_INSTRUCTION = (
    "Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic operations "
    "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the "
    "final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)


def countdown_problem(rng: random.Random, *, num_numbers: tuple[int, int] = (3, 4), max_number: int = 99,
                      max_target: int = 100) -> Record:
    """One solvable countdown problem: numbers drawn from 1..max_number, combined at random with + - * /
    (exact division, no negative intermediate) until the result is a target in 1..max_target."""
    while True:
        nums = [rng.randint(1, max_number) for _ in range(rng.randint(*num_numbers))]
        items = [(n, str(n)) for n in nums]
        while len(items) > 1:
            (a, ea), (b, eb) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
            if a < b:
                (a, ea), (b, eb) = (b, eb), (a, ea)
            ops = ["+", "-", "*"] + (["/"] if b and a % b == 0 else [])
            op = rng.choice(ops)
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
            items.append((value, f"({ea} {op} {eb})"))
        target, expr = items[0]
        if 1 <= target <= max_target:
            solution = expr[1:-1] if expr.startswith("(") else expr
            return {"prompt": [{"role": "user", "content": COUNTDOWN_INSTRUCTION.format(nums=nums, target=target)}],
                    "nums": nums, "target": target, "solution": solution,
                    "response": f"<answer> {solution} </answer>"}


_NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ben", "Ivy", "Raj", "Zoe")
_ITEMS = ("apples", "marbles", "books", "stickers", "pencils", "cookies", "cards", "shells")


def arithmetic_problem(rng: random.Random, *, max_number: int = 20) -> Record:
    """One GSM8K-like word problem: `question`, and `answer` = worked steps then `#### N`."""
    name, friend = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    a, b, c = (rng.randint(2, max_number) for _ in range(3))
    kind = rng.randrange(5)
    if kind == 0:
        q = f"{name} has {a} {item}. {friend} gives {name} {b} more. How many {item} does {name} have now?"
        steps, result = f"{name} has {a} + {b} = {a + b} {item}.", a + b
    elif kind == 1:
        a, b = max(a, b) + 1, min(a, b)
        q = f"{name} had {a} {item} and gave {b} of them to {friend}. How many {item} does {name} have left?"
        steps, result = f"{name} has {a} - {b} = {a - b} {item} left.", a - b
    elif kind == 2:
        q = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?"
        steps, result = f"{name} buys {a} * {b} = {a * b} {item}.", a * b
    elif kind == 3:
        q = f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?"
        steps, result = f"Each friend gets {a * b} / {b} = {a} {item}.", a
    else:
        q = (f"{name} has {a} {item} and buys {b} packs of {c} {item}. How many {item} does {name} have in "
             "total?")
        steps = f"The packs hold {b} * {c} = {b * c} {item}.\n{name} has {a} + {b * c} = {a + b * c} {item}."
        result = a + b * c
    return {"question": q, "answer": f"{steps}\n#### {result}"}


def unique_splits(make: Callable[[random.Random], Record], key: Callable[[Record], Hashable], *, num_train: int,
                  num_test: int, seed: int) -> dict[str, list[Record]]:
    """{"train": num_train, "test": num_test} distinct problems (by `key`) from one seeded RNG; ValueError if
    the task has too few distinct problems."""
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train} and {num_test}")
    rng = random.Random(seed)
    seen: set[Hashable] = set()
    out: list[Record] = []
    want = num_train + num_test
    for _ in range(want * 50):
        rec = make(rng)
        if key(rec) not in seen:
            seen.add(key(rec))
            out.append(rec)
            if len(out) == want:
                return {"train": out[:num_train], "test": out[num_train:]}
    raise ValueError(f"found only {len(out)} distinct problems, asked for {want}: ask for fewer")


def countdown_splits(*, num_train: int, num_test: int, seed: int, **kwargs: Any) -> dict[str, list[Record]]:
    """Countdown train/test records (kwargs go to `countdown_problem`)."""
    return unique_splits(lambda rng: countdown_problem(rng, **kwargs),
                         lambda r: (tuple(sorted(r["nums"])), r["target"]),
                         num_train=num_train, num_test=num_test, seed=seed)


def arithmetic_splits(*, num_train: int, num_test: int, seed: int, **kwargs: Any) -> dict[str, list[Record]]:
    """Arithmetic word-problem train/test records (kwargs go to `arithmetic_problem`)."""
    return unique_splits(lambda rng: arithmetic_problem(rng, **kwargs), lambda r: r["question"],
                         num_train=num_train, num_test=num_test, seed=seed)


class PromptAnswer(Protocol):
    """A generated problem with a text prompt and answer, e.g. rlplat.envs.tasks.Problem."""

    @property
    def prompt(self) -> str: ...

    @property
    def answer(self) -> str: ...


def records_from_problems(problems: Iterable[PromptAnswer]) -> list[Record]:
    """{"prompt", "answer"} records of problems such as the digit tasks' (rlplat.envs.tasks.make_split).

    >>> from types import SimpleNamespace
    >>> records_from_problems([SimpleNamespace(prompt="cp:12=", answer="12")])
    [{'prompt': 'cp:12=', 'answer': '12'}]
    """
    return [{"prompt": p.prompt, "answer": p.answer} for p in problems]


# The columns of each task's prompt and correct response, for SFT conversations (`rlplat data TASK OUT --sft`).
SFT_COLUMNS: dict[str, tuple[str, str]] = {"countdown": ("prompt", "response"), "arithmetic": ("question", "answer"),
                                           "digits": ("prompt", "answer")}


def with_messages(records: list[Record], *, prompt_key: str, response_key: str,
                  messages_key: str = "messages") -> list[Record]:
    """The records with a chat conversation added: the prompt (a string becomes one user message, a message list
    stays) then the correct response as the assistant turn. Every other column stays, so one file serves the
    SFT warm start (`sft.messages_key`) and RL (`data.prompt_key`, rewards reading `answer`, `nums`, ...).

    >>> with_messages([{"question": "1+1?", "answer": "#### 2"}], prompt_key="question", response_key="answer")
    [{'question': '1+1?', 'answer': '#### 2', 'messages': [{'role': 'user', 'content': '1+1?'}, \
{'role': 'assistant', 'content': '#### 2'}]}]
    """
    out = []
    for rec in records:
        prompt = rec[prompt_key]
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        out.append({**rec, messages_key: [*turns, {"role": "assistant", "content": str(rec[response_key])}]})
    return out


def write_records(path: str | Path, records: list[Record]) -> Path:
    """Write records to a .jsonl or .parquet file (by suffix); parent directories are created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".jsonl":
        with p.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    elif p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), p)
    else:
        raise ValueError(f"{p}: write .jsonl or .parquet, not {p.suffix or 'no suffix'!r}")
    return p


def write_splits(out_dir: str | Path, splits: dict[str, list[Record]], *, fmt: str = "jsonl") -> list[Path]:
    """OUT/<split>.<fmt> for each non-empty split; returns the paths written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return [write_records(Path(out_dir) / f"{name}.{fmt}", recs) for name, recs in splits.items() if recs]


def corpus_texts(*, num_per_task: int = 200, seed: int = 0) -> list[str]:
    """Text of the countdown and arithmetic generators' prompts and answers, and the ChatML role names: with the
    digit tasks' text (added by rlplat.models), the default corpus of the tiny BPE tokenizer."""
    rng = random.Random(seed)
    texts: list[str] = ["system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 20  # ChatML roles
    for _ in range(num_per_task):
        cd = countdown_problem(rng)
        texts += [cd["prompt"][0]["content"], f"<think> {cd['solution']} = {cd['target']} </think> {cd['response']}"]
        ar = arithmetic_problem(rng)
        texts += [ar["question"], ar["answer"]]
    return texts

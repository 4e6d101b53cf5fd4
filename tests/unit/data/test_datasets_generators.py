"""Offline task generators (countdown, arithmetic, digit records): seeded, solvable, split without overlap, written as
jsonl or parquet that load_rows reads back, and `rlplat data ...`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.data.datasets import common_columns, load_rows
from rlplat.data.generators import (
    arithmetic_problem,
    arithmetic_splits,
    corpus_texts,
    countdown_problem,
    countdown_splits,
    records_from_problems,
    unique_splits,
    write_records,
    write_splits,
)
from rlplat.envs.tasks import make_split
from rlplat.rewards.builtin import gold_answer
from rlplat.rewards.countdown import equation_reaches


def test_countdown_problems_are_solvable_by_their_solution() -> None:
    rng = random.Random(0)
    for _ in range(200):
        p = countdown_problem(rng)
        assert 3 <= len(p["nums"]) <= 4 and all(1 <= n <= 99 for n in p["nums"]) and 1 <= p["target"] <= 100
        assert equation_reaches(p["solution"], p["nums"], p["target"])
        assert f"Using the numbers {p['nums']}, create an equation that equals {p['target']}." in \
            p["prompt"][0]["content"]
        assert p["response"] == f"<answer> {p['solution']} </answer>"


def test_arithmetic_answers_end_in_the_number_their_steps_compute() -> None:
    rng = random.Random(0)
    for _ in range(200):
        p = arithmetic_problem(rng)
        steps, _, final = p["answer"].rpartition("\n#### ")
        assert p["question"].endswith("?") and int(final) >= 0
        assert steps.splitlines()[-1].split(" = ")[-1].split(" ")[0] == final  # the last step's result
        assert gold_answer(p["answer"]) == final


def test_splits_are_seeded_and_disjoint() -> None:
    a = countdown_splits(num_train=50, num_test=10, seed=3)
    assert a == countdown_splits(num_train=50, num_test=10, seed=3)
    assert a != countdown_splits(num_train=50, num_test=10, seed=4)
    keys = lambda recs: {(tuple(sorted(r["nums"])), r["target"]) for r in recs}  # noqa: E731
    assert len(keys(a["train"])) == 50 and not keys(a["train"]) & keys(a["test"])
    b = arithmetic_splits(num_train=40, num_test=10, seed=0)
    assert not {r["question"] for r in b["train"]} & {r["question"] for r in b["test"]}


def test_too_few_distinct_problems_is_an_error() -> None:
    with pytest.raises(ValueError, match="found only 2 distinct problems, asked for 5"):
        unique_splits(lambda rng: {"x": rng.randrange(2)}, lambda r: r["x"], num_train=4, num_test=1, seed=0)
    with pytest.raises(ValueError, match="num_train >= 1"):
        arithmetic_splits(num_train=0, num_test=1, seed=0)


def test_digit_tasks_become_records() -> None:
    problems = make_split("add", num_digits=2, num_prompts=6, seed=5, split="train")
    assert records_from_problems(problems) == [{"prompt": p.prompt, "answer": p.answer} for p in problems]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_written_splits_load_back_unchanged(tmp_path: Path, fmt: str) -> None:
    splits = countdown_splits(num_train=8, num_test=4, seed=0)
    paths = write_splits(tmp_path / "cd", splits, fmt=fmt)
    assert paths == [tmp_path / "cd" / f"train.{fmt}", tmp_path / "cd" / f"test.{fmt}"]
    rows = load_rows([paths[0]], cache_dir=tmp_path / "c")
    assert [r.prompt for r in rows] == [r["prompt"] for r in splits["train"]]
    assert [r.columns["nums"] for r in rows] == [r["nums"] for r in splits["train"]]
    assert common_columns(rows) == {"nums", "target", "solution", "response"}


def test_write_needs_a_known_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="write .jsonl or .parquet"):
        write_records(tmp_path / "x.csv", [{"a": 1}])
    with pytest.raises(ValueError, match="format must be one of jsonl, parquet"):
        write_splits(tmp_path, {"train": [{"a": 1}]}, fmt="csv")


def test_corpus_covers_every_task_and_the_chat_roles() -> None:
    from rlplat.models import default_corpus

    assert set(corpus_texts(num_per_task=8)) <= set(default_corpus(num_per_task=8))
    text = "\n".join(default_corpus(num_per_task=8))
    for piece in ("Using the numbers", "<answer>", "####", "cp:", "rev:", "add:", "assistant"):
        assert piece in text


def test_cli_data_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "countdown", str(tmp_path / "cd"), "--n", "6", "--n-test", "2", "--seed", "1"]) == 0
    assert main(["data", "arithmetic", str(tmp_path / "ar"), "--n", "5", "--n-test", "0", "--format", "parquet"]) == 0
    assert main(["data", "digits", str(tmp_path / "dg"), "--task", "reverse", "--n", "4", "--num-digits", "3"]) == 0
    out = capsys.readouterr().out
    assert f"wrote 6 rows to {tmp_path / 'cd' / 'train.jsonl'}" in out and "wrote 2 rows" in out
    assert sorted(p.name for p in (tmp_path / "ar").iterdir()) == ["train.parquet"]  # no empty test split
    rows = load_rows([tmp_path / "ar" / "train.parquet"], prompt_key="question", cache_dir=tmp_path / "c")
    assert len(rows) == 5 and "####" in rows[0].columns["answer"]
    digits = load_rows([tmp_path / "dg" / "train.jsonl", tmp_path / "dg" / "test.jsonl"], cache_dir=tmp_path / "c")
    assert [(r.prompt, r.columns["answer"]) for r in digits] == [
        (p.prompt, p.answer) for split, n in (("train", 4), ("eval", 100))
        for p in make_split("reverse", num_digits=3, num_prompts=n, seed=0, split=split)]
    assert main(["data", "countdown", str(tmp_path / "bad"), "--n", "0"]) == 2
    assert "num_train >= 1" in capsys.readouterr().err
    assert main(["data", "digits", str(tmp_path / "bad"), "--n-test", "-1"]) == 2
    assert "need --n >= 1 and --n-test >= 0" in capsys.readouterr().err

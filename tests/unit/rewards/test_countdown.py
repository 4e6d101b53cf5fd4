"""countdown reward: tables of (response, row) -> reward on TinyZero's 0 / 0.1 / 1 scale."""

from __future__ import annotations

import doctest

import pytest
import torch

import rlplat.rewards.countdown as countdown_module
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.countdown import countdown, equation_reaches, extract_answer

ROW = {"nums": [2, 5, 6], "target": 20}
F = 0.1  # format score


def _batch(responses: list[str], rows: list[dict]) -> RewardInputs:
    n = len(responses)
    return RewardInputs(response_token_ids=[[]] * n, response_texts=responses, answers=[""] * n,
                        answer_token_ids=[[]] * n, eos_token_id=1, columns=rows)


def test_doctests() -> None:
    assert doctest.testmod(countdown_module).failed == 0


@pytest.mark.parametrize(("response", "row", "expected"), [
    ("<answer> (6 - 2) * 5 </answer>", ROW, 1.0),  # all numbers, reaches the target
    ("<think>6-2=4, 4*5=20</think>\n<answer>(6-2)*5</answer>", ROW, 1.0),  # reasoning first, no spaces
    ("<answer> 5 * 6 - 2 * 5 </answer>", ROW, F),  # 5 used twice
    ("<answer> 6 * 5 - 2 </answer>", ROW, F),  # 28, not 20
    ("<answer> 4 * 5 </answer>", ROW, F),  # 4 is not given
    ("<answer> 5 * 2 * 2 </answer>", ROW, F),  # 2 given once, used twice
    ("<answer> (6 - 2) * 5 = 20 </answer>", ROW, F),  # '=' is not an expression
    ("<answer> 2 ** 5 </answer>", {"nums": [2, 5], "target": 32}, F),  # no powers
    ("<answer> 6 / (5 - 5) </answer>", {"nums": [5, 5, 6], "target": 1}, F),  # division by zero
    ("<answer> 20.0 </answer>", {"nums": [20], "target": 20}, F),  # only integers
    ("<answer> import os </answer>", ROW, F),  # not arithmetic at all
    ("<answer></answer>", ROW, F),  # empty answer: format only
    ("(6 - 2) * 5", ROW, 0.0),  # no answer tag
    ("<answer> (6 - 2) * 5", ROW, 0.0),  # unclosed tag
    ("<answer> 1 </answer> then <answer> (6 - 2) * 5 </answer>", ROW, 1.0),  # the last tag counts
    ("<answer> (6 - 2) * 5 </answer> then <answer> 1 </answer>", ROW, F),
    ("<answer> 6 * 5 - 10 </answer>", {"nums": [6, 5, 10, 3], "target": 20}, 1.0),  # a subset of nums suffices
    ("<answer> 6 / 4 * 2 </answer>", {"nums": [6, 4, 2], "target": 3}, 1.0),  # exact fractions
    ("<answer> -2 + 22 </answer>", {"nums": [2, 22], "target": 20}, 1.0),  # unary minus
    ("<answer> 7 / 3 * 3 </answer>", {"nums": [7, 3, 3], "target": 7}, 1.0),  # no float rounding error
])
def test_countdown_table(response: str, row: dict, expected: float) -> None:
    torch.testing.assert_close(countdown(_batch([response], [row])), torch.tensor([expected]))


def test_row_values_as_strings_or_numpy_like_ints() -> None:
    rows = [{"nums": ["2", "5", "6"], "target": "20"}, {"nums": [2.0, 5.0, 6.0], "target": 20.0}]
    out = countdown(_batch(["<answer>(6-2)*5</answer>"] * 2, rows))
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0]))


def test_custom_format_score() -> None:
    out = countdown(_batch(["<answer>1</answer>", "<answer>(6-2)*5</answer>", "x"], [ROW] * 3), format_score=0.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.0]))


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="needs the dataset column 'target', which sample 0's row lacks"):
        countdown(_batch(["<answer>1</answer>"], [{"nums": [1]}]))
    no_rows = RewardInputs(response_token_ids=[[]], response_texts=["x"], answers=[""], answer_token_ids=[[]],
                           eos_token_id=1)
    with pytest.raises(ValueError, match="needs the dataset column 'nums', but the samples carry no dataset rows"):
        countdown(no_rows)


def test_helpers() -> None:
    assert extract_answer("no tag") is None
    assert extract_answer("<answer>\n 1 + 2 \n</answer>") == "1 + 2"
    assert equation_reaches("((((2))))", [2], 2)
    assert not equation_reaches("(" * 1000 + "2" + ")" * 1000, [2], 2)  # too deep for the parser: not an answer
    assert not equation_reaches("2 +", [2], 2)

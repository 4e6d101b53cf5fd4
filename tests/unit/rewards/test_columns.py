"""Rewards see the dataset row: RewardInputs.columns, math_verify on the `answer` column, user rewards reading
columns, and the required-columns check that runs before any worker starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.builtin import gold_answer, math_verify
from rlplat.rewards.registry import (
    BUILTIN_REWARDS,
    REQUIRED_COLUMNS,
    check_reward_columns,
    combined_reward,
    required_columns,
)


def _batch(responses: list[str], rows: list[dict], answers: list[str] | None = None) -> RewardInputs:
    n = len(responses)
    return RewardInputs(response_token_ids=[[]] * n, response_texts=responses, answers=answers or [""] * n,
                        answer_token_ids=[[]] * n, eos_token_id=1, columns=rows)


def test_columns_default_to_empty_so_todays_callers_work() -> None:
    b = RewardInputs(response_token_ids=[[1]], response_texts=[""], answers=[""], answer_token_ids=[[]],
                     eos_token_id=1)
    assert b.columns == ()


def test_columns_must_match_the_batch() -> None:
    with pytest.raises(ValueError, match="columns has 1 rows for 2 responses"):
        _batch(["a", "b"], [{"answer": "1"}])


def test_column_reads_one_column_for_the_batch() -> None:
    b = _batch(["a", "b"], [{"answer": "1", "x": 3}, {"answer": "2", "x": None}])  # Arrow's None = no value
    assert b.column("answer") == ["1", "2"]
    with pytest.raises(ValueError, match=r"column 'x', which sample 1's row lacks \(its columns: answer\)"):
        b.column("x")


@pytest.mark.parametrize(("response", "answer", "expected"), [
    ("Tom has 3 + 4 = 7 apples.\n#### 7", "Tom has 3 + 4 = 7 apples.\n#### 7", 1.0),  # GSM8K gold
    ("The answer is 7.", "3 + 4 = 7\n#### 7", 1.0),  # last number of the response
    ("so the answer is \\boxed{7}", "#### 7", 1.0),  # boxed
    ("I think 8.", "3 + 4 = 7\n#### 7", 0.0),
    ("It is 1250 in total.", "#### 1,250", 1.0),  # thousands comma in the gold
    ("0.5", "\\frac{1}{2}", 1.0),  # symbolic equality, as before
    ("No idea.", "#### 7", 0.0),
])
def test_math_verify_reads_the_answer_column(response: str, answer: str, expected: float) -> None:
    # batch.answers holds something else: the row's `answer` column wins when rows are present
    got = math_verify(_batch([response], [{"answer": answer}], answers=["999"]))
    torch.testing.assert_close(got, torch.tensor([expected]))


def test_math_verify_falls_back_to_answers_without_rows() -> None:
    b = RewardInputs(response_token_ids=[[]], response_texts=["it is 42"], answers=["42"], answer_token_ids=[[]],
                     eos_token_id=1)
    assert math_verify(b).tolist() == [1.0]


def test_math_verify_names_a_missing_answer_column() -> None:
    with pytest.raises(ValueError, match="column 'answer'"):
        math_verify(_batch(["7"], [{"solution": "7"}]))


def test_gold_answer_takes_the_text_after_the_last_marker() -> None:
    assert gold_answer("a #### 1\nb #### 2") == "2"
    assert gold_answer(7) == "7"


USER_FILE = '''
def matches_target(batch):
    return [float(str(t) in r) for r, t in zip(batch.response_texts, batch.column("target"))]
matches_target.required_columns = ("target",)

def no_declaration(batch):
    return [0.0] * len(batch)

def bad_declaration(batch):
    return [0.0] * len(batch)
bad_declaration.required_columns = "target"
'''


@pytest.fixture
def user_file(tmp_path: Path) -> str:
    p = tmp_path / "col_rewards.py"
    p.write_text(USER_FILE)
    return str(p)


def test_user_reward_reads_columns(user_file: str) -> None:
    b = _batch(["<answer>20</answer>", "<answer>19</answer>"], [{"nums": [2], "target": 20}] * 2)
    total, metrics = combined_reward([(f"{user_file}:matches_target", 1.0), ("countdown", 2.0)], b)
    torch.testing.assert_close(total, torch.tensor([1.0 + 2 * 0.1, 0.0 + 2 * 0.1]))
    assert metrics == {"reward/matches_target": 0.5, "reward/countdown": pytest.approx(0.1)}


def test_required_columns_of_builtins_and_user_functions(user_file: str) -> None:
    assert set(REQUIRED_COLUMNS) <= set(BUILTIN_REWARDS)
    assert required_columns("countdown") == ("nums", "target")
    assert required_columns("math_verify") == ("answer",)
    assert required_columns("format_regex") == ()
    assert required_columns(f"{user_file}:matches_target") == ("target",)
    assert required_columns(f"{user_file}:no_declaration") == ()
    with pytest.raises(ValueError, match="required_columns must be a tuple of column names, got 'target'"):
        required_columns(f"{user_file}:bad_declaration")
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        required_columns("nope")


@pytest.mark.parametrize(("names", "columns", "error"), [
    (["countdown"], {"nums", "target", "solution"}, None),
    (["countdown", "format_regex"], {"nums"}, "reward 'countdown' needs the column 'target', which data/train.jsonl "
                                               "lacks (columns: nums)"),
    (["math_verify"], {"question"}, "reward 'math_verify' needs the column 'answer', which data/train.jsonl lacks "
                                    "(columns: question)"),
    (["env_return", "length_penalty"], set(), None),
])
def test_check_reward_columns(names: list[str], columns: set[str], error: str | None) -> None:
    if error is None:
        check_reward_columns(names, columns, where="data/train.jsonl")
    else:
        with pytest.raises(ValueError) as e:
            check_reward_columns(names, columns, where="data/train.jsonl")
        assert str(e.value) == error


def test_check_user_reward_columns(user_file: str) -> None:
    with pytest.raises(ValueError, match=r"col_rewards.py:matches_target' needs the column 'target', which the data"):
        check_reward_columns([f"{user_file}:matches_target"], {"answer"})


def test_doctests() -> None:
    import doctest

    import rlplat.rewards.basic as basic
    import rlplat.rewards.registry as registry

    assert doctest.testmod(registry).failed == 0 and doctest.testmod(basic).failed == 0

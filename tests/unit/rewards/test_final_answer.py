"""`final_answer`: only an explicit `#### N` after the tool turns counts, compared with the answer as an integer."""

from __future__ import annotations

import pytest

from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.final_answer import final_answer
from rlplat.rewards.registry import load_reward, required_columns

TOOL_TURN = ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "48213 * 7719"}}\n</tool_call>\n'
             "user\n<tool_response>\n372156147\n</tool_response>\nassistant\n")


@pytest.mark.parametrize(("response", "answer", "reward"), [
    (TOOL_TURN + "#### 372156147", "372156147", 1.0),
    (TOOL_TURN + "#### 372,156,147", "372156147", 1.0),
    (TOOL_TURN, "372156147", 0.0),  # the tool's reply holds the number, but the model never answered
    (TOOL_TURN + "#### 372156", "372156147", 0.0),
    ("#### 48213 * 7719", "372156147", 0.0),  # an expression is not the answer
    ("#### 5 then #### 7", "7", 1.0),  # the last one counts
    ("#### -12", "-12", 1.0),
    ("#### 7", "Each gets 7 apples.\n#### 7", 1.0),  # a GSM8K-style reference
    ("#### 7", "seven", 0.0),
])
def test_final_answer_table(response: str, answer: str, reward: float) -> None:
    batch = RewardInputs(response_token_ids=[[]], response_texts=[response], answers=[""], answer_token_ids=[[]],
                         eos_token_id=0, columns=[{"answer": answer}])
    assert final_answer(batch) == [reward]


def test_loads_by_path_and_declares_its_column() -> None:
    name = "rlplat/rewards/final_answer.py:final_answer"
    assert load_reward(name).__name__ == "final_answer"
    assert required_columns(name) == ("answer",)

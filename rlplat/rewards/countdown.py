"""Countdown reward (TinyZero's task): write an equation with the given numbers that reaches the target.

The response ends with `<answer> EQUATION </answer>`; the last such tag counts. Scale as in TinyZero
(`verl/utils/reward_score/countdown.py`, Jiayi-Pan/TinyZero): 0 without an answer tag, `format_score` (0.1) for a
tag whose equation is wrong or not allowed, 1.0 for a correct one. Correct means: only integers, + - * / and
parentheses (unary minus allowed, no `**`, no `=`), every integer is one of the row's `nums` and each of them
is used at most once (TinyZero demands all of them exactly once; a subset that reaches the target counts here),
and the exact rational value equals `target`. Dataset columns: `nums` (list of int), `target` (int).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

import torch

from rlplat.rewards.basic import RewardInputs

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__,
        ast.Div: Fraction.__truediv__}


def countdown(batch: RewardInputs, *, format_score: float = 0.1) -> torch.Tensor:
    """Per sample: 0.0 (no <answer> tag), format_score (an answer, but wrong), 1.0 (correct); needs columns
    `nums` and `target`.

    >>> b = RewardInputs(response_token_ids=[[]] * 4, answers=[""] * 4, answer_token_ids=[[]] * 4, eos_token_id=1,
    ...                  response_texts=["<answer> (6 - 2) * 5 </answer>", "<answer> 6 * 5 - 2 </answer>",
    ...                                  "6 * 5 - 2 = 28", "<answer> 5 * 5 - 5 </answer>"],
    ...                  columns=[{"nums": [2, 5, 6], "target": 20}] * 4)
    >>> countdown(b).tolist()
    [1.0, 0.10000000149011612, 0.0, 0.10000000149011612]
    """
    nums, targets = batch.column("nums"), batch.column("target")
    out = torch.zeros(len(batch))
    for i, (text, n, t) in enumerate(zip(batch.response_texts, nums, targets, strict=True)):
        equation = extract_answer(text)
        if equation is None:
            continue
        out[i] = 1.0 if equation_reaches(equation, [int(x) for x in n], int(t)) else format_score
    return out


def extract_answer(text: str) -> str | None:
    """The content of the last <answer>...</answer> tag, stripped; None without one.

    >>> extract_answer("<think>3+4</think><answer> 1 + 2 </answer> <answer>3 * 4</answer>")
    '3 * 4'
    """
    matches = _ANSWER.findall(text)
    return matches[-1].strip() if matches else None


def equation_reaches(equation: str, nums: list[int], target: int) -> bool:
    """True when `equation` uses only numbers from `nums` (each at most once) and equals `target` exactly.

    >>> equation_reaches("(6 - 2) * 5", [2, 5, 6], 20), equation_reaches("6 / (5 - 2) * 10", [2, 5, 6], 20)
    (True, False)
    """
    try:
        tree = ast.parse(equation, mode="eval")
    except (SyntaxError, ValueError):
        return False
    used: list[int] = []
    try:
        value = _evaluate(tree.body, used)
    except RecursionError:  # absurdly deep nesting: not an answer
        return False
    if value is None or Counter(used) - Counter(nums):  # a number not given, or used more often than given
        return False
    return value == target


def _evaluate(node: ast.AST, used: list[int]) -> Fraction | None:
    """Exact value of an arithmetic expression tree, recording the integers it uses; None if not allowed."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _evaluate(node.operand, used)
        return None if inner is None else -inner
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
            return None
        return _OPS[type(node.op)](left, right)
    return None

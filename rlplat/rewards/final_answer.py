"""`final_answer`: the number after the response's last `####` equals the row's `answer` exactly.

For multi-turn tool-calling responses, whose text holds the model's calls and the tools' replies as well as the
final answer: `math_verify` reads the last number anywhere in it, so a trajectory that calls the calculator and
stops before answering would score on the tool's reply, and `#### 12 * 3` would match 36. Here only an explicit
`#### N` counts (tool replies carry no `####`), compared as integers after dropping thousands commas.
Spec: `reward: {terms: [{name: rlplat/rewards/final_answer.py:final_answer}]}` (a user-function path, from the
repository root).
"""

from __future__ import annotations

import re
from typing import Any

_FINAL = re.compile(r"####\s*(-?[\d,]*\d)")


def final_number(text: str) -> int | None:
    """The integer after the last `####`, or None.

    >>> final_number("<tool_call>...</tool_call> 359943060 #### 359,943,060"), final_number("359943060")
    (359943060, None)
    >>> final_number("#### 3 #### 12 * 3"), final_number("#### -42.")
    (12, -42)
    """
    found = _FINAL.findall(text)
    return int(found[-1].replace(",", "")) if found else None


def final_answer(batch: Any) -> list[float]:
    """1.0 per sample whose `final_number` equals its `answer` (an integer; after a GSM8K `####` if any).

    batch: rlplat.rewards.basic.RewardInputs (response_texts, and the `answer` column or `answers`).
    """
    golds = batch.column("answer") if batch.columns else batch.answers
    out = []
    for text, gold in zip(batch.response_texts, golds, strict=True):
        want = final_number(str(gold)) if "####" in str(gold) else _as_int(str(gold))
        got = final_number(text)
        out.append(float(want is not None and got == want))
    return out


def _as_int(text: str) -> int | None:
    try:
        return int(text.strip().replace(",", ""))
    except ValueError:
        return None


final_answer.required_columns = ("answer",)  # type: ignore[attr-defined]

"""Built-in batched reward functions over token ids.

A reward function takes a `RewardInputs` batch and returns a float tensor [B] (or a sequence of B floats).
Score generated token ids, not decoded text: a policy learns to exploit what decoding hides (e.g. pad vs EOS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class RewardInputs:
    """One batch of B finished samples.

    response_token_ids: B lists of generated ids (EOS included when generated).
    response_texts: B decoded responses (special tokens skipped), for text-based rewards.
    answers: B reference answers as text; answer_token_ids: B tokenised answers (no EOS).
    env_returns: B episode returns from a multi-turn environment (rlplat.envs.agent_loop), or None without one.
    references: B lists of reference token-id sequences (several per sample, for `tensorbleu`), or None: then
    the one reference is `answer_token_ids`.
    columns: B dicts, the dataset row of each sample without its prompt (answer, nums, target, tests, ...;
    rlplat.data.datasets.Row.columns), or empty when the samples carry no dataset row. Read one column for the
    whole batch with `column(name)`.
    """

    response_token_ids: list[list[int]]
    response_texts: list[str]
    answers: list[str]
    answer_token_ids: list[list[int]]
    eos_token_id: int
    env_returns: list[float] | None = None
    references: list[list[list[int]]] | None = None
    columns: Sequence[Mapping[str, Any]] = ()

    def __post_init__(self) -> None:
        if self.columns and len(self.columns) != len(self.response_token_ids):
            raise ValueError(f"columns has {len(self.columns)} rows for {len(self.response_token_ids)} responses")

    def __len__(self) -> int:
        return len(self.response_token_ids)

    def column(self, name: str) -> list[Any]:
        """The dataset column `name` for every sample; ValueError naming it when the rows lack it.

        >>> b = RewardInputs(response_token_ids=[[5], [6]], response_texts=["", ""], answers=["", ""],
        ...                  answer_token_ids=[[], []], eos_token_id=1, columns=[{"target": 3}, {"target": 7}])
        >>> b.column("target")
        [3, 7]
        """
        if not self.columns and len(self):
            raise ValueError(f"the reward needs the dataset column {name!r}, but the samples carry no dataset rows")
        missing = [i for i, row in enumerate(self.columns) if row.get(name) is None]
        if missing:
            have = ", ".join(sorted(k for k, v in self.columns[missing[0]].items() if v is not None)) or "none"
            raise ValueError(f"the reward needs the dataset column {name!r}, which sample {missing[0]}'s row lacks "
                             f"(its columns: {have})")
        return [row[name] for row in self.columns]


def digit_accuracy(batch: RewardInputs) -> torch.Tensor:
    """Fraction of positions of `answer + EOS` that the response matches token for token.

    >>> b = RewardInputs(response_token_ids=[[5, 6, 1], [5, 7]], response_texts=["", ""], answers=["", ""],
    ...                  answer_token_ids=[[5, 6], [5, 6]], eos_token_id=1)
    >>> digit_accuracy(b).tolist()
    [1.0, 0.3333333432674408]
    """
    out = torch.zeros(len(batch))
    for i, (resp, ans) in enumerate(zip(batch.response_token_ids, batch.answer_token_ids, strict=True)):
        target = ans + [batch.eos_token_id]
        hits = sum(1 for j, t in enumerate(target) if j < len(resp) and resp[j] == t)
        out[i] = hits / len(target)
    return out


def exact_match(batch: RewardInputs) -> torch.Tensor:
    """1.0 when the response is exactly the answer's tokens followed by EOS (or the budget ended right after).

    >>> b = RewardInputs(response_token_ids=[[5, 6, 1], [5, 6, 7]], response_texts=["", ""], answers=["", ""],
    ...                  answer_token_ids=[[5, 6], [5, 6]], eos_token_id=1)
    >>> exact_match(b).tolist()
    [1.0, 0.0]
    """
    out = torch.zeros(len(batch))
    for i, (resp, ans) in enumerate(zip(batch.response_token_ids, batch.answer_token_ids, strict=True)):
        out[i] = float(resp == ans + [batch.eos_token_id] or resp == ans)
    return out


def env_return(batch: RewardInputs) -> torch.Tensor:
    """The return each sample's episode earned in its environment (`env_returns`), passed through unchanged.

    >>> b = RewardInputs(response_token_ids=[[5], [6]], response_texts=["", ""], answers=["", ""],
    ...                  answer_token_ids=[[], []], eos_token_id=1, env_returns=[3.0, -1.0])
    >>> env_return(b).tolist()
    [3.0, -1.0]
    """
    if batch.env_returns is None:
        raise ValueError("env_return needs episode returns: set env.task_id in the spec to play an environment")
    return torch.tensor(batch.env_returns, dtype=torch.float32)

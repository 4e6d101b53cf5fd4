"""`reward:`: the weighted reward terms a sample's reward is the sum of."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardTerm:
    name: str  # a built-in reward (`rlplat.rewards.registry.BUILTIN_REWARDS`) or `path/to/file.py:function`
    weight: float = 1.0
    pattern: str = ""  # format_regex only: the regex the whole decoded response must match (re.DOTALL)
    target_length_in_tokens: int = 0  # length_penalty only: responses longer than this are penalised

    def __post_init__(self) -> None:  # the parameters are ignored by the other rewards
        if self.name == "format_regex":
            check(bool(self.pattern), "format_regex needs a non-empty pattern")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"format_regex pattern {self.pattern!r} does not compile: {e}") from None
        if self.name == "length_penalty":
            check(self.target_length_in_tokens >= 1, "length_penalty needs target_length_in_tokens >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardConfig:
    terms: tuple[RewardTerm, ...] = (RewardTerm(name="digit_accuracy"),)
    timeout_s: float = 60.0  # time limit per reward function call (a user's function may hang)

    def __post_init__(self) -> None:
        check(len(self.terms) >= 1, "terms must name at least one reward")
        check(self.timeout_s > 0, "timeout_s must be > 0")

"""Typed records that cross process boundaries (rollout -> store -> learner) or are shared by sibling layers.

Everything here is plain Python data (lists of ints/floats, no tensors) so it pickles cheaply through Ray and
TransferQueue. Per-token fields of a response are lists of the same length as `response_token_ids`.
`SamplingOptions`, `TokenLedger` and the APRIL statistics over groups live here because both rollout/ (the
engine and the APRIL manager) and envs/ (the episode loop and its APRIL manager) use them, and siblings do not
import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    """Why a sample's generation stopped (vLLM's finish reasons, plus `pending` for not yet finished)."""

    PENDING = "pending"  # never started, or aborted mid-way: continue it later
    STOP = "stop"  # EOS or a stop string: complete
    LENGTH = "length"  # token budget exhausted: complete (truncated)


@dataclass(slots=True, kw_only=True)
class Sample:
    """One response to one prompt. Mutable only through `extend`, which APRIL uses to continue a sample.

    prompt_token_ids: [P] int, the tokenised prompt.
    response_token_ids: [T] int, generated so far (env tokens included for multi-turn episodes).
    logp_behaviour: [T] f32, log-prob of each token under the policy that sampled it (0.0 for env tokens).
    policy_versions: [T] int, the policy version that generated each token.
    loss_mask: [T] 0/1, 1 for model tokens, 0 for environment tokens.
    """

    group_id: int
    sample_index: int
    prompt_id: int
    prompt_token_ids: list[int]
    answer: str = ""
    response_token_ids: list[int] = field(default_factory=list)
    logp_behaviour: list[float] = field(default_factory=list)
    policy_versions: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.PENDING
    reward: float | None = None

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not FinishReason.PENDING

    def extend(
        self, token_ids: list[int], logps: list[float], policy_version: int | list[int], finish: FinishReason
    ) -> None:
        """Append newly generated model tokens (loss mask 1) with their behaviour log-probs.

        policy_version: one version for all new tokens, or one per token (weights can change mid-request).
        """
        versions = [policy_version] * len(token_ids) if isinstance(policy_version, int) else list(policy_version)
        if not len(token_ids) == len(logps) == len(versions):
            raise ValueError(f"{len(token_ids)} tokens, {len(logps)} log-probs, {len(versions)} versions")
        self.response_token_ids.extend(token_ids)
        self.logp_behaviour.extend(logps)
        self.policy_versions.extend(versions)
        self.loss_mask.extend([1] * len(token_ids))
        self.finish_reason = finish

    def validate(self) -> None:
        n = len(self.response_token_ids)
        for name in ("logp_behaviour", "policy_versions", "loss_mask"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"sample {self.group_id}/{self.sample_index}: {name} has "
                                 f"{len(getattr(self, name))} entries for {n} response tokens")


@dataclass(slots=True, kw_only=True)
class Group:
    """All samples of one prompt. Groups are never split: they train together or wait together."""

    group_id: int
    prompt_id: int
    samples: list[Sample]

    @property
    def is_complete(self) -> bool:
        return all(s.is_finished for s in self.samples)

    @property
    def oldest_policy_version(self) -> int | None:
        """The oldest policy version of any token in the group (None before any token was generated)."""
        versions = [min(s.policy_versions) for s in self.samples if s.policy_versions]
        return min(versions) if versions else None

    @property
    def num_response_tokens(self) -> int:
        return sum(s.num_response_tokens for s in self.samples)

    def validate(self) -> None:
        for s in self.samples:
            if s.group_id != self.group_id:
                raise ValueError(f"sample of group {s.group_id} inside group {self.group_id}")
            s.validate()


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainBatch:
    """What the learner consumes: whole groups' samples with one advantage per sample.

    samples: N samples (whole groups, in group order); each carries its outcome `reward`.
    advantages: [N] f32, one sequence-level advantage per sample (broadcast over its response tokens), or None when
    the learner computes token-level advantages itself (GAE with its critic, from each sample's reward).
    """

    samples: list[Sample]
    advantages: list[float] | None = None

    def validate(self) -> None:
        if self.advantages is not None and len(self.samples) != len(self.advantages):
            raise ValueError(f"{len(self.samples)} samples but {len(self.advantages)} advantages")
        if self.advantages is None and any(s.reward is None for s in self.samples):
            raise ValueError("a batch without advantages needs every sample's reward")
        for s in self.samples:
            s.validate()

    @property
    def num_tokens(self) -> int:
        return sum(len(s.prompt_token_ids) + s.num_response_tokens for s in self.samples)


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingOptions:
    """How an engine samples one request (vLLM's SamplingParams, the part rlplat sets)."""

    max_new_tokens: int  # the whole response budget; a continued sample gets what is left of it
    temperature: float = 1.0
    top_p: float = 1.0
    ignore_eos: bool = False  # sample past EOS up to the budget (fixed-length benchmark workloads)
    seed: int | None = None  # None: the engine's generator; else each request its own (rollout.engine.request_seed)


@dataclass(slots=True, kw_only=True)
class TokenLedger:
    """APRIL's response-token accounting (ALGORITHMS.md section 1): every generated response token is, at each step
    boundary, trained on (handed to the learner), still buffered, or dropped by the max-age rule, so
    `generated == trained + buffered + dropped`. `generated`, `trained`, `dropped` are cumulative; `buffered` is
    current."""

    generated: int = 0
    trained: int = 0
    buffered: int = 0
    dropped: int = 0

    @property
    def balanced(self) -> bool:
        return self.generated == self.trained + self.buffered + self.dropped

    def check(self) -> None:
        """Internal invariant: nothing generated is lost between step boundaries."""
        assert self.balanced, (
            f"token ledger out of balance: generated {self.generated} != trained {self.trained} + "
            f"buffered {self.buffered} + dropped {self.dropped}"
        )

    def as_metrics(self) -> dict[str, float]:
        return {
            "april/tokens_generated": float(self.generated),
            "april/tokens_trained": float(self.trained),
            "april/tokens_buffered": float(self.buffered),
            "april/tokens_dropped": float(self.dropped),
        }


def off_policy_token_fraction(groups: list[Group], current_version: int) -> float:
    """Share of model tokens (loss mask 1) in `groups` sampled by a policy version older than `current_version`.

    0.0 when there are no model tokens. With APRIL a continued sample mixes versions (prefix old, suffix new).
    """
    total = stale = 0
    for g in groups:
        for s in g.samples:
            for version, mask in zip(s.policy_versions, s.loss_mask, strict=True):
                if mask:
                    total += 1
                    stale += version < current_version
    return stale / total if total else 0.0


def count_policy_versions(groups: list[Group]) -> int:
    """How many samples in `groups` carry tokens of more than one policy version (continued across a sync)."""
    return sum(len(set(s.policy_versions)) > 1 for g in groups for s in g.samples)

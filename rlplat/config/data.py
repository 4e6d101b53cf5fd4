"""`data:` (the prompts: dataset files or the built-in digit task; the experience store) and `eval:`."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from rlplat.config.errors import check

ChatTemplateMode = Literal["auto", "always", "never"]
OverlongPolicy = Literal["drop", "error"]


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreConfig:
    """The asynchronous experience store (TransferQueue) between rollout and learner.

    Off: rollout and training alternate in one thread (synchronous, on-policy). On: a producer thread keeps
    generating while the learner trains, at most `max_staleness` policy versions ahead (0 = on-policy).
    The capacity a run uses is `RunConfig.store_capacity_in_groups` (it needs rollout.num_prompts_per_step).
    """

    enabled: bool = False
    max_staleness: int = 1  # k: a group's oldest token may lag the learner by at most k versions
    on_stale: Literal["wait", "drop"] = "wait"  # wait: the producer pauses; drop: stale groups are dropped, counted
    capacity_in_groups: int | None = None  # None: (max_staleness + 1) * rollout.num_prompts_per_step
    num_storage_units: int = 1

    def __post_init__(self) -> None:
        check(self.max_staleness >= 0, "max_staleness must be >= 0")
        check(self.capacity_in_groups is None or self.capacity_in_groups >= 1, "capacity_in_groups must be >= 1")
        check(self.num_storage_units >= 1, "num_storage_units must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    """Train and eval prompts: rows of dataset files (`train_files`), or the built-in digit `task` when
    `train_files` is empty (then `task`, `num_digits` and the prompt counts apply; the file options do not).

    Files are local jsonl, json, parquet or csv files or `save_to_disk` directories; whether they exist is checked
    before any actor starts, not here. Every column of a row reaches the reward functions.
    """

    # Dataset files (one or more; empty: the built-in digit task below)
    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()
    prompt_key: str = "prompt"  # the column holding the prompt: a string, or a list of {role, content} messages
    system_prompt: str | None = None  # prepended as a system message; None: none
    # auto: render prompts with the tokenizer's chat template when it has one; always: require one; never: plain text
    apply_chat_template: ChatTemplateMode = "auto"
    max_prompt_tokens: int | None = None  # rendered prompt length limit; None: only the model context limits it
    on_overlong: OverlongPolicy = "drop"  # drop: skip longer prompts (counted, logged); error: name file and row
    shuffle: bool = True  # reshuffle the train rows every epoch, seeded by `seed` (the digit task always shuffles)
    # The built-in digit task (used when train_files is empty)
    task: Literal["copy", "reverse", "add"] = "reverse"
    num_digits: int = 4
    num_train_prompts: int = 2048
    num_eval_prompts: int = 128
    seed: int = 1234
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        check(1 <= self.num_digits <= 16, "num_digits must be in [1, 16]")
        check(self.num_train_prompts >= 1 and self.num_eval_prompts >= 1, "prompt counts must be >= 1")
        for name in ("train_files", "eval_files"):
            check(all(isinstance(f, str) and f.strip() for f in getattr(self, name)),
                  f"{name} must be non-empty paths")
        check(bool(self.prompt_key.strip()), "prompt_key must name a column")
        check(self.system_prompt is None or bool(self.system_prompt.strip()),
              "system_prompt must be non-empty text (null for none)")
        check(self.max_prompt_tokens is None or self.max_prompt_tokens >= 1, "max_prompt_tokens must be >= 1")
        _check_choice("apply_chat_template", self.apply_chat_template, ChatTemplateMode)
        _check_choice("on_overlong", self.on_overlong, OverlongPolicy)


def _check_choice(name: str, value: object, choices: object) -> None:
    """The loader rejects a value outside a Literal; this catches a section built in code."""
    allowed = typing.get_args(choices)
    check(value in allowed, f"{name} must be one of {', '.join(map(repr, allowed))} (got {value!r})")


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalConfig:
    """Evaluation of the policy on the eval prompts during training (greedy, and with k samples for pass@k)."""

    every_steps: int = 0  # also at the first and the last step; 0: only there
    num_samples: int = 1  # k: samples per eval prompt (pass@k, mean@k); 1: greedy only

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "every_steps must be >= 0 (0: only at the first and the last step)")
        check(self.num_samples >= 1, "num_samples must be >= 1")

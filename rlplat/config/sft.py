"""`sft:`: supervised fine-tuning on chat conversations (`rlplat sft SPEC`), the warm start before RL.

The SFT run uses the spec's `model:` (the starting weights, dtype, LoRA), `learner:` (optimizer, token budget,
head options; `sft.lr`, `sft.warmup_steps` and `sft.micro_batch_size_in_tokens` replace its values), `experiment:`
(name, seed, output_dir), `tracking:` and `checkpoint:`. `rlplat train` ignores this section.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class SftConfig:
    # Files of chat conversations (jsonl, json, parquet, csv, save_to_disk dirs), one per row in `messages_key`:
    # a list of {role, content} with at least one assistant turn. Only assistant tokens are trained.
    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()  # held-out conversations: their loss is logged as eval/sft_loss
    messages_key: str = "messages"
    num_conversations_per_step: int = 32  # conversations per optimizer step (all learner micro-batches together)
    num_epochs: float = 1.0  # passes over train_files when num_steps is unset (fractions allowed)
    num_steps: int | None = None  # optimizer steps; set, it replaces num_epochs
    lr: float = 1e-5
    warmup_steps: int = 0
    micro_batch_size_in_tokens: int | None = None  # None: learner.micro_batch_size_in_tokens
    max_tokens_per_conversation: int | None = None  # longer ones are dropped, counted; None: the model's context
    eval_every_steps: int = 0  # eval loss every N steps (and at the first and last); 0: first and last only
    # Where the trained model directory goes (weights, tokenizer, chat template: a model.path for `rlplat train`).
    # Empty: <output_dir>/final_model.
    save_dir: str = ""

    def __post_init__(self) -> None:
        for name in ("train_files", "eval_files"):
            check(all(isinstance(f, str) and f.strip() for f in getattr(self, name)),
                  f"{name} must be non-empty paths")
        check(bool(self.messages_key.strip()), "messages_key must name a column")
        check(self.num_conversations_per_step >= 1, "num_conversations_per_step must be >= 1")
        check(self.num_epochs > 0, "num_epochs must be > 0")
        check(self.num_steps is None or self.num_steps >= 1, "num_steps must be >= 1 (null: use num_epochs)")
        check(self.lr > 0, "lr must be > 0")
        check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        check(self.micro_batch_size_in_tokens is None or self.micro_batch_size_in_tokens >= 1,
              "micro_batch_size_in_tokens must be >= 1")
        check(self.max_tokens_per_conversation is None or self.max_tokens_per_conversation >= 2,
              "max_tokens_per_conversation must be >= 2")
        check(self.eval_every_steps >= 0, "eval_every_steps must be >= 0")

"""Chat conversations for supervised fine-tuning: token ids from the chat template, and which of them are trained.

`render_conversation(messages, tokenizer)` renders the whole conversation with `tokenizer.apply_chat_template`
and marks the assistant tokens. The assistant spans are found by rendering prefixes, with no knowledge of the
template: for assistant message i, the conversation up to it with the generation prompt (`<|im_start|>assistant\\n`
in ChatML) ends where its tokens start, and the conversation through it ends where they stop; the template's
separator after the end-of-turn token (ChatML's `\\n`) is cut off, so the span is the content plus its end token,
exactly what the model generates at rollout. Every prefix must render to a prefix of the whole conversation's ids
(a template that rewrites earlier turns, e.g. one that strips past reasoning, is an error naming the row).

The result is a `Sample` (rlplat.types), the record the learners already micro-batch: the prompt is everything
before the first assistant token, the response the rest, with loss_mask 1 on assistant tokens and 0 on the
user/system/template tokens between assistant turns (as env tokens of a multi-turn episode). No Ray, no vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlplat.data.chat import has_chat_template
from rlplat.data.datasets import Row
from rlplat.types import FinishReason, Sample

ASSISTANT = "assistant"


def render_conversation(messages: Sequence[Mapping[str, Any]], tokenizer: Any,
                        end_token_ids: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(ids, mask): the conversation's token ids from the chat template and a 0/1 mask, 1 on assistant tokens.

    end_token_ids: end-of-turn tokens (default: the tokenizer's eos_token_id). In each assistant span, tokens
    after the last end-of-turn token are template separators and get mask 0. ValueError (one line) when there is
    no template, no assistant message, or the template is not prefix-stable.
    """
    if not has_chat_template(tokenizer):
        raise ValueError("SFT conversations need a tokenizer with a chat template (e.g. `rlplat model tiny "
                         "--tokenizer bpe`)")
    msgs = [{k: v for k, v in m.items() if v is not None} for m in messages]
    if not any(m.get("role") == ASSISTANT for m in msgs):
        raise ValueError("the conversation has no assistant message to train on")
    if msgs[0].get("role") == ASSISTANT:
        raise ValueError("the conversation opens with an assistant message: there is no prompt before it")
    ends = set(end_token_ids) or {tokenizer.eos_token_id}
    ids = _render(tokenizer, msgs, generation_prompt=False)
    mask = [0] * len(ids)
    for i, m in enumerate(msgs):
        if m.get("role") != ASSISTANT:
            continue
        start = len(_prefix_of(ids, _render(tokenizer, msgs[:i], generation_prompt=True), i))
        stop = len(_prefix_of(ids, _render(tokenizer, msgs[: i + 1], generation_prompt=False), i + 1))
        span = ids[start:stop]
        last_end = max((k for k, t in enumerate(span) if t in ends), default=len(span) - 1)
        for k in range(start, start + last_end + 1):
            mask[k] = 1
    return ids, mask


def conversation_sample(ids: Sequence[int], mask: Sequence[int], *, example_id: int) -> Sample:
    """The rendered conversation as a Sample: prompt = tokens before the first trained one, response = the rest
    (loss_mask = mask there). ValueError when nothing is trained."""
    if 1 not in mask:
        raise ValueError("no assistant token to train on")
    first = max(1, list(mask).index(1))  # a trained token needs a token before it to be predicted from
    n = len(ids) - first
    return Sample(group_id=example_id, sample_index=0, prompt_id=example_id, prompt_token_ids=list(ids[:first]),
                  response_token_ids=list(ids[first:]), logp_behaviour=[0.0] * n, policy_versions=[0] * n,
                  loss_mask=list(mask[first:]), finish_reason=FinishReason.STOP)


@dataclass(frozen=True, slots=True, kw_only=True)
class SftExamples:
    """Conversations rendered for training; num_dropped counts those over max_tokens (log it)."""

    samples: list[Sample]
    num_dropped: int = 0
    num_trained_tokens: int = 0

    def __len__(self) -> int:
        return len(self.samples)


def sft_examples(rows: Sequence[Row], tokenizer: Any, *, max_tokens: int | None = None,
                 end_token_ids: Sequence[int] = ()) -> SftExamples:
    """Render every row's conversation (`Row.prompt`, a message list: load_rows with prompt_key = messages key).

    Conversations longer than max_tokens are dropped and counted; all dropped, a plain-string row, or a
    conversation without an assistant turn is a ValueError naming the file and row.
    """
    samples: list[Sample] = []
    shortest_dropped = 0
    for row in rows:
        if isinstance(row.prompt, str):
            raise ValueError(f"{row.where}: an SFT row needs a list of chat messages with an assistant turn, got a "
                             "string (set sft.messages_key to the messages column)")
        try:
            ids, mask = render_conversation(row.prompt, tokenizer, end_token_ids)
        except ValueError as e:
            raise ValueError(f"{row.where}: {e}") from None
        if max_tokens is not None and len(ids) > max_tokens:
            shortest_dropped = min(shortest_dropped or len(ids), len(ids))
            continue
        samples.append(conversation_sample(ids, mask, example_id=len(samples)))
    if not samples:
        raise ValueError(f"all {len(rows)} conversations are over {max_tokens} tokens (the shortest has "
                         f"{shortest_dropped}): raise sft.max_tokens_per_example or use a longer-context model")
    return SftExamples(samples=samples, num_dropped=len(rows) - len(samples),
                       num_trained_tokens=sum(sum(s.loss_mask) for s in samples))


def _render(tokenizer: Any, messages: list[dict[str, Any]], *, generation_prompt: bool) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                              return_dict=False))


def _prefix_of(full: list[int], prefix: list[int], num_messages: int) -> list[int]:
    if full[: len(prefix)] != prefix:
        raise ValueError(f"the chat template renders the first {num_messages} message(s) differently inside the "
                         "whole conversation (it rewrites earlier turns), so assistant tokens cannot be located")
    return prefix

"""Render one dataset prompt into the token ids the engine is given.

A prompt is a plain string or a list of chat messages ({"role", "content"}). Which path it takes:

| prompt       | apply_chat_template | tokenizer has a template | ids from                                      |
|--------------|---------------------|--------------------------|-----------------------------------------------|
| message list | auto / always       | yes                      | chat template + generation prompt             |
| message list | any                 | no (or mode "never")     | ValueError: a message list needs a template   |
| string       | auto / always       | yes                      | the string as one user message, as above      |
| string       | auto / never        | no / any                 | tokenizer(text, add_special_tokens=False)     |
| string       | always              | no                       | ValueError                                    |

`system_prompt` is prepended as a system message (a row whose messages already start with a system message
keeps its own); without a template there is no system role, so a system prompt is an error there.
The template's own special tokens come from the template; the ids returned are what the engine receives and
what the learner trains on, so nothing downstream re-tokenizes text. Pure: no Ray, no vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

Message = dict[str, Any]
Prompt = str | list[Message]
ChatTemplateMode = Literal["auto", "always", "never"]
CHAT_TEMPLATE_MODES: tuple[str, ...] = ("auto", "always", "never")


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template (transformers' `tokenizer.chat_template`)."""
    return bool(getattr(tokenizer, "chat_template", None))


def as_messages(prompt: Prompt, system_prompt: str | None = None) -> list[Message]:
    """The prompt as a message list, `system_prompt` first unless the messages already open with a system turn.

    >>> as_messages("2+2?", "Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2+2?'}]
    >>> as_messages([{"role": "system", "content": "Own."}, {"role": "user", "content": "hi"}], "Be brief.")
    [{'role': 'system', 'content': 'Own.'}, {'role': 'user', 'content': 'hi'}]
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def uses_chat_template(prompt: Prompt, tokenizer: Any, mode: ChatTemplateMode = "auto") -> bool:
    """Whether `prompt` goes through the chat template (table in the module docstring); ValueError if it must
    and the tokenizer has none, or if `mode` is not one of auto/always/never."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"apply_chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {mode!r}")
    has_template = has_chat_template(tokenizer)
    if not isinstance(prompt, str):
        if mode == "never" or not has_template:
            why = "apply_chat_template is 'never'" if has_template else "the tokenizer has no chat template"
            raise ValueError(f"prompt is a list of chat messages but {why}: give plain-string prompts or a "
                             "tokenizer with a chat template (e.g. `rlplat model tiny --tokenizer bpe`)")
        return True
    if mode == "always" and not has_template:
        raise ValueError("apply_chat_template is 'always' but the tokenizer has no chat template")
    return mode != "never" and has_template


def render_prompt(prompt: Prompt, tokenizer: Any, *, system_prompt: str | None = None,
                  apply_chat_template: ChatTemplateMode = "auto") -> list[int]:
    """Token ids of `prompt` ready for generation: through the chat template with the generation prompt, or
    the plain text encoded without special tokens (table in the module docstring). ValueError on a bad pairing.
    """
    if uses_chat_template(prompt, tokenizer, apply_chat_template):
        ids = tokenizer.apply_chat_template(_clean(as_messages(prompt, system_prompt)), add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids)
    if system_prompt is not None:
        raise ValueError("system_prompt needs a chat template (there is no system role in plain-text prompts)")
    assert isinstance(prompt, str)
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def render_prompt_text(prompt: Prompt, tokenizer: Any, *, system_prompt: str | None = None,
                       apply_chat_template: ChatTemplateMode = "auto") -> str:
    """The same prompt as text (the template rendered, not tokenized): for sample tables and logs."""
    if uses_chat_template(prompt, tokenizer, apply_chat_template):
        return str(tokenizer.apply_chat_template(_clean(as_messages(prompt, system_prompt)),
                                                 add_generation_prompt=True, tokenize=False))
    assert isinstance(prompt, str)
    return prompt


def render_prompts(prompts: Sequence[Prompt], tokenizer: Any, *, system_prompt: str | None = None,
                   apply_chat_template: ChatTemplateMode = "auto") -> list[list[int]]:
    """render_prompt over many prompts, each path in one batched tokenizer call (the Rust tokenizer batches)."""
    chat = [uses_chat_template(p, tokenizer, apply_chat_template) for p in prompts]
    if system_prompt is not None and not all(chat):
        raise ValueError("system_prompt needs a chat template (there is no system role in plain-text prompts)")
    out: list[list[int]] = [[] for _ in prompts]
    chat_idx = [i for i, c in enumerate(chat) if c]
    text_idx = [i for i, c in enumerate(chat) if not c]
    if chat_idx:
        convs = [_clean(as_messages(prompts[i], system_prompt)) for i in chat_idx]
        ids = tokenizer.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=False)
        for i, row in zip(chat_idx, ids, strict=True):
            out[i] = list(row)
    if text_idx:
        enc = tokenizer([prompts[i] for i in text_idx], add_special_tokens=False)["input_ids"]
        for i, row in zip(text_idx, enc, strict=True):
            out[i] = list(row)
    return out


def _clean(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Drop keys whose value is None: Arrow fills keys that only some messages of a file carry (e.g. `name`)
    with None, and templates test keys with `is defined`."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]

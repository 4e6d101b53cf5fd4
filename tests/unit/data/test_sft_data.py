"""SFT conversations: token ids from the chat template, the assistant-token mask found by rendering prefixes, and
the rows' errors; `rlplat data TASK OUT --sft` writes conversations with the correct answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.data.datasets import load_rows, rows_from_records
from rlplat.data.generators import countdown_splits, with_messages
from rlplat.data.sft import conversation_sample, render_conversation, sft_examples
from rlplat.models import TinyModelShape, build_char_tokenizer, write_tiny_model

SHAPE = TinyModelShape(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
CORPUS = ["What is 2 + 3? The answer is 5.", "Be brief. user assistant system", "<answer> 7 * 6 </answer>"] * 10
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "The answer is 5."}, {"role": "user", "content": "And 7 * 6?"},
                {"role": "assistant", "content": "<answer> 7 * 6 </answer>"}]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    out = write_tiny_model(tmp_path_factory.mktemp("m") / "bpe", shape=SHAPE, tokenizer="bpe", corpus=CORPUS)
    return AutoTokenizer.from_pretrained(out)


def _enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_mask_covers_exactly_the_assistant_content_and_its_end_token(tok) -> None:
    ids, mask = render_conversation(CONVERSATION, tok)
    assert ids == tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    # Hand-built ChatML: each turn is <|im_start|>role\n content <|im_end|>\n; only assistant content + <|im_end|>.
    want_ids: list[int] = []
    want_mask: list[int] = []
    for m in CONVERSATION:
        header = [start, *_enc(tok, m["role"] + "\n")]
        body = [*_enc(tok, m["content"]), end]
        trained = int(m["role"] == "assistant")
        want_ids += header + body + _enc(tok, "\n")
        want_mask += [0] * len(header) + [trained] * len(body) + [0] * len(_enc(tok, "\n"))
    assert ids == want_ids
    assert mask == want_mask
    assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == \
        "The answer is 5.<|im_end|><answer> 7 * 6 </answer><|im_end|>"


def test_mask_agrees_with_the_templates_generation_marks(tok) -> None:
    ids, mask = render_conversation(CONVERSATION, tok)
    marked = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert marked["input_ids"] == ids and marked["assistant_masks"] == mask


def test_a_template_that_rewrites_earlier_turns_is_an_error(tok) -> None:
    class Rewriting:  # drops earlier assistant turns' content, as templates that strip past reasoning do
        chat_template = "x"
        eos_token_id = tok.eos_token_id

        def apply_chat_template(self, messages, add_generation_prompt, **_):
            last = len(messages) - 1
            text = "".join(f"<|im_start|>{m['role']}\n{'' if i < last and m['role'] == 'assistant' else m['content']}"
                           f"<|im_end|>\n" for i, m in enumerate(messages))
            return tok(text + ("<|im_start|>assistant\n" if add_generation_prompt else ""),
                       add_special_tokens=False)["input_ids"]

    with pytest.raises(ValueError, match="rewrites earlier turns"):
        render_conversation(CONVERSATION, Rewriting())


@pytest.mark.parametrize(("messages", "match"), [
    ([{"role": "user", "content": "hi"}], "no assistant message"),
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}], "opens with an assistant"),
])
def test_conversations_without_a_trainable_turn(tok, messages, match) -> None:
    with pytest.raises(ValueError, match=match):
        render_conversation(messages, tok)


def test_no_chat_template_is_an_error() -> None:
    with pytest.raises(ValueError, match="chat template"):
        render_conversation(CONVERSATION, build_char_tokenizer())


def test_sample_puts_the_first_trained_token_in_the_response() -> None:
    s = conversation_sample([5, 6, 7, 8, 9, 10], [0, 0, 1, 1, 0, 1], example_id=3)
    assert s.prompt_token_ids == [5, 6] and s.response_token_ids == [7, 8, 9, 10]
    assert s.loss_mask == [1, 1, 0, 1] and len(s.logp_behaviour) == len(s.policy_versions) == 4
    assert s.group_id == 3


def test_sft_examples_drop_overlong_and_name_bad_rows(tok) -> None:
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "5"}]
    rows = rows_from_records([{"messages": CONVERSATION}, {"messages": short}], prompt_key="messages", source="f")
    ex = sft_examples(rows, tok, max_tokens=len(render_conversation(short, tok)[0]))
    assert len(ex) == 1 and ex.num_dropped == 1
    with pytest.raises(ValueError, match="all 2 conversations are over 3 tokens"):
        sft_examples(rows, tok, max_tokens=3)
    bad = rows_from_records([{"messages": short}, {"messages": short[:1]}], prompt_key="messages", source="f.jsonl")
    with pytest.raises(ValueError, match="f.jsonl row 2: the conversation has no assistant"):
        sft_examples(bad, tok)
    text = rows_from_records([{"prompt": "hi"}], source="g.jsonl")
    with pytest.raises(ValueError, match="g.jsonl row 1: .*set sft.messages_key"):
        sft_examples(text, tok)


def test_with_messages_appends_the_correct_answer() -> None:
    rec = countdown_splits(num_train=1, num_test=0, seed=0)["train"][0]
    (out,) = with_messages([rec], prompt_key="prompt", response_key="response")
    assert out["messages"] == [*rec["prompt"], {"role": "assistant", "content": rec["response"]}]
    assert {k: v for k, v in out.items() if k != "messages"} == rec


@pytest.mark.parametrize("task", ["countdown", "arithmetic", "digits"])
def test_cli_data_sft_writes_loadable_conversations(tmp_path: Path, task: str) -> None:
    assert main(["data", task, str(tmp_path), "--n", "5", "--n-test", "2", "--sft"]) == 0
    rows = load_rows([tmp_path / "train.jsonl"], prompt_key="messages")
    assert len(rows) == 5 and all(r.prompt[-1]["role"] == "assistant" for r in rows)  # type: ignore[index]
    first = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    assert first["messages"][-1]["content"] == str(first[{"countdown": "response"}.get(task, "answer")])

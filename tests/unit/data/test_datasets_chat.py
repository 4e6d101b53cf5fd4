"""Prompt rendering: chat template or plain text, system prompts, the prompt budget, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.data.chat import render_prompt, render_prompt_text, render_prompts
from rlplat.data.datasets import Row, rows_from_records, tokenize_prompts
from rlplat.data.generators import records_from_problems
from rlplat.envs.tasks import make_split
from rlplat.models import TinyModelShape, build_char_tokenizer, write_tiny_model

SHAPE = TinyModelShape(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
CORPUS = ["What is 2 + 3? The answer is 5.", "Be brief. user assistant system", "Using the numbers 7 and 6."] * 10
USER = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory):
    """The tiny BPE chat model's tokenizer, loaded from its directory like any local model."""
    from transformers import AutoTokenizer

    out = write_tiny_model(tmp_path_factory.mktemp("m") / "bpe", shape=SHAPE, tokenizer="bpe", corpus=CORPUS)
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def char():
    return build_char_tokenizer()


def test_message_list_ids_come_from_apply_chat_template(bpe) -> None:
    ids = render_prompt(USER, bpe)
    assert ids == bpe.apply_chat_template(USER, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert bpe.decode(ids) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"


def test_string_prompt_goes_through_the_template_unless_never(bpe) -> None:
    assert render_prompt("What is 2 + 3?", bpe) == render_prompt(USER, bpe)  # auto: the tokenizer has one
    assert render_prompt("What is 2 + 3?", bpe, apply_chat_template="always") == render_prompt(USER, bpe)
    plain = render_prompt("What is 2 + 3?", bpe, apply_chat_template="never")
    assert plain == bpe("What is 2 + 3?", add_special_tokens=False)["input_ids"]


def test_system_prompt_is_prepended_unless_the_row_has_one(bpe) -> None:
    text = render_prompt_text("Hi", bpe, system_prompt="Be brief.")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    own = [{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}]
    assert render_prompt_text(own, bpe, system_prompt="Be brief.").startswith("<|im_start|>system\nOwn.<|im_end|>")


def test_none_valued_message_keys_are_dropped(bpe) -> None:
    assert render_prompt([{"role": "user", "content": "What is 2 + 3?", "name": None}], bpe) == render_prompt(USER, bpe)


def test_plain_tokenizer_encodes_text_without_special_tokens(char) -> None:
    assert render_prompt("cp:12=", char) == char("cp:12=", add_special_tokens=False)["input_ids"]
    assert render_prompt_text("cp:12=", char) == "cp:12="


def test_batched_rendering_matches_one_by_one(bpe) -> None:
    prompts = [USER, "Hi", [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}], "7 and 6"]
    assert render_prompts(prompts, bpe, apply_chat_template="auto") == [render_prompt(p, bpe) for p in prompts]


@pytest.mark.parametrize(("prompt", "mode", "kwargs", "match"), [
    (USER, "auto", {}, "prompt is a list of chat messages but the tokenizer has no chat template"),
    ("cp:1=", "always", {}, "apply_chat_template is 'always' but the tokenizer has no chat template"),
    ("cp:1=", "auto", {"system_prompt": "S"}, "system_prompt needs a chat template"),
    ("cp:1=", "sometimes", {}, "apply_chat_template must be one of auto, always, never"),
])
def test_bad_pairings_with_a_plain_tokenizer(char, prompt, mode: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_prompt(prompt, char, apply_chat_template=mode, **kwargs)  # type: ignore[arg-type]


def test_never_with_a_message_list_is_an_error(bpe) -> None:
    with pytest.raises(ValueError, match="prompt is a list of chat messages but apply_chat_template is 'never'"):
        render_prompt(USER, bpe, apply_chat_template="never")


# ---------------------------------------------------------------- tokenize_prompts: a dataset's prompts and budget


def _rows(*prompts) -> list[Row]:
    return rows_from_records([{"prompt": p, "answer": str(i)} for i, p in enumerate(prompts)], source="d.jsonl")


def test_tokenize_prompts_keeps_rows_and_ids_together(bpe) -> None:
    rows = _rows(USER, "Hi")
    out = tokenize_prompts(rows, bpe, system_prompt="Be brief.")
    assert out.rows == rows and out.num_dropped == 0
    assert out.prompt_token_ids == [render_prompt(USER, bpe, system_prompt="Be brief."),
                                    render_prompt("Hi", bpe, system_prompt="Be brief.")]


def test_overlong_prompts_are_dropped_and_counted(char) -> None:
    rows = _rows("cp:1=", "cp:123456=", "cp:12=")
    out = tokenize_prompts(rows, char, max_prompt_tokens=6)
    assert [r.prompt for r in out.rows] == ["cp:1=", "cp:12="] and out.num_dropped == 1
    assert out.prompt_token_ids == [char("cp:1=")["input_ids"], char("cp:12=")["input_ids"]]


def test_overlong_prompt_with_on_overlong_error_names_file_and_row(char) -> None:
    with pytest.raises(ValueError, match=r"^d.jsonl row 2: prompt has 10 tokens > max_prompt_tokens 6 "):
        tokenize_prompts(_rows("cp:1=", "cp:123456="), char, max_prompt_tokens=6, on_overlong="error")


def test_all_prompts_overlong_is_an_error(char) -> None:
    with pytest.raises(ValueError, match=r"all 2 prompts of d.jsonl are over max_prompt_tokens 3 \(the shortest "
                                         r"has 5 tokens\)"):
        tokenize_prompts(_rows("cp:1=", "cp:123456="), char, max_prompt_tokens=3)


def test_message_row_without_a_template_names_the_row(char) -> None:
    with pytest.raises(ValueError, match=r"^d.jsonl row 2: prompt is a list of chat messages but the tokenizer "
                                         r"has no chat template"):
        tokenize_prompts(_rows("cp:1=", USER), char)


def test_characters_the_tokenizer_does_not_know_name_the_row(char) -> None:
    with pytest.raises(ValueError, match=r"^d.jsonl row 2: the prompt has characters the tokenizer does not know "
                                         r"\(they encode as its unknown token '<pad>'\)"):
        tokenize_prompts(_rows("cp:1=", "What is 2 + 3?"), char)


def test_bad_budget_arguments(char) -> None:
    with pytest.raises(ValueError, match="on_overlong must be 'drop' or 'error'"):
        tokenize_prompts(_rows("a"), char, on_overlong="truncate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_prompt_tokens must be >= 1"):
        tokenize_prompts(_rows("a"), char, max_prompt_tokens=0)


def test_digit_task_rows_behind_the_same_interface(char) -> None:
    problems = make_split("reverse", num_digits=3, num_prompts=5, seed=1, split="train")
    rows = rows_from_records(records_from_problems(problems), source="digits:reverse:train")
    out = tokenize_prompts(rows, char)
    assert len(out) == 5 and rows[0].source == "digits:reverse:train"
    for row, ids in zip(out.rows, out.prompt_token_ids, strict=True):
        assert row.prompt.startswith("rev:") and row.columns["answer"] == row.prompt[4:-1][::-1]
        assert char.decode(ids) == row.prompt


def test_from_file_through_the_chat_path(tmp_path: Path, bpe) -> None:
    from rlplat.data.datasets import load_prompts

    path = tmp_path / "d.jsonl"
    path.write_text('{"question": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5"}\n'
                    '{"question": [{"role": "user", "content": "' + "long " * 100 + '"}], "answer": "6"}\n')
    out = load_prompts([path], bpe, prompt_key="question", system_prompt="Be brief.", max_prompt_tokens=40,
                       cache_dir=tmp_path / "c")
    assert out.prompt_token_ids == [render_prompt(USER, bpe, system_prompt="Be brief.")] and out.num_dropped == 1
    assert out.rows[0].columns == {"answer": "5"}

"""`rlplat model tiny --tokenizer bpe`: a tiny Qwen2 model whose byte-level BPE tokenizer has a ChatML template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.models import (
    BPE_PAD_TOKEN,
    IM_END,
    IM_START,
    TinyModelShape,
    build_bpe_tokenizer,
    read_corpus,
    write_tiny_model,
)

SMALL = TinyModelShape(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64,
                       max_position_embeddings=256)
CORPUS = ["Using the numbers [3, 5, 7], create an equation that equals 22.",
          "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
          "<answer> (3 + 5) * 7 </answer>", "user\nassistant\nsystem\n"] * 20


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("bpe") / "tiny", shape=SMALL, tokenizer="bpe", corpus=CORPUS)


@pytest.fixture(scope="module")
def tok(bpe_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_dir)


def test_special_tokens_and_eos(bpe_dir: Path, tok) -> None:
    assert tok.convert_tokens_to_ids([BPE_PAD_TOKEN, IM_START, IM_END]) == [0, 1, 2]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == (IM_END, 2, 0)
    assert tok(f"{IM_START}user\nhi{IM_END}", add_special_tokens=False)["input_ids"][0] == 1  # one id, not split
    assert json.loads((bpe_dir / "generation_config.json").read_text()) == {"eos_token_id": 2, "pad_token_id": 0}
    config = json.loads((bpe_dir / "config.json").read_text())
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= len(tok)
    assert config["eos_token_id"] == 2 and config["max_position_embeddings"] == 256


def test_chatml_template_renders_a_message_list(tok) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 5?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3 + 5?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_assistant_tokens_are_marked_for_sft(tok) -> None:
    messages = [{"role": "user", "content": "3 + 5?"}, {"role": "assistant", "content": "8"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(marked) == f"8{IM_END}"


def test_byte_level_round_trips_any_text(tok) -> None:
    for text in ["  two  spaces\tand tab\n", "ünïcödé ✓ 漢字", "12345 + 678 = 13023", "<answer> 1 </answer>"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_loaded_tokenizer_encodes_as_the_trained_one(tok) -> None:
    trained = build_bpe_tokenizer(CORPUS)
    for text in CORPUS[:4] + ["It's 10 o'clock, isn't it?\n\n  x"]:
        assert tok(text)["input_ids"] == trained(text)["input_ids"]


def test_model_loads_and_runs(bpe_dir: Path, tok) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bpe_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_char_tokenizer_stays_the_default(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = write_tiny_model(tmp_path / "char", shape=SMALL)
    assert not AutoTokenizer.from_pretrained(out).chat_template


def test_bad_tokenizer_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size 100 is below"):
        build_bpe_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="tokenizer must be 'char' or 'bpe'"):
        write_tiny_model(tmp_path / "x", shape=SMALL, tokenizer="word")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="corpus file .* does not exist"):
        read_corpus(tmp_path / "none.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="has no text"):
        read_corpus(tmp_path / "blank.txt")


def test_cli_model_tiny_bpe_with_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    out = tmp_path / "m"
    assert main(["model", "tiny", str(out), "--tokenizer", "bpe", "--corpus", str(corpus), "--hidden-size", "64",
                 "--num-layers", "1", "--intermediate-size", "64", "--vocab-size", "300"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 512 and config["vocab_size"] == 320  # 300 rounded up to 64s
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()
    assert main(["model", "tiny", str(tmp_path / "c"), "--corpus", str(corpus)]) == 2
    assert "--corpus trains a BPE tokenizer: add --tokenizer bpe" in capsys.readouterr().err

"""Model directories: build a tiny Qwen2 model (character or byte-level BPE tokenizer), check any local HF model dir.

A tiny model is an ordinary Hugging Face directory (config.json, model.safetensors, tokenizer.json), so vLLM and
transformers load it exactly like a downloaded Qwen or Llama directory. Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
# Characters the char tokenizer knows: digits, letters, punctuation. No whitespace: transformers 5 loads a
# tokenizer of a `qwen2` model directory as Qwen2Tokenizer, whose byte-level pre-tokenizer would remap it.
CHARSET = string.digits + string.ascii_letters + string.punctuation

# The BPE tokenizer's special tokens, as in Qwen2: ChatML turn markers, and <|endoftext|> as padding.
BPE_PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Qwen2's pre-tokenizer split (digits one by one, words with their leading space). transformers 5 loads the
# tokenizer of a `qwen2` model directory as Qwen2Tokenizer; training with its own split keeps the ids identical.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
# ChatML, as Qwen's: each turn `<|im_start|>role\ncontent<|im_end|>\n`, the generation prompt opens an assistant
# turn. {% generation %} marks assistant tokens, so SFT can ask for return_assistant_tokens_mask.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TinyModelShape:
    """Shape of a tiny Qwen2 model. vLLM's CPU attention needs head_dim >= 32 (hidden / heads)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 128


def build_char_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A character-level tokenizer (one token per character) in the standard tokenizer.json format."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD_TOKEN: 0, EOS_TOKEN: 1}
    for ch in CHARSET:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD_TOKEN))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=PAD_TOKEN
    )


def build_bpe_tokenizer(corpus: Iterable[str], *, vocab_size: int = 512):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on `corpus` with the `tokenizers` library, with a ChatML chat template.

    Any text encodes (bytes are the base alphabet); the three special tokens come first (ids 0, 1, 2):
    <|endoftext|> (pad), <|im_start|>, <|im_end|> (EOS: a chat model ends its turn with it). vocab_size is an
    upper bound: a small corpus yields fewer merges.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BPE_PAD_TOKEN, IM_START, IM_END]
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} is below the 259 tokens of the byte alphabet and special tokens")
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=BPE_PAD_TOKEN, eos_token=IM_END,
                                        additional_special_tokens=[IM_START, IM_END])
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def default_corpus(*, num_per_task: int = 200, seed: int = 0) -> list[str]:
    """Text of the built-in tasks: countdown and arithmetic (rlplat.data.generators) and the digit tasks."""
    from rlplat.data.generators import corpus_texts
    from rlplat.envs.tasks import TASKS, make_split

    digits = [p.prompt + p.answer for task in TASKS
              for p in make_split(task, num_digits=4, num_prompts=num_per_task // 4, seed=seed, split="train")]
    return corpus_texts(num_per_task=num_per_task, seed=seed) + digits


def read_corpus(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, for build_bpe_tokenizer; ValueError if none."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"corpus file {str(p)!r} does not exist")
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"corpus file {str(p)!r} has no text")
    return lines


def write_tiny_model(out_dir: str | Path, *, shape: TinyModelShape | None = None, seed: int = 0,
                     tokenizer: Literal["char", "bpe"] = "char", corpus: Sequence[str] | None = None,
                     vocab_size: int = 512) -> Path:
    """Write a randomly initialised tiny Qwen2 model + tokenizer to `out_dir` and return the path.

    tokenizer "char": one token per character, no chat template (the digit tasks). "bpe": byte-level BPE trained
    on `corpus` (default: `default_corpus()`, the built-in tasks' text) with a ChatML template,
    so chat-message prompts run exactly as they do for Qwen or Llama.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # Chat prompts with a template are longer than the digit tasks' (a countdown prompt is ~120 BPE tokens).
    shape = shape or TinyModelShape(max_position_embeddings=512 if tokenizer == "bpe" else 128)
    if shape.hidden_size // shape.num_heads < 32:
        raise ValueError(f"head_dim {shape.hidden_size // shape.num_heads} < 32: vLLM's CPU attention rejects it")
    if tokenizer == "char":
        tok = build_char_tokenizer()
    elif tokenizer == "bpe":
        tok = build_bpe_tokenizer(default_corpus() if corpus is None else corpus, vocab_size=vocab_size)
    else:
        raise ValueError(f"tokenizer must be 'char' or 'bpe', got {tokenizer!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = Qwen2Config(
        # Round the vocabulary up to a multiple of 64, as real models do (vLLM pads its LM head that way).
        vocab_size=-(-len(tok) // 64) * 64,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # vLLM reads generation_config.json for default stop tokens; make EOS explicit.
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    )
    return out


def check_model_dir(path: str | Path) -> Path:
    """Raise ValueError with a one-line reason unless `path` is a loadable local HF model directory."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model directory {str(p)!r} does not exist (create one with `rlplat model tiny {p}`)")
    if not (p / "config.json").is_file():
        raise ValueError(f"model directory {str(p)!r} has no config.json: not a Hugging Face model directory")
    has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    if not has_weights:
        raise ValueError(f"model directory {str(p)!r} has no *.safetensors or *.bin weights")
    if not ((p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()):
        raise ValueError(f"model directory {str(p)!r} has no tokenizer files")
    return p


def max_context_length(path: str | Path) -> int:
    """The model's context length from its config.json (max_position_embeddings)."""
    config = json.loads((Path(path) / "config.json").read_text())
    return int(config.get("max_position_embeddings", 2048))

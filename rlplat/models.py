"""Model directories: build a tiny Qwen2 model with a character tokenizer, and check any local HF model directory.

A tiny model is an ordinary Hugging Face directory (config.json, model.safetensors, tokenizer.json), so vLLM and
transformers load it exactly like a downloaded Qwen or Llama directory. Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
# Characters the char tokenizer knows: digits, letters, punctuation. No whitespace: transformers 5 loads a
# tokenizer of a `qwen2` model directory as Qwen2Tokenizer, whose byte-level pre-tokenizer would remap it.
CHARSET = string.digits + string.ascii_letters + string.punctuation


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


def write_tiny_model(out_dir: str | Path, *, shape: TinyModelShape | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised tiny Qwen2 model + char tokenizer to `out_dir` and return the path."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = shape or TinyModelShape()
    if shape.hidden_size // shape.num_heads < 32:
        raise ValueError(f"head_dim {shape.hidden_size // shape.num_heads} < 32: vLLM's CPU attention rejects it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    config = Qwen2Config(
        # Round the vocabulary up to a multiple of 64, as real models do (vLLM pads its LM head that way).
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # vLLM reads generation_config.json for default stop tokens; make EOS explicit.
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id})
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

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
# Tools as Qwen2.5 renders them (Hermes format), in a shorter system text for tiny contexts: `tools=` goes into the
# system turn as one JSON schema per line inside <tools></tools>; an assistant message's `tool_calls` render as
# `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` after its content; consecutive `tool` messages
# share one user turn, each inside <tool_response></tool_response>. Without tools and tool messages the text is
# plain ChatML, as before.
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- '# Tools\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\n</tools>\nCall a tool with <tool_call>{\"name\": <name>, \"arguments\": <json object>}</tool_call>'"
    " + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first and tools %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}{% generation %}{{- message['content'] or '' }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{%- if loop.first and message['content'] %}{{- '\n' }}{%- elif not loop.first %}{{- '\n' }}{%- endif %}"
    "{{- '<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}{%- else %}{{- call['arguments'] | tojson }}"
    "{%- endif %}{{- '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{% endgeneration %}{{- '\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}"
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
    """Raise ValueError with a one-line reason unless `path` is a loadable local HF model directory: its JSON files
    parse, and every weights file is whole (a safetensors file as long as its header says; a torch .bin a whole zip)."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model directory {str(p)!r} does not exist (create one with `rlplat model tiny {p}`)")
    if not (p / "config.json").is_file():
        raise ValueError(f"model directory {str(p)!r} has no config.json: not a Hugging Face model directory")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors.index.json"):
        if (p / name).is_file():
            _read_json_object(p / name)
    weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    if not weights:
        raise ValueError(f"model directory {str(p)!r} has no *.safetensors or *.bin weights")
    if (p / "model.safetensors.index.json").is_file():
        _check_shards(p)
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)
        else:
            _check_torch_bin(w)
    max_context_length(p)
    if not ((p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()):
        raise ValueError(f"model directory {str(p)!r} has no tokenizer files")
    return p


def _read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object; ValueError naming the file and the position of the damage."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text: the file is damaged") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): the file is "
                         "damaged or truncated") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object: the file is damaged")
    return data


def _check_safetensors(path: Path) -> None:
    """The file holds its header and all the tensor bytes the header declares (a copy cut short fails here, not
    with a Rust panic inside the loader). Format: u64 little-endian header length, JSON header, tensor data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{path} is truncated or not a safetensors file ({size} bytes; "
                             f"its header needs {8 + max(n, 0)})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} has a damaged safetensors header") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise ValueError(f"{path} is truncated: {size} bytes, its header declares {expected}")


def _check_torch_bin(path: Path) -> None:
    """A torch .bin in the zip format ends in a central directory: a truncated copy has none."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is truncated or not a torch checkpoint (no zip central directory)")


def _check_shards(p: Path) -> None:
    """Every shard that model.safetensors.index.json maps a weight to exists."""
    weight_map = _read_json_object(p / "model.safetensors.index.json").get("weight_map", {})
    missing = sorted({f for f in weight_map.values() if not (p / str(f)).is_file()}) if isinstance(
        weight_map, dict) else []
    if missing:
        raise ValueError(f"model directory {str(p)!r} lacks weight shard(s) {', '.join(missing)} that "
                         "model.safetensors.index.json names")


def max_context_length(path: str | Path) -> int:
    """The model's context length from its config.json (max_position_embeddings); ValueError (one line) if
    config.json is damaged or the value is not a positive integer."""
    config = _read_json_object(Path(path) / "config.json")
    value = config.get("max_position_embeddings", 2048)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{Path(path) / 'config.json'}: max_position_embeddings must be a positive integer, "
                         f"got {value!r}")
    return value


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def copy_model_files(src_dir: str | Path, out_dir: str | Path) -> None:
    """Copy a model directory's files other than its weights and config.json (tokenizer files, chat template,
    generation config: vLLM reads its stop tokens there) byte for byte into `out_dir`, which holds trained weights.
    Copied, not re-saved: transformers may save a loaded tokenizer under another class."""
    import shutil

    for src in sorted(Path(src_dir).iterdir()):
        if src.is_file() and src.name != "config.json" and not src.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(src, Path(out_dir) / src.name)

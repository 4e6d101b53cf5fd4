"""Prompt datasets from files: load rows, tokenize their prompts, serve them in seeded, resumable epochs.

What the driver calls, in order, before any actor starts (each bad input is a one-line ValueError):
1. `load_rows(files, prompt_key=...)` -> list[Row]. Hugging Face `datasets` reads .jsonl/.json, .parquet, .csv
   and `save_to_disk` directories, offline. A row's prompt is a string or a list of {role, content} messages;
   every other column is kept in `Row.columns` for the rewards (answer, nums, target, tests, ...).
   Missing file, unknown prompt_key, malformed jsonl line (file and line named), empty file, bad prompt value.
   In-memory rows (the digit tasks, tests) go through `rows_from_records` with the same checks.
2. `tokenize_prompts(rows, tokenizer, ...)` -> TokenizedPrompts: each prompt rendered by rlplat.data.chat
   (chat template with the generation prompt, or plain text), prompts over `max_prompt_tokens` dropped and
   counted, or an error naming file and row; all dropped is an error.
   (`load_prompts` does 1 and 2 in one call.)
3. `EpochCursor(num_rows, seed=...)`: row indices in epochs, reshuffled per epoch from (seed, epoch); `state()`
   is a small JSON-able dict for the checkpoint and `EpochCursor.from_state` continues with the next unseen row.
Also `common_columns(rows)`: the columns every row has, to check rewards' needs (rlplat.rewards.registry).
No Ray, no vLLM; `datasets` is imported on first load.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlplat.data.chat import ChatTemplateMode, Prompt, render_prompts, uses_chat_template

SUFFIX_FORMATS: dict[str, str] = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
OnOverlong = Literal["drop", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One dataset row: its prompt, every other column, and where it came from (for error messages).

    prompt: a string, or a list of chat messages [{"role": ..., "content": ...}].
    columns: every column except the prompt column, as loaded (answer, nums, target, ...).
    source: the file (or an in-memory name such as "digits:copy:train"); index: 0-based row in that source.
    """

    prompt: Prompt
    columns: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    index: int = 0

    @property
    def where(self) -> str:
        """'data/train.jsonl row 3' (1-based), for messages."""
        return f"{self.source} row {self.index + 1}"


def load_rows(files: Sequence[str | Path], *, prompt_key: str = "prompt",
              cache_dir: str | Path | None = None) -> list[Row]:
    """Every row of `files`, in file order. ValueError (one line, naming the file) on bad input.

    files: .jsonl / .json / .parquet / .csv files or directories written by `Dataset.save_to_disk`.
    prompt_key: the column holding the prompt (string or chat-message list).
    cache_dir: where `datasets` keeps its Arrow cache (default: its own, ~/.cache/huggingface/datasets).
    """
    if isinstance(files, (str, Path)):
        files = [files]
    if not files:
        raise ValueError("no data files given")
    rows: list[Row] = []
    for f in files:
        records = _read_records(Path(f), cache_dir)
        rows += rows_from_records(records, prompt_key=prompt_key, source=str(f))
    return rows


def rows_from_records(records: Sequence[Mapping[str, Any]], *, prompt_key: str = "prompt",
                      source: str = "<memory>") -> list[Row]:
    """Rows from dicts (a loaded file, or a generator's output kept in memory), with load_rows' checks.

    >>> rows_from_records([{"prompt": "cp:12=", "answer": "12"}], source="digits")
    [Row(prompt='cp:12=', columns={'answer': '12'}, source='digits', index=0)]
    """
    if not records:
        raise ValueError(f"{source}: the dataset has no rows")
    if prompt_key not in records[0]:
        names = ", ".join(map(repr, records[0])) or "none"
        raise ValueError(f"{source}: no column {prompt_key!r} for the prompt (columns: {names}); set prompt_key")
    out = []
    for i, rec in enumerate(records):
        row = Row(prompt=rec.get(prompt_key), columns={k: v for k, v in rec.items() if k != prompt_key},
                  source=source, index=i)
        _check_prompt(row)
        out.append(row)
    return out


def common_columns(rows: Iterable[Row]) -> frozenset[str]:
    """Column names that every row has with a value (not None): what a reward can rely on."""
    common: set[str] | None = None
    for row in rows:
        present = {k for k, v in row.columns.items() if v is not None}
        common = present if common is None else common & present
    return frozenset(common or ())


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizedPrompts:
    """Rows that fit the prompt budget, each with its prompt's token ids.

    rows[i] and prompt_token_ids[i] belong together; num_dropped counts rows over max_prompt_tokens that
    on_overlong="drop" removed (log it as data/num_dropped_overlong).
    """

    rows: list[Row]
    prompt_token_ids: list[list[int]]
    num_dropped: int = 0

    def __len__(self) -> int:
        return len(self.rows)


def tokenize_prompts(rows: Sequence[Row], tokenizer: Any, *, system_prompt: str | None = None,
                     apply_chat_template: ChatTemplateMode = "auto", max_prompt_tokens: int | None = None,
                     on_overlong: OnOverlong = "drop", chunk_size: int = 1024) -> TokenizedPrompts:
    """Render and tokenize every row's prompt (rlplat.data.chat), then apply the prompt budget.

    A prompt longer than max_prompt_tokens is dropped and counted (on_overlong="drop") or stops the run with a
    ValueError naming its file and row (on_overlong="error"); if every prompt is too long that is an error
    too. ValueError as well for a message list without a chat template, or a prompt that encodes to the
    tokenizer's unknown token (naming the first such row).
    """
    if on_overlong not in ("drop", "error"):
        raise ValueError(f"on_overlong must be 'drop' or 'error', got {on_overlong!r}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    if not rows:
        raise ValueError("no rows to tokenize")
    for row in rows:
        try:
            chat = uses_chat_template(row.prompt, tokenizer, apply_chat_template)
        except ValueError as e:
            raise ValueError(f"{row.where}: {e}") from None
        if system_prompt is not None and not chat:
            raise ValueError(f"{row.where}: system_prompt needs a chat template (the tokenizer has none, or "
                             "apply_chat_template is 'never')")
    kept_rows: list[Row] = []
    kept_ids: list[list[int]] = []
    shortest_dropped = 0
    # A prompt that encodes to the unknown token lost text silently (the char tokenizer has no space, for one).
    unk = getattr(tokenizer, "unk_token_id", None)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start:start + chunk_size]
        ids = render_prompts([r.prompt for r in chunk], tokenizer, system_prompt=system_prompt,
                             apply_chat_template=apply_chat_template)
        for row, row_ids in zip(chunk, ids, strict=True):
            if unk is not None and unk in row_ids:
                raise ValueError(f"{row.where}: the prompt has characters the tokenizer does not know (they encode "
                                 f"as its unknown token {tokenizer.unk_token!r}); the char tokenizer knows only "
                                 "digits, letters and punctuation: use `rlplat model tiny --tokenizer bpe`")
            if max_prompt_tokens is not None and len(row_ids) > max_prompt_tokens:
                if on_overlong == "error":
                    raise ValueError(f"{row.where}: prompt has {len(row_ids)} tokens > max_prompt_tokens "
                                     f"{max_prompt_tokens} (raise it, or set on_overlong: drop)")
                shortest_dropped = min(shortest_dropped or len(row_ids), len(row_ids))
                continue
            kept_rows.append(row)
            kept_ids.append(row_ids)
    if not kept_rows:
        sources = ", ".join(dict.fromkeys(r.source for r in rows))
        raise ValueError(f"all {len(rows)} prompts of {sources} are over max_prompt_tokens {max_prompt_tokens} "
                         f"(the shortest has {shortest_dropped} tokens)")
    return TokenizedPrompts(rows=kept_rows, prompt_token_ids=kept_ids, num_dropped=len(rows) - len(kept_rows))


def load_prompts(files: Sequence[str | Path], tokenizer: Any, *, prompt_key: str = "prompt",
                 system_prompt: str | None = None, apply_chat_template: ChatTemplateMode = "auto",
                 max_prompt_tokens: int | None = None, on_overlong: OnOverlong = "drop",
                 cache_dir: str | Path | None = None) -> TokenizedPrompts:
    """load_rows then tokenize_prompts: the spec's `data` section in one call, every check before any actor."""
    rows = load_rows(files, prompt_key=prompt_key, cache_dir=cache_dir)
    return tokenize_prompts(rows, tokenizer, system_prompt=system_prompt, apply_chat_template=apply_chat_template,
                            max_prompt_tokens=max_prompt_tokens, on_overlong=on_overlong)


class EpochCursor:
    """Serves row indices in epochs; each epoch is a permutation drawn from (seed, epoch), so a cursor rebuilt
    from its `state()` continues with exactly the next unseen row (no row repeated or skipped).

    take(n) may cross epoch boundaries (n may exceed num_rows). shuffle=False serves rows in file order.

    >>> c = EpochCursor(3, seed=0, shuffle=False)
    >>> c.take(4), c.state()
    ([0, 1, 2, 0], {'epoch': 1, 'position': 1, 'seed': 0, 'num_rows': 3, 'shuffle': False})
    """

    def __init__(self, num_rows: int, *, seed: int, shuffle: bool = True, epoch: int = 0, position: int = 0) -> None:
        if num_rows < 1:
            raise ValueError(f"a cursor needs at least one row, got {num_rows}")
        if epoch < 0 or not 0 <= position <= num_rows:
            raise ValueError(f"bad cursor position: epoch {epoch}, position {position} of {num_rows} rows")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        if self.shuffle:  # a str seed is hashed with SHA-512: the same order on every machine and Python
            random.Random(f"rlplat-epoch:{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        """The next n row indices (n >= 0), advancing the cursor."""
        if n < 0:
            raise ValueError(f"take(n) needs n >= 0, got {n}")
        out: list[int] = []
        while len(out) < n:
            if self.position == self.num_rows:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            k = min(n - len(out), self.num_rows - self.position)
            out += self._order[self.position:self.position + k]
            self.position += k
        return out

    def state(self) -> dict[str, Any]:
        """{"epoch", "position", "seed", "num_rows", "shuffle"}: JSON-able, for the checkpoint."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": self.num_rows,
                "shuffle": self.shuffle}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, num_rows: int | None = None) -> EpochCursor:
        """The cursor `state()` described. num_rows: the dataset's size now; ValueError if it changed (the
        saved order would no longer name the same rows)."""
        missing = {"epoch", "position", "seed", "num_rows"} - set(state)
        if missing:
            raise ValueError(f"cursor state lacks {', '.join(sorted(missing))}: {json.dumps(dict(state))}")
        if num_rows is not None and num_rows != state["num_rows"]:
            raise ValueError(f"the dataset has {num_rows} rows but the checkpoint's cursor was over "
                             f"{state['num_rows']}: resume with the same data files and max_prompt_tokens")
        return cls(int(state["num_rows"]), seed=int(state["seed"]), shuffle=bool(state.get("shuffle", True)),
                   epoch=int(state["epoch"]), position=int(state["position"]))


def _read_records(path: Path, cache_dir: str | Path | None) -> list[dict[str, Any]]:
    """All rows of one file or save_to_disk directory as dicts, by HF `datasets`."""
    if not path.exists():
        raise ValueError(f"data file {str(path)!r} does not exist")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if path.is_dir():
        return _read_saved_dir(path, datasets)
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"data file {str(path)!r}: unknown format {path.suffix!r} (use one of "
                         f"{', '.join(SUFFIX_FORMATS)} or a save_to_disk directory)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the dataset has no rows (empty file)")
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train",
                                   cache_dir=str(cache_dir) if cache_dir is not None else None)
    except Exception as e:  # datasets/pyarrow raise many types; find the line ourselves for JSON
        if fmt == "json":
            _raise_bad_json_line(path)
        if fmt == "parquet" and _parquet_rows(path) == 0:
            raise ValueError(f"{path}: the dataset has no rows") from None
        raise ValueError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {_first_line(e)}") from None
    return ds.to_list()


def _read_saved_dir(path: Path, datasets: Any) -> list[dict[str, Any]]:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(f"{path} holds several splits ({', '.join(splits)}): name one, e.g. {path / splits[0]}"
                         if splits else f"{path} holds a DatasetDict with no splits")
    if not (path / "dataset_info.json").is_file():
        raise ValueError(f"{path} is a directory but not a dataset written by save_to_disk (no dataset_info.json)")
    try:
        return datasets.load_from_disk(str(path)).to_list()
    except Exception as e:
        raise ValueError(f"{path}: cannot load with load_from_disk: {type(e).__name__}: {_first_line(e)}") from None


def _raise_bad_json_line(path: Path) -> None:
    """Raise ValueError naming the first line of a JSON-lines file that is not a JSON object."""
    with path.open(encoding="utf-8", errors="replace") as f:
        if path.suffix.lower() == ".json" and f.read(1).lstrip() in ("[", "{"):
            f.seek(0)
            try:
                json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {e.lineno}: malformed JSON: {e.msg}") from None
            raise ValueError(f"{path}: JSON that `datasets` cannot read as rows (a list of objects, or "
                             "one object per line)")
        f.seek(0)
        first_type: dict[str, tuple[str, int]] = {}  # column -> (JSON type, line) where it first had a value
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(value, dict):
                raise ValueError(f"{path} line {lineno}: expected a JSON object, got {type(value).__name__}")
            for key, v in value.items():
                kind = _json_kind(v)
                seen = first_type.setdefault(key, (kind, lineno))
                if kind != "null" and seen[0] == "null":
                    first_type[key] = (kind, lineno)
                elif kind not in ("null", seen[0]):
                    raise ValueError(f"{path} line {lineno}: column {key!r} is a {kind} here but a {seen[0]} on "
                                     f"line {seen[1]}: one type per column")
    if not first_type:
        raise ValueError(f"{path}: the dataset has no rows")
    raise ValueError(f"{path}: every line is a JSON object but `datasets` cannot combine them")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}[type(value)]


def _parquet_rows(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # not a parquet file at all: the caller reports the original error
        return None


def _check_prompt(row: Row) -> None:
    p = row.prompt
    if isinstance(p, str):
        if not p:
            raise ValueError(f"{row.where}: the prompt is empty")
        return
    if p is None:
        raise ValueError(f"{row.where}: the prompt is missing (null)")
    if not isinstance(p, list) or not p:
        raise ValueError(f"{row.where}: the prompt must be a string or a non-empty list of chat messages, got "
                         f"{type(p).__name__}")
    for m in p:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ValueError(f"{row.where}: each chat message needs 'role' and 'content', got {m!r}"[:300])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "(no message)"

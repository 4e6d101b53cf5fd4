"""The run's prompts: dataset rows rendered and tokenized once at set-up, and the epoch cursor over them.

The rows come from `data.train_files` / `data.eval_files` (jsonl, json, parquet, csv, save_to_disk dirs, through
rlplat.data.datasets), or from the built-in digit task (`data.task`) as an in-memory dataset of the same kind. A
sample's `prompt_id` is its row's position in its PromptSet, so the rewards get the row's columns back by id; its
prompt token ids are the chat template's rendering (or the plain text's) and are never re-encoded afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlplat.config import ConfigError, RunConfig
from rlplat.data.chat import as_messages
from rlplat.data.datasets import Row, TokenizedPrompts, load_prompts, rows_from_records, tokenize_prompts
from rlplat.data.generators import records_from_problems
from rlplat.envs.tasks import make_split
from rlplat.types import Group, Sample


@dataclass(frozen=True, slots=True)
class PromptSet:
    """Rows with their prompt token ids; row i is prompt_id i."""

    name: str  # "train" | "eval"
    rows: list[Row]
    prompt_token_ids: list[list[int]]
    num_dropped_overlong: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def columns(self, prompt_id: int) -> Mapping[str, Any]:
        return self.rows[prompt_id].columns

    def answer(self, prompt_id: int) -> str:
        """The `answer` column as text ('' when the data has none): what the digit rewards compare with."""
        answer = self.rows[prompt_id].columns.get("answer")
        return "" if answer is None else str(answer)

    def messages(self, prompt_id: int, system_prompt: str | None) -> list[dict[str, Any]]:
        """The row's prompt as chat messages (what the agent loop renders with its tools), system prompt first."""
        return as_messages(self.rows[prompt_id].prompt, system_prompt)

    def groups(self, prompt_ids: list[int], num_samples: int, first_group_id: int) -> list[Group]:
        """One group of `num_samples` empty samples per prompt id, group ids counting up from first_group_id."""
        groups = []
        for k, pid in enumerate(prompt_ids):
            gid = first_group_id + k
            samples = [Sample(group_id=gid, sample_index=i, prompt_id=pid,
                              prompt_token_ids=list(self.prompt_token_ids[pid]), answer=self.answer(pid))
                       for i in range(num_samples)]
            groups.append(Group(group_id=gid, prompt_id=pid, samples=samples))
        return groups


def load_prompt_sets(cfg: RunConfig, tokenizer: Any) -> tuple[PromptSet, PromptSet | None]:
    """(train, eval) prompt sets of the spec; eval is None when data files are given without eval_files.
    Bad input (missing file, bad line, unknown prompt_key, all prompts too long, ...): ConfigError, one line."""
    d = cfg.data
    try:
        if d.train_files:
            options = _render_options(cfg) | {"prompt_key": d.prompt_key}
            train = _tokenized("train", load_prompts(d.train_files, tokenizer, **options))
            evals = _tokenized("eval", load_prompts(d.eval_files, tokenizer, **options)) if d.eval_files else None
            return train, evals
        sets = []
        for split, n in (("train", d.num_train_prompts), ("eval", d.num_eval_prompts)):
            problems = make_split(d.task, num_digits=d.num_digits, num_prompts=n, seed=d.seed, split=split)
            rows = rows_from_records(records_from_problems(problems), source=f"digits:{d.task}:{split}")
            sets.append(_tokenized(split, tokenize_prompts(rows, tokenizer, **_render_options(cfg))))
        return sets[0], sets[1]
    except ValueError as e:
        key = "data.train_files" if d.train_files else "data.task"
        raise ConfigError(f"{key}: {e}") from None


def _render_options(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.data
    return {"system_prompt": d.system_prompt, "apply_chat_template": d.apply_chat_template,
            "max_prompt_tokens": d.max_prompt_tokens, "on_overlong": d.on_overlong}


def _tokenized(name: str, t: TokenizedPrompts) -> PromptSet:
    return PromptSet(name, t.rows, t.prompt_token_ids, t.num_dropped)


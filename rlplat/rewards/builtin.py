"""Built-in rewards named in the spec: tensorbleu, math_verify, format_regex, length_penalty.

Each takes a `RewardInputs` batch of B samples and returns a float32 tensor [B] (TRL-style plain functions).
Parameters come from the spec's reward term (`pattern`, `target_length_in_tokens`) as keyword arguments;
`rlplat.rewards.registry.load_reward` binds them. Responses are read up to their first EOS: what follows
(EOS itself, padding, or tokens after a stop) is not part of the answer.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.tensorbleu import sentence_bleu

_PAD = -1  # token ids are >= 0, so -1 can pad candidates and references without colliding with a real token


def tensorbleu(batch: RewardInputs, *, max_n: int = 4, smoothing: str = "floor") -> torch.Tensor:
    """Sentence BLEU-`max_n` of each response's token ids against its reference(s), in [0, 1].

    References: `batch.references` (several per sample) when given, else the one answer `answer_token_ids`.
    EOS ends a response or reference (it and anything after are dropped). Smoothing "floor" (NLTK's
    SmoothingFunction().method1, epsilon 0.1) replaces a zero higher-order precision by 0.1 / #n-grams, so a
    short or partly right response keeps a graded reward instead of collapsing to ~0; a response without any
    matching unigram still scores 0. One batched call on CUDA when available, else CPU (module `tensorbleu`).

    >>> b = RewardInputs(response_token_ids=[[5, 6, 7, 8, 1], [5, 6, 7, 9, 1], [2, 3, 1]],
    ...                  response_texts=["", "", ""], answers=["", "", ""],
    ...                  answer_token_ids=[[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]], eos_token_id=1)
    >>> [round(x, 4) for x in tensorbleu(b).tolist()]
    [1.0, 0.3976, 0.0]
    """
    refs = batch.references if batch.references is not None else [[a] for a in batch.answer_token_ids]
    if len(refs) != len(batch):
        raise ValueError(f"references has {len(refs)} entries for {len(batch)} responses")
    eos = batch.eos_token_id
    cands = [_until_eos(r, eos) for r in batch.response_token_ids]
    refs = [[_until_eos(r, eos) for r in sample_refs] for sample_refs in refs]
    num_refs = max(map(len, refs), default=0) or 1  # a sample with no reference gets one all-pad slot
    len_r = max((len(x) for r in refs for x in r), default=0) + 1  # +1: at least one column of padding
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cand = torch.from_numpy(_pad_rows(cands, max(map(len, cands), default=0) + 1)).to(device)
    ref = torch.from_numpy(_pad_rows([x for r in refs for x in r + [[]] * (num_refs - len(r))], len_r))
    ref = ref.view(len(batch), num_refs, len_r).to(device)
    return sentence_bleu(cand, ref, pad_id=_PAD, max_n=max_n, smoothing=smoothing).float()


def math_verify(batch: RewardInputs) -> torch.Tensor:
    """1.0 when the response's final math answer equals the reference answer, by the `math-verify` package.

    The reference is the dataset's `answer` column when the samples carry rows (`batch.columns`), else
    `batch.answers`. A GSM8K-style reference (worked steps, then `#### 42`) counts from the text after `####`.

    math-verify extracts the answer from the response (\\boxed{...}, LaTeX or a plain expression) and compares it
    symbolically and numerically with the gold answer, so `\\frac{1}{2}`, `0.5` and `1/2` agree. A gold answer
    without `$` or `\\boxed` is read as one LaTeX expression. Its own signal-based timeouts are off (signals only
    work in the main thread, and rewards run in a worker thread); the spec's `reward.timeout_s` bounds the call.

    >>> b = RewardInputs(response_token_ids=[[], [], [], []], response_texts=["so \\\\boxed{42}", "0.5",
    ...                  "it is 41", ""], answers=["42", "\\\\frac{1}{2}", "42", "42"],
    ...                  answer_token_ids=[[], [], [], []], eos_token_id=1)
    >>> math_verify(b).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    try:
        from math_verify import parse, verify  # imported on first use: it pulls in sympy (~0.4 s)
    except ImportError as e:
        raise ValueError("the math_verify reward needs the math-verify package: pip install math-verify") from e
    golds = [gold_answer(a) for a in (batch.column("answer") if batch.columns else batch.answers)]
    out = torch.zeros(len(batch))
    for i, (text, gold) in enumerate(zip(batch.response_texts, golds, strict=True)):
        if "$" not in gold and "\\boxed" not in gold:
            gold = f"${gold}$"
        gold_parsed = parse(gold, parsing_timeout=None)  # type: ignore[arg-type]  # None = no signal timeout
        answer = parse(text, parsing_timeout=None)  # type: ignore[arg-type]
        out[i] = float(bool(gold_parsed) and verify(gold_parsed, answer, timeout_seconds=None))
    return out


def gold_answer(answer: object) -> str:
    """The reference answer as text: after the last `####` when there is one (GSM8K), thousands commas dropped.

    >>> gold_answer("3 + 4 = 7 apples.\\n#### 7"), gold_answer("#### 1,250"), gold_answer(42), gold_answer("0.5")
    ('7', '1250', '42', '0.5')
    """
    text = str(answer)
    if "####" in text:
        text = text.rpartition("####")[2].strip().replace(",", "")
    return text


def format_regex(batch: RewardInputs, *, pattern: str = "") -> torch.Tensor:
    """1.0 when the whole decoded response matches `pattern` (re.fullmatch with re.DOTALL), else 0.0.

    DOTALL lets `.` cross newlines, since reasoning spans lines; write `[^\\n]` to stay on one line.

    >>> b = RewardInputs(response_token_ids=[[], [], []], answers=["", "", ""], answer_token_ids=[[], [], []],
    ...                  response_texts=["<think>a\\nb</think>7", "7", "<think></think>"], eos_token_id=1)
    >>> format_regex(b, pattern=r"<think>.*</think>\\d+").tolist()
    [1.0, 0.0, 0.0]
    """
    if not pattern:
        raise ValueError("format_regex needs a non-empty `pattern` in its reward term")
    regex = re.compile(pattern, re.DOTALL)
    return torch.tensor([float(regex.fullmatch(t) is not None) for t in batch.response_texts], dtype=torch.float32)


def length_penalty(batch: RewardInputs, *, target_length_in_tokens: int = 0) -> torch.Tensor:
    """-max(0, L - target) / target, L = response tokens before the first EOS: 0 up to the target, -1 at twice it.

    Linear and unbounded below, relative to the target so its weight reads the same for any budget.

    >>> b = RewardInputs(response_token_ids=[[5, 6, 1], [5, 6, 7, 8, 1], [5, 6, 7, 8, 9, 9]],
    ...                  response_texts=["", "", ""], answers=["", "", ""], answer_token_ids=[[], [], []],
    ...                  eos_token_id=1)
    >>> length_penalty(b, target_length_in_tokens=2).tolist()
    [0.0, -1.0, -2.0]
    """
    if target_length_in_tokens < 1:
        raise ValueError(f"length_penalty needs target_length_in_tokens >= 1, got {target_length_in_tokens}")
    lengths = torch.tensor([len(_until_eos(r, batch.eos_token_id)) for r in batch.response_token_ids],
                           dtype=torch.float32)
    return (target_length_in_tokens - lengths).clamp(max=0) / target_length_in_tokens  # not -(...): no -0.0


def _pad_rows(rows: list[list[int]], width: int) -> np.ndarray:
    """rows -> [len(rows), width] int64 right-padded with _PAD. Row-wise numpy copies: ~5x faster than
    torch.tensor on nested lists (512 x 1024 tokens: ~6 ms), and one host-to-device copy follows."""
    out = np.full((len(rows), width), _PAD, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else list(ids)
